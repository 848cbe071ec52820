"""Two processes (``torchrun``, gloo on CPU) against one, with the same global batch: the same run, up to the order
of floating-point sums. Full training (the prefix and final), LoRA probes (concurrent, one per process) and proxy
evaluation (split across processes) are all in a tiny pretraining run; killed runs resume, also with another
number of processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from multiprocess_launch import finished, launch, proxy_losses, summary, weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tiny_pretrain_base, tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("processes")
    out = {1: folder / "one" / "run", 2: folder / "two" / "run"}
    for n, path in out.items():
        path.parent.mkdir()
        finished(tiny_pretrain_base, path, n)
    return out


def test_two_processes_give_the_one_process_result(runs):
    one, two = runs[1], runs[2]
    for checkpoint in ("prefix/checkpoint/trainable.safetensors", "final/checkpoint/trainable.safetensors"):
        a, b = weights(one / checkpoint), weights(two / checkpoint)  # full training, data-parallel
        assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=2e-5, rtol=0) for k in a), checkpoint
    for probe in ("old", "code", "prose", "records"):  # trained concurrently, one per process
        path = f"probe_{probe}/adapter/adapter_model.safetensors"
        a, b = weights(one / path), weights(two / path)
        assert all(np.allclose(a[k], b[k], atol=2e-5, rtol=0) for k in a), probe
    assert np.allclose(proxy_losses(one), proxy_losses(two), atol=1e-4)  # rows split across processes
    s1, s2 = summary(one), summary(two)
    assert s1["components"].keys() == s2["components"].keys()
    assert all(abs(s1["components"][c] - s2["components"][c]) < 1e-3 for c in s1["components"])
    assert all(abs(s1["eval_loss"][d] - s2["eval_loss"][d]) < 1e-4 for d in s1["eval_loss"])
    # the tokens counted are the global batch's, whatever the number of processes
    assert s1["tokens_consumed"] == s2["tokens_consumed"]


def test_only_rank_0_writes_and_speaks(runs):
    log = (runs[2] / "run.log").read_text()
    assert log.count("final: done in") == 1 and log.count("propose: fitting") == 1  # one writer of run.log
    assert len(proxy_losses(runs[2])) == 1 + len(proxy_losses(runs[2])) - 1 == 10  # each row once
    ledger = [e["stage"] for e in json.loads((runs[2] / "ledger.json").read_text())["stages"]]
    assert len(ledger) == len(set(ledger))
    assert "(on process 0)" in log  # the probes ran concurrently, rank 0 logging its own


def _killed(base: dict, out: Path, fault: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    run = launch(base, out, 2, fault)
    assert run.returncode != 0, "not killed"
    assert (out / "final/checkpoint/state.json").is_file(), run.stderr[-4000:]
    state = json.loads((out / "final/checkpoint/state.json").read_text())["loop"]
    assert state["world_size"] == 2 and state["step"] < 20


@pytest.mark.parametrize("resume_with", [2, 1])
def test_a_killed_two_process_run_resumes_to_the_same_mixture(runs, tiny_pretrain_base, tmp_path, resume_with):
    """Killed (SIGKILL) mid final training; resumed by the same command with 2 processes, or with 1 (the sampler
    re-shards: the stream of rows continues, each step now one process's batch)."""
    out = tmp_path / "run"
    if resume_with == 2:  # first in a probe trained on process 1 alone: it resumes from that process's checkpoint
        out.parent.mkdir(parents=True, exist_ok=True)
        assert launch(tiny_pretrain_base, out, 2, "step:probe_records:3").returncode != 0
        assert json.loads((out / "probe_records/checkpoint/state.json").read_text())["loop"]["step"] == 2
        assert not (out / "steps" / "probe_records.json").exists()
    _killed(tiny_pretrain_base, out, "step:final:7")
    run = finished(tiny_pretrain_base, out, resume_with, config_of=2)
    assert "final: steps 10..20" in run.stderr  # from the periodic checkpoint, not from the start
    reference, resumed = summary(runs[2]), summary(out)
    assert resumed["mixture"] == pytest.approx(reference["mixture"], abs=1e-9)  # decided before the kill point
    if resume_with == 2:
        assert all(abs(resumed["eval_loss"][d] - reference["eval_loss"][d]) < 1e-5 for d in reference["eval_loss"])
    else:
        assert "resumed with 1 process(es), the checkpoint was written by 2" in run.stderr
        assert all(abs(resumed["eval_loss"][d] - reference["eval_loss"][d]) < 0.05 for d in reference["eval_loss"])
