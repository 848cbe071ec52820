"""Benchmark: fit 5 laws over 6 components and run the proposer; the target is under 5 s per fit+propose.

Run: python benchmarks/bench_fit_propose.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from opmix.law import fit_laws
from opmix.propose import KLProposer

N_COMPONENTS, N_DOMAINS, TARGET_S = 6, 5, 5.0


def synthetic_problem(n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Dirichlet(1) proxies over (old, d1..d5); eval domain j's own component is j + 1; small eval noise."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(N_COMPONENTS), size=n_points)
    c = rng.uniform(-1.0, 0.5, size=N_DOMAINS)
    T = rng.uniform(0.0, 0.3, size=(N_DOMAINS, N_COMPONENTS))
    own = [j + 1 for j in range(N_DOMAINS)]
    T[np.arange(N_DOMAINS), own] = -rng.uniform(0.5, 1.5, size=N_DOMAINS)
    Y = np.exp(c) + np.exp(X @ T.T) + rng.normal(0.0, 0.005, size=(n_points, N_DOMAINS))
    return X, Y, own


def run_once(X: np.ndarray, Y: np.ndarray, own: list[int]) -> tuple[float, float]:
    start = time.perf_counter()
    laws = fit_laws(X, Y, own, seed=0)
    fitted = time.perf_counter()
    prior = np.array([0.5] + [0.5 / N_DOMAINS] * N_DOMAINS)
    KLProposer(kl_weight=0.05).fit(np.array([law.t_ for law in laws]), prior)
    return fitted - start, time.perf_counter() - fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run_once(*synthetic_problem(12, seed=100))  # warm-up: imports, cvxpy compilation caches
    for n_points in (12, 20):
        fits, proposes, totals = [], [], []
        for repeat in range(args.repeats):
            fit_s, propose_s = run_once(*synthetic_problem(n_points, seed=repeat))
            fits.append(fit_s)
            proposes.append(propose_s)
            totals.append(fit_s + propose_s)
        total = statistics.median(totals)
        print(f"{n_points} points: fit_laws median {statistics.median(fits):.3f} s, proposer median "
              f"{statistics.median(proposes):.3f} s, total median {total:.3f} s (max {max(totals):.3f} s) "
              f"-> {'under' if total < TARGET_S else 'OVER'} {TARGET_S:.0f} s")


if __name__ == "__main__":
    main()
