"""The grid oracle (SPEC section 4): at a stage, full training at each new-data fraction r of a grid, all from the
same checkpoint (the one the method being judged starts the stage from), with several seeds per point.

    regret   = (loss(chosen) - min grid loss) / min grid loss,   loss = mean eval loss over the seen domains
    fidelity = Spearman(proxy objective at r, grid's real objective at r) over the r both have
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from opmix.continual.segment import stage_mixture
from opmix.continual.training import reseed_branch
from opmix.eval import mean_loss
from opmix.stages import train_full


def grid_step(stage: int, r: float, seed: int) -> str:
    return f"s{stage}_grid_r{r:.2f}_seed{seed}"


def sweep_grid(ws, stage: int, start_from: Path, p: Mapping[str, float], new: str, seen: Sequence[str],
               fractions: Sequence[float], seeds: int, schedule_for: Callable) -> dict[float, list[dict]]:
    """Full training at every r in ``fractions`` (``seeds`` runs each) from ``start_from``, each on the stage's
    schedule for its mixture (``schedule_for(mixture)``, a ``StageSchedule``); r -> per-seed losses on the seen
    domains. Seed 0 continues the checkpoint's own data stream; seed j > 0 a re-drawn copy of it."""
    out: dict[float, list[dict]] = {}
    for r in fractions:
        mixture = stage_mixture(r, p, new, seen)
        schedule = schedule_for(mixture)
        end_step = schedule.end
        runs = []
        for seed in range(seeds):
            branch = start_from if seed == 0 else reseed_branch(
                start_from, ws.run.path(f"s{stage}_branch{seed}", "checkpoint"), seed=ws.seed * 1000 + seed)
            step = grid_step(stage, r, seed)
            train_full(ws, step, mixture, schedule, end_step=end_step, start_from=branch)
            losses = ws.run.step_info(step)["eval_loss"]
            runs.append({d: losses[d] for d in seen})
        out[float(r)] = runs
    return out


def grid_report(grid: Mapping[float, list[dict]], chosen_r: float, chosen_loss: float,
                proxy_r: np.ndarray, proxy_losses: np.ndarray) -> dict:
    """Regret of the chosen mixture against the grid's best, and the fidelity of the proxies to the grid.

    ``proxy_losses`` (P, n_seen) are the proxies' eval losses at new-data fractions ``proxy_r`` (P,)."""
    fractions = sorted(grid)
    real = np.array([np.mean([mean_loss(run) for run in grid[r]]) for r in fractions])  # mean over seeds
    spread = [float(np.std([mean_loss(run) for run in grid[r]])) for r in fractions]
    best = int(np.argmin(real))
    proxy_objective = np.asarray(proxy_losses, dtype=float).mean(axis=1)
    pairs = [(proxy_objective[i], real[j]) for j, r in enumerate(fractions)
             for i in np.flatnonzero(np.isclose(proxy_r, r, atol=1e-6))[:1]]
    rho = float(spearmanr(*zip(*pairs)).statistic) if len(pairs) >= 3 else float("nan")
    return {
        "r": fractions,
        "mean_eval_loss": real.tolist(),
        "seed_std": spread,
        "per_seed": {f"{r:.2f}": grid[r] for r in fractions},
        "best_r": fractions[best],
        "best_loss": float(real[best]),
        "chosen_r": float(chosen_r),
        "chosen_loss": float(chosen_loss),
        "regret": float((chosen_loss - real[best]) / real[best]),
        "proxy_r": np.asarray(proxy_r, dtype=float).tolist(),
        "proxy_objective": proxy_objective.tolist(),
        "fidelity_spearman": rho,
    }
