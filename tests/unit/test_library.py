"""The public API (docs/library.md): the documented example runs, and the step functions behave as documented."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import opmix
from opmix.errors import OpmixError

DOC = Path(__file__).resolve().parents[2] / "docs" / "library.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_documented_example_runs(capsys):
    blocks = python_blocks(DOC.read_text())
    assert blocks, "docs/library.md has no python example"
    namespace: dict = {"__name__": "__doc_example__"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "proposed mixture:" in printed
    weights = namespace["weights"]
    assert set(weights) == set(namespace["names"]) and sum(weights.values()) == pytest.approx(1.0)


def test_every_exported_name_resolves():
    for name in opmix.__all__:
        assert getattr(opmix, name) is not None
    with pytest.raises(AttributeError):
        opmix.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def small(demo_corpus, tmp_path_factory):
    domains = opmix.load_domains(demo_corpus, "builtin:bytes", seq_len=16, cache_dir=tmp_path_factory.mktemp("c"),
                                 eval_fraction=0.1, max_eval_sequences=4)
    model = opmix.builtin_model("llama-tiny", vocab_size=260, seed=0, max_positions=16)
    return domains, model


def test_load_domains_gives_train_and_eval_splits(small, demo_corpus):
    domains, _ = small
    assert list(domains) == list(demo_corpus)
    for d in domains.values():
        assert d.train.ndim == 2 and d.train.shape[1] == 16 and 1 <= len(d.eval) <= 4


def test_load_domains_rejects_eval_files_of_unknown_domains(demo_corpus, tmp_path):
    with pytest.raises(OpmixError, match="unknown domain") as caught:
        opmix.load_domains(demo_corpus, "builtin:bytes", seq_len=16, cache_dir=tmp_path, eval_files={"nope": "x"})
    assert caught.value.fix


def test_train_probe_leaves_the_model_alone_and_a_zero_proxy_is_the_model(small, tmp_path):
    domains, model = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(domains)
    probe = opmix.train_probe(model, domains, {names[0]: 1.0}, steps=2, batch_size=2, lora={"r": 2, "alpha": 4},
                              out=tmp_path / "probe")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert (tmp_path / "probe" / "adapter_model.safetensors").is_file()
    assert any(b.abs().sum() > 0 for _, b, _ in probe.factors.values())  # it trained
    eval_sets = {d: domains[d].eval for d in names}
    losses = opmix.proxy_losses(model, [probe], [[0.0], [1.0]], eval_sets)
    base = opmix.evaluate(model, eval_sets)
    assert losses.shape == (2, len(names))
    assert losses[0] == pytest.approx([base[d] for d in names], abs=1e-6)
    assert not np.allclose(losses[0], losses[1])


def test_train_probe_rejects_what_is_not_a_model(small):
    domains, _ = small
    with pytest.raises(OpmixError, match="needs a model"):
        opmix.train_probe(object(), domains, {"code": 1.0}, steps=1)


def test_proxy_points_are_seeded_mixtures():
    X = opmix.proxy_points(4, 6, seed=3)
    assert X.shape == (6, 4) and np.allclose(X.sum(axis=1), 1.0)
    assert np.array_equal(X, opmix.proxy_points(4, 6, seed=3))


def test_component_prior_rejects_unknown_kinds():
    with pytest.raises(OpmixError, match="unknown prior"):
        opmix.component_prior("flat", ["old", "a"])
