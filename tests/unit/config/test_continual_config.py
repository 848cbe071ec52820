"""The continual config: SPEC defaults, the shipped example, a pretraining run as the start model, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from opmix.config.continual import ContinualConfig
from opmix.config.loading import load_config
from opmix.errors import OpmixError

EXAMPLE = Path(__file__).parents[3] / "examples" / "continual.yaml"
RAW = {"model": {"builtin": "llama-tiny"}, "tokenizer": "builtin:bytes",
       "domains": [{"name": "a", "files": ["x"]}, {"name": "b", "files": ["y"]}]}


def test_defaults_are_the_spec_ones():
    cfg = ContinualConfig.model_validate(RAW)
    m = cfg.method
    assert (m.probe_fraction, m.n_proxies, m.old_probe_share, m.new_probe_share) == (0.25, 9, 0.9, 0.9)
    assert m.proposer.kl_weight == 0.05 and m.prior_new_weight == 0.5 and m.probe_lr_multiplier == 2.0
    assert (m.lora.r, m.lora.alpha, m.lora.dropout) == (16, 32.0, 0.05)
    assert cfg.probe_steps == 200 and cfg.train.steps == 800  # 25% of a stage
    assert cfg.baselines.grid == pytest.approx([0.1 * i for i in range(1, 10)]) and cfg.run == "opmix"


def test_the_shipped_example_validates():
    cfg = load_config(EXAMPLE, ContinualConfig, ["model.path=null", "model.builtin=llama-tiny", "tokenizer=builtin:bytes"])
    assert cfg.probe_steps == 2500 and [d.name for d in cfg.domains] == ["math", "code", "instructions"]


def test_a_pretraining_run_directory_means_its_final_model(tmp_path):
    model = tmp_path / "run" / "final" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    cfg = ContinualConfig.model_validate({**RAW, "model": {"path": str(tmp_path / "run")}, "tokenizer": None})
    assert cfg.model.path == model


@pytest.mark.parametrize("change, words", [
    ({"domains": [{"name": "a", "files": ["x"]}, {"name": "a", "files": ["y"]}]}, "duplicate"),
    ({"domains": [{"name": "old", "files": ["x"]}, {"name": "b", "files": ["y"]}]}, "'old'"),
    ({"baselines": {"grid": [0.1, 1.5]}}, "grid"),
    ({"run": "bogus"}, "run"),
    ({"train": {"steps": 2}, "method": {"probe_fraction": 0.1}}, "probe"),
    ({"method": {"n_proxies": 3}}, r"method.n_proxies: 3 proxies cannot overdetermine the laws: each has 3 parameters.*fix: raise"),
])
def test_bad_input_names_the_problem(change, words):
    with pytest.raises(OpmixError, match=words):
        load_config(None, ContinualConfig, raw={**RAW, **change})
