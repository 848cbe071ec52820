"""Continual midtraining benchmark: OP-Mix, its baselines and the grid oracle on the demo domain sequence.

    python benchmarks/bench_continual.py --out DIR [--seeds 2] [--orderings 1] [--steps 300] [--jobs 2]

1. The start model: the pretraining demo recipe at tiny size (``opmix.continual.demo``), once, in DIR/pretrain.
2. For each ordering of the four demo domains and each seed: every method as its own CLI run in
   DIR/o<ordering>_s<seed>/<method> (``grid`` = OP-Mix plus the grid at every stage, so OP-Mix's rows come from it).
   Runs go to ``--jobs`` worker processes of one thread each (tiny models run best that way on a small CPU).
3. Tables: DIR/continual_bench.{csv,md} and DIR/continual_fidelity.csv (``opmix.continual.bench``).
Re-running the same command resumes: every run directory skips its finished steps.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

METHODS = ("grid", "sequential", "replay", "fifty", "retrain", "lora-merge")  # longest first


def _cli(args: list[str], log: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.run([sys.executable, "-m", "opmix.cli", "-q", *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode


def _orderings(n: int, count: int) -> list[list[int]]:
    """The demo order first, then distinct seeded permutations (a seeded draw can repeat an order, even the first)."""
    if count > math.factorial(n):
        raise SystemExit(f"--orderings {count}: only {math.factorial(n)} orders of {n} domains exist")
    orders, rng = [list(range(n))], np.random.default_rng(0)
    while len(orders) < count:
        order = rng.permutation(n).tolist()
        if order not in orders:
            orders.append(order)
    return orders


def main() -> int:
    from opmix.continual.bench import write_tables
    from opmix.continual.demo import demo_continual_config, demo_pretrain_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--orderings", type=int, default=1, help="1 = the demo order; more = seeded permutations")
    parser.add_argument("--steps", type=int, default=300, help="steps per stage")
    parser.add_argument("--probe-fraction", type=float, default=0.25)
    parser.add_argument("--grid-seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)

    pretrain_config = root / "pretrain.yaml"
    pretrain_config.write_text(yaml.safe_dump(demo_pretrain_config(root / "data")))
    if _cli(["pretrain", "--config", str(pretrain_config), "--out", str(root / "pretrain")], root / "pretrain.log"):
        print(f"pretraining failed: see {root / 'pretrain.log'}", file=sys.stderr)
        return 1

    base = demo_continual_config(root / "data-continual", root / "pretrain")
    jobs, sequences = [], []
    for o, order in enumerate(_orderings(len(base["domains"]), args.orderings)):
        domains = [base["domains"][i] for i in order]
        for seed in range(args.seeds):
            sequence = root / f"o{o}_s{seed}"
            sequence.mkdir(exist_ok=True)
            sequences.append(sequence)
            raw = {**base, "seed": seed, "domains": domains,
                   "train": {**base["train"], "steps": args.steps},
                   "method": {**base["method"], "probe_fraction": args.probe_fraction},
                   "baselines": {"grid_seeds": args.grid_seeds}}
            config = sequence / "config.yaml"
            config.write_text(yaml.safe_dump(raw))
            jobs += [(method, sequence, config) for method in args.methods]
    jobs.sort(key=lambda job: METHODS.index(job[0]))  # the grid runs first: they take longest

    def work(job) -> tuple[str, int]:
        method, sequence, config = job
        code = _cli(["continual", "--config", str(config), "--out", str(sequence / method), "--method", method],
                    sequence / f"{method}.log")
        print(f"{sequence.name} {method}: exit {code}", flush=True)
        return f"{sequence.name}/{method}", code

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        failed = [name for name, code in pool.map(work, jobs) if code]
    print(write_tables(root, sequences))
    if failed:
        print(f"failed runs: {failed} (see their .log files)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

