"""End-to-end continual-midtraining runs on a tiny config: OP-Mix with the grid oracle, every baseline's mixtures,
resuming an interrupted stage, and the CLI."""

from __future__ import annotations

import json

import pytest

from opmix.cli import main
from opmix.config.continual import ContinualConfig
from opmix.config.loading import load_config
from opmix.recipes import continual, continual_baselines
from opmix.run.rundir import RunDir
from opmix.train.loop import Trainer

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_continual_raw(demo_corpus) -> dict:
    return {
        "seed": 0,
        "model": {"builtin": "llama-tiny"},
        "tokenizer": "builtin:bytes",
        "domains": [{"name": n, "files": [str(p) for p in paths]} for n, paths in demo_corpus.items()],
        "data": {"seq_len": 32, "eval_fraction": 0.1, "max_eval_sequences": 4},
        "train": {"steps": 6, "batch_size": 4, "lr": 3e-3, "eval_batch_size": 8, "warmup_fraction": 0.0},
        "method": {"probe_fraction": 0.5, "lora": {"r": 4, "alpha": 8}},
        "baselines": {"grid": [0.1, 0.9], "grid_seeds": 2},
    }


def _run(raw, out, **changes):
    cfg = load_config(None, ContinualConfig, raw={**raw, **changes})
    recipe = continual if cfg.run in ("opmix", "grid") else continual_baselines
    with RunDir(out).lock() as run_dir:
        return recipe.run(cfg, run_dir)


def test_opmix_with_grid_three_stages_carries_p_and_resumes(tmp_path, tiny_continual_raw):
    out = tmp_path / "run"
    summary = _run(tiny_continual_raw, out, run="grid")
    order = ["code", "prose", "records"]
    stages = summary["stages"]
    assert summary["domains"] == order and [s["stage"] for s in stages] == [1, 2, 3]
    assert stages[0]["mixture"] == {"code": 1.0}
    for k, s in enumerate(stages[1:], start=2):
        assert set(s["mixture"]) == set(order[:k]) and sum(s["mixture"].values()) == pytest.approx(1.0)
        assert set(s["eval_loss"]) == set(order[:k])
        x_old, x_new = s["components"]["old"], s["components"][order[k - 1]]
        p = stages[k - 2]["mixture"]  # the previous stage's mixture, carried
        assert s["mixture"][order[k - 1]] == pytest.approx(x_new)
        for d in order[: k - 1]:
            assert s["mixture"][d] == pytest.approx(x_old * p[d])
        assert s["flops"]["probes"] > 0 and s["flops"]["proxy_eval"] > 0 and s["flops"]["grid"] > 0
        assert s["flops"]["fit_propose"] > 0  # the law fit and proposal are in the ledger too
        assert s["flops"]["total"] == pytest.approx(s["flops"]["train"] + s["flops"]["probes"]
                                                    + s["flops"]["proxy_eval"] + s["flops"]["fit_propose"])
        assert s["proxies"]["r"] == pytest.approx([0.1 + 0.1 * i for i in range(9)])
        grid = s["grid"]
        assert grid["r"] == [0.1, 0.9] and len(grid["per_seed"]["0.10"]) == 2
        assert grid["regret"] == pytest.approx((grid["chosen_loss"] - grid["best_loss"]) / grid["best_loss"])
        assert all(d["tokens"] >= 0 for d in s["data"].values())
    for path in ["s2_proxies/proxies.csv", "s3_propose/proposal.json", "final/model/config.json", "summary.json"]:
        assert (out / path).exists(), path
    assert len((out / "s2_proxies" / "proxies.csv").read_text().strip().splitlines()) == 1 + 9
    assert json.loads((out / "summary.json").read_text())["mixture"] == summary["mixture"]

    markers = {p.name: p.read_bytes() for p in (out / "steps").iterdir()}
    again = _run(tiny_continual_raw, out, run="grid")  # nothing finished is redone
    assert {p.name: p.read_bytes() for p in (out / "steps").iterdir()} == markers
    assert again["stages"][-1]["eval_loss"] == summary["stages"][-1]["eval_loss"]


@pytest.mark.parametrize("method, stage2", [
    ("sequential", {"code": 0.0, "prose": 1.0}),
    ("replay", {"code": 0.1, "prose": 0.9}),
    ("fifty", {"code": 0.5, "prose": 0.5}),
    ("retrain", {"code": 0.5, "prose": 0.5}),
    ("lora-merge", {"code": 0.0, "prose": 1.0}),
])
def test_baseline_mixtures(tmp_path, tiny_continual_raw, method, stage2):
    raw = {**tiny_continual_raw, "domains": tiny_continual_raw["domains"][:2]}
    summary = _run(raw, tmp_path / method, run=method)
    assert summary["method"] == method
    assert summary["stages"][1]["mixture"] == pytest.approx(stage2)
    assert set(summary["stages"][1]["eval_loss"]) == {"code", "prose"}
    ledger = json.loads((tmp_path / method / "ledger.json").read_text())
    steps = {s["stage"]: s for s in ledger["stages"]}
    if method == "retrain":  # stage 2 retrains from the start model on 2 stages' worth of steps
        assert steps["s2_retrain"]["tokens"] == 2 * steps["s1_train"]["tokens"]
    if method == "lora-merge":
        assert "s2_lora" in steps and "s2_train" not in steps
    assert (tmp_path / method / "final" / "model" / "config.json").is_file()


def test_an_interrupted_stage_resumes_to_the_same_result(tmp_path, tiny_continual_raw, monkeypatch):
    raw = {**tiny_continual_raw, "domains": tiny_continual_raw["domains"][:2],
           "train": {**tiny_continual_raw["train"], "checkpoint_every": 2}}
    reference = _run(raw, tmp_path / "whole")

    original = Trainer._optimizer_step

    def crash(self):
        if self.stage == "s2_train" and self.step == 9:  # stage 2 covers global steps 6..11; checkpoint at 8
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(raw, tmp_path / "cut")
    assert (tmp_path / "cut" / "steps" / "s2_propose.json").is_file()
    assert not (tmp_path / "cut" / "steps" / "s2_train.json").exists()
    before = (tmp_path / "cut" / "steps" / "s2_probe_new.json").read_bytes()
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
    resumed = _run(raw, tmp_path / "cut")
    assert (tmp_path / "cut" / "steps" / "s2_probe_new.json").read_bytes() == before  # not redone
    assert resumed["mixture"] == reference["mixture"]
    assert resumed["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)


def test_cli_continual_runs_a_baseline_and_rejects_missing_arguments(tmp_path, tiny_continual_raw, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny_continual_raw, "domains": tiny_continual_raw["domains"][:2]}))
    code = main(["-q", "continual", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--method", "sequential", "train.steps=4"])
    printed = capsys.readouterr().out
    assert code == 0 and "method: sequential" in printed and "average" in printed
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"] == "sequential"
    assert main(["-q", "continual", "--out", str(tmp_path / "x")]) == 2
    assert main(["-q", "continual", "--config", str(config), "--out", str(tmp_path / "y"), "run=bogus"]) == 2
