"""Launch a tiny pretraining run on N CPU processes (``torchrun``, gloo) or one, for the distributed tests."""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

GLOBAL_BATCH = 4


def config(base: dict, folder: Path, processes: int, **train) -> Path:
    raw = copy.deepcopy(base)
    raw["baseline"] = "none"
    raw["train"].update(batch_size=GLOBAL_BATCH // processes, checkpoint_every=2)  # final: steps 4..20
    raw["method"].update(probe_fraction=0.25, law={"n_c_starts": 3, "n_t_starts": 5})
    raw["method"]["lora"]["dropout"] = 0.0  # dropout masks are drawn per process: off, to compare runs exactly
    raw["train"].update(train)
    path = folder / f"config-{processes}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(base: dict, out: Path, processes: int, fault: str | None = None, config_of: int | None = None,
           **train) -> subprocess.CompletedProcess:
    """``config_of``: the config written for that number of processes (default: ``processes``); ``train``: more
    train settings (``parallel="fsdp"``)."""
    env = {k: v for k, v in os.environ.items() if k != "OPMIX_FAULT"} | {"OMP_NUM_THREADS": "1"}
    if fault is not None:
        env["OPMIX_FAULT"] = fault
    path = config(base, out.parent, config_of or processes, **train)
    cli = ["-m", "opmix.cli", "pretrain", "--config", str(path), "--out", str(out)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", *cli]
    else:
        command = [sys.executable, *cli]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def free_port() -> int:
    with socket.socket() as probe:  # a port of our own: other launches (tests, benchmarks) may run meanwhile
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finished(base: dict, out: Path, processes: int, config_of: int | None = None,
             **train) -> subprocess.CompletedProcess:
    run = launch(base, out, processes, config_of=config_of, **train)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def weights(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path))


def proxy_losses(out: Path) -> np.ndarray:
    with open(out / "proxies.csv", newline="") as f:
        return np.array([[float(v) for k, v in row.items() if k.startswith("loss_")] for row in csv.DictReader(f)])


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())
