"""SIGKILL the CLI at chosen points (``OPMIX_FAULT``, see ``opmix.run.faults``), re-run it, and prove that the run
completes, that no finished step is redone, and that its results are bit-identical to an uninterrupted run's."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opmix.run.atomic import TEMP_MARK

pytestmark = pytest.mark.slow


def fault_config(base: dict, folder: Path) -> Path:
    """The tiny config with periodic checkpoints every 2 steps and probes long enough to hold some."""
    raw = copy.deepcopy(base)
    raw["baseline"] = "none"
    raw["train"]["checkpoint_every"] = 2  # prefix 0..4, probes 0..5, final 4..20
    raw["method"].update(probe_fraction=0.25, law={"n_c_starts": 3, "n_t_starts": 5})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(config: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPMIX_FAULT"}
    if fault is not None:
        env["OPMIX_FAULT"] = fault
    command = [sys.executable, "-m", "opmix.cli", "pretrain", "--config", str(config), "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def markers(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "steps").glob("*.json"))}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {
        "mixture": summary["mixture"],
        "components": summary["components"],
        "eval_loss": summary["eval_loss"],
        "proxies": (out / "proxies.csv").read_text(),
        "final_weights": sha(out / "final" / "checkpoint" / "trainable.safetensors"),
        "exported": sha(out / "final" / "model" / "model.safetensors"),
    }


def kill(config: Path, out: Path, fault: str) -> None:
    """One invocation killed at ``fault``; the steps finished before it are untouched."""
    before = markers(out) if out.exists() else {}
    run = cli(config, out, fault)
    assert run.returncode == -signal.SIGKILL, f"{fault}: not killed (rc {run.returncode})\n{run.stderr[-3000:]}"
    after = markers(out)
    assert {k: after.get(k) for k in before} == before, f"{fault}: a finished step was redone"


def finish(config: Path, out: Path) -> str:
    """Re-run to completion; returns its log. No finished step is redone, no temp file is left."""
    before = markers(out)
    run = cli(config, out)
    assert run.returncode == 0, run.stderr[-3000:]
    after = markers(out)
    assert {k: after.get(k) for k in before} == before, "a finished step was redone on resume"
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name], "temp files left behind"
    return run.stderr


@pytest.fixture(scope="module")
def reference(tiny_pretrain_base, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run, shared by every test of the module."""
    folder = tmp_path_factory.mktemp("reference")
    config = fault_config(tiny_pretrain_base, folder)
    finish(config, folder / "run")
    return folder / "run", results(folder / "run")


def test_killed_at_each_stage_resumes_to_the_same_result(reference, tiny_pretrain_base, tmp_path):
    """Tokenization, prefix, a probe, proxy evaluation, final training: each kill resumes where it stopped."""
    config, out = fault_config(tiny_pretrain_base, tmp_path), tmp_path / "run"

    kill(config, out, "tokenize:2")  # the second domain's train tokens are written, its eval tokens not
    assert not markers(out) and len(list((out / "cache").glob("*/meta.json"))) == 1

    kill(config, out, "step:prefix:3")
    assert json.loads((out / "prefix/checkpoint/state.json").read_text())["loop"]["step"] == 2

    kill(config, out, "step:probe_old:3")
    assert set(markers(out)) == {"prefix.json"}
    assert json.loads((out / "probe_old/checkpoint/state.json").read_text())["loop"]["step"] == 2

    kill(config, out, "proxy:2")
    assert len((out / "proxies.csv").read_text().splitlines()) == 1 + 2 and "proxies.json" not in markers(out)

    kill(config, out, "step:final:7")  # final runs steps 4..20: killed after step 11, checkpoint at 10
    assert {"propose.json", "probe_records.json"} <= set(markers(out)) and "final.json" not in markers(out)

    log = finish(config, out)
    assert "final: steps 10..20" in log  # resumed from the periodic checkpoint, not restarted
    assert results(out) == reference[1]


def test_half_written_checkpoint_is_swept_and_the_step_resumes(reference, tiny_pretrain_base, tmp_path):
    config, out = fault_config(tiny_pretrain_base, tmp_path), tmp_path / "run"
    kill(config, out, "checkpoint:3")  # prefix saved at steps 2 and 4; the probe's first save is cut short
    assert [p for p in (out / "probe_old").iterdir() if TEMP_MARK in p.name]
    finish(config, out)
    assert results(out) == reference[1]


def test_artifact_written_but_marker_missing_redoes_the_step_identically(reference, tiny_pretrain_base, tmp_path):
    config, out = fault_config(tiny_pretrain_base, tmp_path), tmp_path / "run"
    kill(config, out, "mark:probe_code:1")
    assert (out / "probe_code/adapter").is_dir() and "probe_code.json" not in markers(out)
    finish(config, out)
    adapter = "probe_code/adapter/adapter_model.safetensors"
    assert sha(out / adapter) == sha(reference[0] / adapter)
    assert results(out) == reference[1]


def test_damaged_periodic_checkpoint_is_not_trusted(reference, tiny_pretrain_base, tmp_path):
    config, out = fault_config(tiny_pretrain_base, tmp_path), tmp_path / "run"
    kill(config, out, "step:final:5")  # checkpoints at steps 6 and 8
    optimizer = out / "final/checkpoint/optimizer.safetensors"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the hash can tell
    optimizer.write_bytes(bytes(data))

    log = finish(config, out)
    assert "not resuming from checkpoint" in log and "final: steps 4..20" in log  # restarted from the prefix
    assert results(out) == reference[1]
