"""End-to-end pretraining runs on a tiny config: outputs, resume without redoing steps, determinism."""

from __future__ import annotations

import json
import math

import pytest

from opmix.cli import main
from opmix.config import PretrainConfig, load_config
from opmix.recipes import pretrain
from opmix.run.rundir import RunDir

pytestmark = pytest.mark.slow

STEPS = ["prefix", "probe_old", "proxies", "propose", "final", "erm"]


def _run(raw, out):
    cfg = load_config(None, PretrainConfig, raw=raw)
    run_dir = RunDir(out)
    with run_dir.lock():
        return pretrain.run(cfg, run_dir)


def test_pretrain_end_to_end_and_resume(tmp_path, tiny_pretrain_raw):
    out = tmp_path / "run"
    summary = _run(tiny_pretrain_raw, out)
    domains = [d["name"] for d in tiny_pretrain_raw["domains"]]

    assert set(summary["mixture"]) == set(domains)
    assert sum(summary["mixture"].values()) == pytest.approx(1.0)
    assert min(summary["mixture"].values()) >= 0
    assert set(summary["components"]) == {"old", *domains}
    assert set(summary["eval_loss"]) == set(domains)
    assert all(0 < v < 10 for v in summary["eval_loss"].values())
    assert summary["flops"]["total"] == pytest.approx(sum(v for k, v in summary["flops"].items() if k != "total"))
    assert summary["flops"]["final"] > summary["flops"]["prefix"] > 0 and summary["flops"]["probes"] > 0
    assert summary["baseline"]["name"] == "erm" and set(summary["baseline"]["eval_loss"]) == set(domains)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["mixture"] == summary["mixture"]
    # fit diagnostics ran on an overdetermined fit: every law carries a finite fit error and its figures
    assert isinstance(on_disk["warnings"], list) and all(isinstance(w, str) for w in on_disk["warnings"])
    assert not any("proxies for laws of" in w for w in on_disk["warnings"])  # 10 proxies, 5 parameters
    assert [law["domain"] for law in on_disk["laws"]] == domains
    for law in on_disk["laws"]:
        assert math.isfinite(law["rmse"]) and math.isfinite(law["r2"]) and law["n_evaluations"] > 0
        assert law["diagnostics"]["n_proxies"] == 10 and law["diagnostics"]["n_params"] == 5
        assert math.isfinite(law["diagnostics"]["exponent_spread"]) and law["diagnostics"]["constant_share"] > 0
    # the fit and proposal are in the ledger: FLOPs (an estimate) and seconds
    assert summary["flops"]["fit_propose"] > 0
    propose_entry = next(e for e in json.loads((out / "ledger.json").read_text())["stages"] if e["stage"] == "propose")
    assert propose_entry["seconds"] > 0 and propose_entry["flops"] == summary["flops"]["fit_propose"]

    for path in ["config.yaml", "ledger.json", "proxies.csv", "propose/laws.json", "propose/proposal.json",
                 "final/model/config.json", "final/model/model.safetensors", "probe_old/adapter"]:
        assert (out / path).exists(), path
    for d in domains:
        assert (out / f"probe_{d}" / "adapter").is_dir()
    rows = (out / "proxies.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + tiny_pretrain_raw["method"]["n_proxies"]

    # re-running the same command continues: nothing finished is redone
    done = sorted(path.stem for path in (out / "steps").glob("*.json"))
    assert set(STEPS[:-1]) <= set(done)  # "erm" is its own step unless the final training is the ERM run
    markers = {s: (out / "steps" / f"{s}.json").read_bytes() for s in done}
    again = _run(tiny_pretrain_raw, out)
    assert {s: (out / "steps" / f"{s}.json").read_bytes() for s in done} == markers
    assert again["mixture"] == summary["mixture"] and again["eval_loss"] == summary["eval_loss"]


def test_same_config_and_seed_give_the_same_mixture(tmp_path, tiny_pretrain_raw, monkeypatch):
    """Bit-identical on CPU, also when the second run is interrupted mid-training and resumed."""
    from opmix.run import faults

    tiny_pretrain_raw["train"]["checkpoint_every"] = 3
    first = _run(tiny_pretrain_raw, tmp_path / "a")

    def interrupt(name):  # an in-process stand-in for the kill of tests/faults: stop after final's 5th step
        hits[name] = hits.get(name, 0) + 1
        if name == "step:final" and hits[name] == 5:
            raise KeyboardInterrupt

    hits: dict[str, int] = {}
    monkeypatch.setattr(faults, "fault_point", interrupt)
    monkeypatch.setattr("opmix.train.loop.fault_point", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_pretrain_raw, tmp_path / "b")
    assert not (tmp_path / "b" / "steps" / "final.json").exists()
    assert (tmp_path / "b" / "final" / "checkpoint" / "state.json").is_file()  # resumes from it, at step 9
    second = _run(tiny_pretrain_raw, tmp_path / "b")
    assert first["mixture"] == second["mixture"]
    assert first["eval_loss"] == second["eval_loss"]
    assert first["baseline"]["eval_loss"] == second["baseline"]["eval_loss"]


def test_cli_pretrain_prints_mixture_and_comparison(tmp_path, tiny_pretrain_raw, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny_pretrain_raw, "baseline": "none"}))
    code = main(["-q", "pretrain", "--config", str(config), "--out", str(tmp_path / "run"), "--baseline", "erm",
                 "train.steps=15"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "mixture" in printed and "guard:" in printed and "ERM" in printed and "compute (FLOPs)" in printed
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 15 and saved["baseline"] == "erm"
