"""`opmix status` on a running, an interrupted and a finished run (real CLI processes on the tiny config)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import pytest
import yaml

from opmix.cli import main
from opmix.status import run_status

pytestmark = pytest.mark.slow


def _config(tmp_path, base):
    raw = copy.deepcopy(base)
    raw["train"].update(steps=40, checkpoint_every=4)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(config, out, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "OPMIX_FAULT"}
    env["OPMIX_PROGRESS_INTERVAL"] = "0"
    if fault:
        env["OPMIX_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "opmix.cli", "pretrain", "--config", str(config), "--out",
                             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _states(status):
    return {row["step"]: row["state"] for row in status["steps"]}


def test_status_of_a_running_an_interrupted_and_a_finished_run(tmp_path, tiny_pretrain_base, capsys):
    config, out = _config(tmp_path, tiny_pretrain_base), tmp_path / "run"

    # running: another process holds the run (stopped at its third prefix step); that step shows its progress
    process = _start(config, out, fault="hold@step:prefix:3")
    try:
        deadline, running = time.time() + 300, None
        while time.time() < deadline and process.poll() is None:
            if (out / "config.yaml").is_file():
                status = run_status(out)
                rows = [r for r in status["steps"] if r["state"] == "running"]
                if status["state"] == "running" and rows and rows[0]["progress"]["done"] > 0:
                    running = status
                    break
            time.sleep(0.2)
        assert running is not None, f"never saw the run working (exit code {process.poll()})"
        assert running["pid"] == process.pid
        assert "pending" in _states(running).values()
        row = next(r for r in running["steps"] if r["state"] == "running")
        assert row["step"] == "prefix" and 0 < row["progress"]["done"] <= 3 <= row["progress"]["total"]
    finally:
        process.kill()
        process.wait()

    # interrupted: killed inside the final training; status names the step and how far it got
    killed = _start(config, out, fault="step:final:6")
    killed.communicate(timeout=600)
    assert killed.returncode != 0
    status = run_status(out)
    assert status["state"] == "stopped" and _states(status)["final"] == "interrupted"
    assert _states(status)["prefix"] == "done"
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stopped: re-run its command to resume" in printed and "interrupted" in printed

    # finished: every step done or (not needed) skipped, with its compute
    finished = _start(config, out)
    finished.communicate(timeout=600)
    assert finished.returncode == 0
    status = run_status(out)
    assert status["state"] == "finished"
    states = _states(status)
    assert set(states.values()) <= {"done", "skipped"} and states["final"] == "done"
    assert all(r["flops"] > 0 for r in status["steps"] if r["state"] == "done" and r["step"] != "export_final_model")
    assert (out / "run.log").read_text().count("opmix pretrain ->") == 3  # one header per invocation


def test_status_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not an opmix run directory" in capsys.readouterr().err
