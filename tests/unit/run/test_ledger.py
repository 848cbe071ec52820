import json

import numpy as np
import pytest
import torch

from opmix.errors import OpmixError
from opmix.run.ledger import (
    ComputeLedger,
    count_params,
    eval_flops,
    generation_flops,
    law_fit_flops,
    lora_train_flops,
    proposer_flops,
    train_flops,
)


def test_ledger_accumulates_persists_and_reloads(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = ComputeLedger(path)
    ledger.add("prefix", 1e12, seconds=10.0, tokens=1000)
    ledger.add("probes", 3e11, seconds=2.0, tokens=200)
    ledger.add("prefix", 2e12, seconds=5.0, tokens=500)
    assert ledger.totals() == {"prefix": 3e12, "probes": 3e11, "total": 3.3e12}

    resumed = ComputeLedger(path)  # a resumed run keeps earlier stages' numbers
    assert resumed.as_dict() == ledger.as_dict()
    assert resumed.as_dict()["prefix"] == {"flops": 3e12, "seconds": 15.0, "tokens": 1500}
    assert resumed.as_dict()["total"] == {"flops": 3.3e12, "seconds": 17.0, "tokens": 1700}
    assert list(resumed.totals()) == ["prefix", "probes", "total"]  # recording order, not alphabetical


def test_set_is_idempotent_and_keeps_order(tmp_path):
    ledger = ComputeLedger(tmp_path / "ledger.json")
    ledger.set("final", 5.0, 1.0, 10)
    ledger.set("proxy_eval", 1.0, 1.0, 1)
    ledger.set("final", 7.0, 2.0, 20)  # a redone step records its total again
    ledger.set("final", 7.0, 2.0, 20)
    reloaded = ComputeLedger(tmp_path / "ledger.json")
    assert reloaded.totals() == {"final": 7.0, "proxy_eval": 1.0, "total": 8.0}
    assert reloaded.as_dict()["final"] == {"flops": 7.0, "seconds": 2.0, "tokens": 20}


def test_ledger_rejects_bad_values_and_unreadable_file(tmp_path):
    ledger = ComputeLedger(tmp_path / "ledger.json")
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError):
            ledger.add("prefix", bad)
    with pytest.raises(ValueError):
        ledger.add("total", 1.0)
    assert not (tmp_path / "ledger.json").exists()
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(OpmixError, match="ledger.json"):
        ComputeLedger(tmp_path / "ledger.json")


def test_ledger_file_is_deterministic(tmp_path):
    for name in ("a.json", "b.json"):
        ledger = ComputeLedger(tmp_path / name)
        ledger.add("prefix", 1.5e15, 3.0, 7)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text())["stages"][0]["stage"] == "prefix"


def test_flops_formulas():
    n, n_lora, t = 1_000_000, 10_000, 2_000
    assert train_flops(n, t) == 6 * n * t
    assert lora_train_flops(n, n_lora, t) == 4 * n * t + 6 * n_lora * t
    assert eval_flops(n, t) == 2 * n * t
    assert generation_flops(n, 50) == 2 * n * 50
    assert lora_train_flops(n, 0, t) == pytest.approx(train_flops(n, t) * 2 / 3)


@pytest.mark.parametrize("tied", [False, True])
def test_count_params_excludes_input_embeddings(tied):
    transformers = pytest.importorskip("transformers")
    vocab, hidden, inter, layers = 64, 16, 40, 2
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    # attention q,k,v,o + gated MLP + two norms per layer; final norm; LM head (a matmul, tied or not)
    matmul = layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + hidden + vocab * hidden
    assert count_params(model) == matmul
    embedding = 0 if tied else vocab * hidden  # tied: one matrix, already counted once as the head
    assert count_params(model, exclude_input_embeddings=False) == matmul + embedding


def test_count_params_plain_module_with_position_embedding():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Embedding(10, 4)
            self.pos = torch.nn.Embedding(8, 4)
            self.proj = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.tok.weight

    model = Tiny()
    assert count_params(model) == (4 * 4 + 4) + 10 * 4  # proj + tied head; both lookups excluded as lookups
    assert count_params(model, exclude_input_embeddings=False) == 10 * 4 + 8 * 4 + 20


def test_law_fit_and_proposer_flops_estimates():
    assert law_fit_flops(0, 12, 4) == 0.0
    assert law_fit_flops(1000, 12, 4) == pytest.approx(1000 * (12 * (4 * 4 + 20) + 80 * 5))
    assert law_fit_flops(2000, 12, 4) == 2 * law_fit_flops(1000, 12, 4)  # linear in the counted work
    assert 0 < proposer_flops(3, 4, 4) < law_fit_flops(1000, 12, 4)


def test_fit_and_proposal_are_recorded_once_in_the_ledger(tmp_path):
    from opmix.run.rundir import RunDir
    from opmix.search import propose_mixture

    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(3), size=8)  # 8 points for laws of 4 parameters: twice as many
    T = np.array([[0.2, -1.0, 0.1], [0.1, 0.3, -0.8]])
    Y = 0.7 + np.exp(X @ T.T) + rng.normal(0.0, 0.002, size=(8, 2))
    ledger = ComputeLedger(tmp_path / "ledger.json")

    def propose(run):
        return propose_mixture(run, "propose", X, Y, ["old", "code", "math"], ["code", "math"], [1, 2],
                               prior=np.array([0.5, 0.25, 0.25]), expansion=np.eye(3),
                               law_settings={"n_c_starts": 2, "n_t_starts": 3}, ledger=ledger)

    with RunDir(tmp_path / "run").lock() as run:
        proposal = propose(run)
        entry = ComputeLedger(tmp_path / "ledger.json").as_dict()["propose"]
        evaluations = sum(law["n_evaluations"] for law in proposal.laws)
        assert evaluations > 0 and entry["tokens"] == 0 and entry["seconds"] > 0
        assert entry["flops"] == pytest.approx(law_fit_flops(evaluations, 8, 3) + proposer_flops(2, 3, 3))
        assert run.step_info("propose")["flops"] == entry["flops"]
        assert proposal.warnings == []
        for law in proposal.laws:  # the figures behind the diagnostics travel with the laws
            d = law["diagnostics"]
            assert d["n_proxies"] == 8 and d["n_params"] == 4 and d["r2"] > 0.9 and d["own_excess"] < 0
        again = propose(run)  # done: nothing is refitted or counted twice
    assert again.components == proposal.components
    assert ComputeLedger(tmp_path / "ledger.json").as_dict()["propose"] == entry


def test_too_few_proxies_for_the_laws_are_reported(tmp_path):
    from opmix.run.rundir import RunDir
    from opmix.search import propose_mixture

    X = np.random.default_rng(1).dirichlet(np.ones(3), size=5)  # 5 points, 4 parameters: barely overdetermined
    Y = 0.7 + np.exp(X @ np.array([[0.2, -1.0, 0.1]]).T)
    with RunDir(tmp_path / "run").lock() as run:
        proposal = propose_mixture(run, "propose", X, Y, ["old", "code", "math"], ["code"], [1],
                                   prior=np.array([0.5, 0.25, 0.25]), expansion=np.eye(3),
                                   law_settings={"n_c_starts": 2, "n_t_starts": 3})
    assert any("only 5 proxies for laws of 4 parameters" in w for w in proposal.warnings)
