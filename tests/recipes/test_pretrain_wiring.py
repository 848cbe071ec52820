"""How the pretraining recipe wires SPEC section 3, observed on a real tiny run: what each step trains on, with
which learning rate and optimizer state, what the proposer is given, what ERM trains on, and the FLOPs each step
records. Also the fidelity check (`opmix check`) on that run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from opmix import check as check_module
from opmix.config import PretrainConfig, load_config
from opmix.domains import component_prior, expand
from opmix.law import laws_from_rows
from opmix.recipes import pretrain
from opmix.run.ledger import count_params
from opmix.run.rundir import RunDir
from opmix.train.loop import Trainer
from opmix.train.schedule import WSDSchedule

pytestmark = pytest.mark.slow

P = {"a": 0.5, "b": 0.3, "c": 0.2}  # p for the prefix: far from uniform, so each use of it can be told apart


@pytest.fixture(scope="module")
def wired(tmp_path_factory, tiny_pretrain_base):
    """One tiny run whose optimizer updates and proposer call are recorded as they happen."""
    raw = json.loads(json.dumps(tiny_pretrain_base))
    names = [d["name"] for d in raw["domains"]]
    p = dict(zip(names, P.values()))
    raw["method"]["initial_mixture"] = p
    raw["method"]["guard"] = {"enabled": False}  # the final continues the prefix itself
    raw["baseline"] = "erm,natural"
    cfg = load_config(None, PretrainConfig, raw=raw)
    updates, proposer_calls = [], []
    original_update, original_propose = Trainer._update, pretrain.propose_mixture

    def recording_update(self):
        state = self.optimizer.state.get(self.optimizer.param_groups[0]["params"][0], {})
        adam_steps_before = int(state["step"]) if "step" in state else 0
        loss = original_update(self)
        updates.append({"stage": self.stage, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                        "adam_steps_before": adam_steps_before})
        return loss

    def recording_propose(*args, **kwargs):
        proposer_calls.append(kwargs)
        return original_propose(*args, **kwargs)

    out = tmp_path_factory.mktemp("wired") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_update", recording_update)
        mp.setattr(pretrain, "propose_mixture", recording_propose)
        run = RunDir(out)
        with run.lock():
            summary = pretrain.run(cfg, run)
    return SimpleNamespace(cfg=cfg, raw=raw, out=out, run=RunDir(out), summary=summary, p=p, names=names,
                           updates=updates, proposer_calls=proposer_calls)


def _updates(wired, stage):
    return [u for u in wired.updates if u["stage"] == stage]


def test_probes_train_on_the_spec_mixtures_with_a_doubled_flat_rate(wired):
    cfg, p = wired.cfg, wired.p
    assert wired.run.step_info("probe_old")["mixture"] == pytest.approx(p)
    for d in wired.names:  # 0.9 * D_i + 0.1 * p
        expected = {e: 0.1 * p[e] + (0.9 if e == d else 0.0) for e in wired.names}
        assert wired.run.step_info(f"probe_{d}")["mixture"] == pytest.approx(expected)
    decay = round(cfg.method.probe_decay_fraction * cfg.probe_steps)
    for c in ["old", *wired.names]:
        lrs = [u["lr"] for u in _updates(wired, f"probe_{c}")]
        assert len(lrs) == cfg.probe_steps
        peak = cfg.method.probe_lr_multiplier * cfg.train.lr
        assert lrs[0] == pytest.approx(peak)  # no warmup: the probe starts at twice the run's rate
        assert lrs[: cfg.probe_steps - decay] == pytest.approx([peak] * (cfg.probe_steps - decay))
        if decay:
            assert lrs[-1] == pytest.approx(peak * cfg.train.final_lr_ratio)
        assert _updates(wired, f"probe_{c}")[0]["adam_steps_before"] == 0  # a fresh optimizer for the adapter


def test_final_continues_the_prefix_optimizer_and_schedule_without_rewarming(wired):
    cfg = wired.cfg
    schedule = WSDSchedule.from_fractions(cfg.train.steps, cfg.train.warmup_fraction, cfg.train.decay_fraction,
                                          cfg.train.final_lr_ratio)
    prefix, final = _updates(wired, "prefix"), _updates(wired, "final")
    assert [u["step"] for u in prefix] == list(range(cfg.prefix_steps))  # 0-based global steps
    assert [u["step"] for u in final] == list(range(cfg.prefix_steps, cfg.train.steps))
    # one run: the final's first update takes the flat rate where the prefix stopped, not a new warmup
    assert final[0]["lr"] == pytest.approx(cfg.train.lr * schedule(cfg.prefix_steps)) == pytest.approx(cfg.train.lr)
    assert [u["lr"] for u in prefix + final] == pytest.approx(
        [cfg.train.lr * schedule(s) for s in range(cfg.train.steps)])
    # Adam's moments come from the prefix: its step count continues instead of restarting at 0
    assert final[0]["adam_steps_before"] == cfg.prefix_steps
    assert _updates(wired, "erm")[0]["adam_steps_before"] == cfg.prefix_steps


def test_proposer_gets_the_default_prior_and_erm_keeps_p(wired):
    (call,) = wired.proposer_calls
    m = len(wired.names)
    assert call["prior"] == pytest.approx([0.5] + [0.5 / m] * m)  # old 0.5, each domain 0.5/m
    assert np.array_equal(call["expansion"], np.eye(m + 1))
    assert call["kl_weight"] == wired.cfg.method.proposer.kl_weight
    erm = wired.summary["baselines"]["erm"]
    assert erm["mixture"] == pytest.approx(wired.p)
    assert wired.run.step_info("erm")["mixture"] == pytest.approx(wired.p)
    # the final trains on the proposal expanded with p: `old` draws in proportion to p
    components = json.loads((wired.out / "propose" / "proposal.json").read_text())["components"]
    assert wired.summary["mixture"] == pytest.approx(expand(components, wired.names, wired.p))
    assert wired.run.step_info("natural")["mixture"] == pytest.approx(wired.summary["baselines"]["natural"]["mixture"])


def test_prior_options_give_their_vectors():
    ws = SimpleNamespace(domains={"a": SimpleNamespace(train_tokens=100), "b": SimpleNamespace(train_tokens=300)})
    components, sizes = ["old", "a", "b"], {"a": 100, "b": 300}
    assert component_prior("default", components, sizes) == pytest.approx([0.5, 0.25, 0.25])
    assert component_prior("uniform", components, sizes) == pytest.approx([1 / 3] * 3)
    assert component_prior("natural", components, sizes) == pytest.approx([200 / 600, 100 / 600, 300 / 600])
    ws.domain_names = ["a", "b"]
    assert pretrain.natural(ws) == pytest.approx({"a": 0.25, "b": 0.75})  # the natural baseline: by size


def test_each_step_records_its_flops_at_its_call_site(wired):
    from opmix.model import builtin_model
    from opmix.probes.lora import lora_parameter_count, make_probe

    cfg = wired.cfg
    ledger = {e["stage"]: e for e in json.loads((wired.out / "ledger.json").read_text())["stages"]}
    vocab = json.loads((wired.out / "final" / "model" / "config.json").read_text())["vocab_size"]
    model = builtin_model("llama-tiny", vocab_size=vocab, seed=0, max_positions=cfg.data.seq_len)
    n = count_params(model)
    n_lora = lora_parameter_count(make_probe(model, r=cfg.method.lora.r, alpha=cfg.method.lora.alpha))
    per_step = cfg.train.batch_size * cfg.data.seq_len
    assert ledger["prefix"]["tokens"] == cfg.prefix_steps * per_step
    assert ledger["prefix"]["flops"] == pytest.approx(6 * n * cfg.prefix_steps * per_step)
    for c in ["old", *wired.names]:
        tokens = cfg.probe_steps * per_step
        assert ledger[f"probe_{c}"]["tokens"] == tokens
        assert ledger[f"probe_{c}"]["flops"] == pytest.approx(4 * n * tokens + 6 * n_lora * tokens)
    final_tokens = (cfg.train.steps - cfg.prefix_steps) * per_step
    assert ledger["final"]["flops"] == pytest.approx(6 * n * final_tokens)
    assert ledger["erm"]["flops"] == pytest.approx(6 * n * final_tokens)
    eval_tokens = ledger["proxies"]["tokens"]
    assert eval_tokens % cfg.method.n_proxies == 0 and eval_tokens > 0
    assert ledger["proxies"]["flops"] == pytest.approx(2 * n * eval_tokens)
    assert ledger["propose"]["flops"] > 0 and ledger["propose"]["seconds"] > 0
    for entry in ledger.values():
        assert entry["seconds"] > 0


def test_check_compares_the_laws_with_real_runs(wired):
    result = check_module.run_check(wired.out, runs=3, steps=2)
    assert len(result["runs"]) == 3 and (wired.out / "check.json").is_file()
    components = json.loads((wired.out / "propose" / "proposal.json").read_text())["components"]
    assert result["runs"][0]["components"] == pytest.approx(components)  # the proposal is always checked
    laws = laws_from_rows(json.loads((wired.out / "propose" / "laws.json").read_text())["laws"])
    for row in result["runs"]:
        info = wired.run.step_info(row["step"])
        assert info["end_step"] == wired.cfg.prefix_steps + 2  # continues the prefix for --steps
        assert row["real"] == pytest.approx(np.mean(list(info["eval_loss"].values())))
        x = np.array([row["components"][c] for c in components])
        assert row["predicted"] == pytest.approx(float(np.mean([law.predict(x[None])[0] for law in laws])))
    expected = check_module.correlations([r["predicted"] for r in result["runs"]], [r["real"] for r in result["runs"]])
    assert result["spearman"] == pytest.approx(expected["spearman"], nan_ok=True)
    ledger = {e["stage"] for e in json.loads((wired.out / "ledger.json").read_text())["stages"]}
    assert {r["step"] for r in result["runs"]} <= ledger
    markers = {p.name: p.read_bytes() for p in (wired.out / "steps").glob("check_*.json")}
    assert check_module.run_check(wired.out, runs=3, steps=2)["runs"] == result["runs"]  # resumable: no retraining
    assert {p.name: p.read_bytes() for p in (wired.out / "steps").glob("check_*.json")} == markers


def test_correlations_on_known_answers():
    predicted = np.array([1.0, 2.0, 3.0, 4.0])
    assert check_module.correlations(predicted, predicted ** 3)["spearman"] == pytest.approx(1.0)
    assert check_module.correlations(predicted, predicted ** 3)["pearson"] < 1.0  # monotone, not linear
    assert check_module.correlations(predicted, -predicted)["spearman"] == pytest.approx(-1.0)
    assert check_module.correlations(predicted, predicted + 0.5)["bias"] == pytest.approx(0.5)
    assert np.isnan(check_module.correlations(predicted, np.ones(4))["spearman"])  # nothing to rank
    X = np.eye(3)
    assert sorted(check_module.spread_points(X, np.array([1.0, 0, 0]), 3)) == [1, 2]  # the two farthest rows


def test_check_on_predictions_whose_ranking_is_known(wired, monkeypatch):
    """The same real runs against a predictor that equals them (Spearman 1, no bias) and one that reverses them."""
    first = check_module.run_check(wired.out, runs=3, steps=2)  # resumed: the runs are already trained
    real = {tuple(np.round(list(r["components"].values()), 9)): r["real"] for r in first["runs"]}

    def predictor(sign, shift):
        return lambda laws, x: sign * real[tuple(np.round(np.asarray(x, dtype=float), 9))] + shift

    monkeypatch.setattr(check_module, "predicted_mean", predictor(1.0, -0.25))
    agreeing = check_module.run_check(wired.out, runs=3, steps=2)
    assert agreeing["spearman"] == pytest.approx(1.0) and agreeing["pearson"] == pytest.approx(1.0)
    assert agreeing["bias"] == pytest.approx(0.25) and agreeing["warning"] is None
    monkeypatch.setattr(check_module, "predicted_mean", predictor(-1.0, 0.0))
    reversed_ = check_module.run_check(wired.out, runs=3, steps=2)
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert "Spearman -1.00 < 0.6" in reversed_["warning"]
