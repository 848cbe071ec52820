"""Benchmark: ``opmix fit`` on synthetic Olmix-style swarms; targets: 40 runs x 8 domains in < 5 s, the published
size (512 runs, 17 domains, 13 metrics) in < 60 s. Prints the wall time of the whole command (a fresh process:
imports included) and each law's held-out Spearman and RMSE (``--holdout 0.2``).

The swarm: Dirichlet(1) mixtures; metrics from a known law ``exp(c) + exp(t . x)`` (own exponent -U(0.5, 1.5), the
others U(0, 0.3)) plus Gaussian noise (std 0.003). Most metrics are named after a domain (``eval/<domain>_loss``,
matched to it); the rest name none (they start neutral).

Run: python benchmarks/bench_fit.py [--jobs N] [--only small|large] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {"small": (40, 8, 8, 5.0), "large": (512, 17, 13, 60.0)}  # runs, domains, metrics, target seconds
NOISE = 0.003


def write_swarm(folder: Path, runs: int, domains: int, metrics: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    names = [f"dom{d:02d}" for d in range(domains)]
    own = [j if j < min(metrics, domains) - 3 else None for j in range(metrics)]  # the last 3 name no domain
    columns = [f"eval/{names[o]}_loss" if o is not None else f"task{j:02d}_bpb" for j, o in enumerate(own)]
    X = rng.dirichlet(np.ones(domains), size=runs)  # (runs, domains)
    T = rng.uniform(0.0, 0.3, size=(metrics, domains))
    for j, o in enumerate(own):
        T[j, o if o is not None else rng.integers(domains)] = -rng.uniform(0.5, 1.5)
    c = rng.uniform(-1.0, 0.5, size=metrics)
    Y = np.exp(c) + np.exp(X @ T.T) + rng.normal(0.0, NOISE, size=(runs, metrics))  # (runs, metrics)
    ids = [f"run_{i:04d}" for i in range(runs)]
    paths = folder / "ratios.csv", folder / "metrics.csv"
    for path, header, values in ((paths[0], names, X), (paths[1], columns, Y)):
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", *header])
            writer.writerows([r, *v] for r, v in zip(ids, values.tolist()))
    return paths


def run_case(name: str, folder: Path, jobs: int | None) -> None:
    runs, domains, metrics, target = CASES[name]
    ratios, metrics_csv = write_swarm(folder, runs, domains, metrics)
    out = folder / "out"
    command = [sys.executable, "-m", "opmix.cli", "-q", "fit", "--ratios", str(ratios), "--metrics", str(metrics_csv),
               "--holdout", "0.2", "--out", str(out)] + (["--jobs", str(jobs)] if jobs else [])
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    laws = json.loads((out / "laws.json").read_text())["laws"]
    verdict = "under" if seconds < target else "OVER"
    print(f"{name}: {runs} runs, {domains} domains, {metrics} metrics: {seconds:.1f} s ({verdict} {target:.0f} s)")
    for row in laws:
        held = row["holdout"]
        rho = "n/a" if held["spearman"] is None else f"{held['spearman']:+.3f}"
        print(f"  {row['metric']:<20} held-out Spearman {rho}  RMSE {held['rmse']:.4f}  (fit R^2 {row['r2']:.3f})")
    rhos = [row["holdout"]["spearman"] for row in laws if row["holdout"]["spearman"] is not None]
    print(f"  held-out Spearman: min {min(rhos):+.3f}, median {float(np.median(rhos)):+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None, help="passed to opmix fit --jobs (default: its own)")
    parser.add_argument("--only", choices=sorted(CASES), default=None)
    parser.add_argument("--keep", type=Path, default=None, help="write the swarms and fits here (else a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for name in [args.only] if args.only else list(CASES):
            (root / name).mkdir(parents=True, exist_ok=True)
            run_case(name, root / name, args.jobs)


if __name__ == "__main__":
    main()
