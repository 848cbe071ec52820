"""``OPMixCallback`` in a 2-process (DDP, gloo on CPU) transformers ``Trainer`` job: every process searches in
lockstep and reaches the same mixture, each saves its own dataset position with the checkpoints, and a job resumed
from a checkpoint restores the history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from multiprocess_launch import free_port

from opmix.callback import DATASET_FILE, STATE_FILE

pytestmark = pytest.mark.slow
JOB = Path(__file__).with_name("callback_job.py")


def job(corpus: Path, out: Path, resume: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(JOB), str(corpus), str(out)]
    run = subprocess.run(command + ([str(resume)] if resume else []), env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.fixture(scope="module")
def corpus(demo_corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("callback") / "corpus.json"
    path.write_text(json.dumps({n: [str(p) for p in demo_corpus[n]] for n in list(demo_corpus)[:2]}))
    return path


def histories(out: Path) -> list[dict]:
    return [json.loads((out / f"history-rank{r}.json").read_text()) for r in range(2)]


def test_every_process_reaches_the_same_mixture_and_resumes(corpus, tmp_path):
    out = tmp_path / "job"
    run = job(corpus, out)
    first, second = histories(out)
    assert first["world"] == 2 and "position is not saved" not in run.stderr
    assert [(e["step"], e["event"]) for e in first["history"]] == [(0, "start"), (3, "remix"), (6, "remix")]
    assert first["weights"] == second["weights"]  # the searches ran in lockstep to the same proposal
    assert [e["weights"] for e in first["history"]] == [e["weights"] for e in second["history"]]
    # accelerate's dispatcher feeds both processes from rank 0's dataset: its position counts the global batches
    position = json.loads((out / "checkpoint-3" / DATASET_FILE.format(rank=0)).read_text())
    assert position["consumed"] == 3 * 2 * 2  # 3 steps x per-device batch 2 x 2 processes
    assert not (out / "checkpoint-3" / DATASET_FILE.format(rank=1)).exists()  # rank 1's dataset was not read
    assert (out / "checkpoint-3" / STATE_FILE).is_file()
    assert first["param_sum"] == second["param_sum"]  # the models stayed in step through the searches

    remixed = first["history"][1]["weights"]
    job(corpus, out, out / "checkpoint-3")  # resumed in place, as the Trainer resumes
    again = histories(out)
    assert again[0]["param_sum"] == again[1]["param_sum"]
    assert [(e["step"], e["event"]) for e in again[0]["history"]] == [(0, "start"), (3, "remix"), (6, "remix")]
    assert again[0]["history"][1]["weights"] == remixed  # restored, not searched again
    assert again[0]["weights"] == again[1]["weights"]
