"""``opmix check RUN_DIR``: does the simulator rank mixtures as real training does, on this run's own data?

From the prefix checkpoint of a finished (or at least proposed) pretraining run, N short *real* continuations
(full training, the run's optimizer state, data stream and learning-rate schedule) at mixtures spread over the
proxies' range, the proposed one included. Each is compared with what the fitted laws predict for it (mean over
domains): Spearman and Pearson correlation, and the bias (mean of real - predicted). Written to ``check.json``,
printed, and a warning when Spearman < 0.6. Every run is a resumable step (``check_<i>``) counted in the ledger.

With ``--steps`` equal to the final training's length the runs are full real trainings at those mixtures (the
benchmark's "handful of real runs").
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from opmix.domains import OLD, expand, normalize, uniform
from opmix.errors import OpmixError
from opmix.eval import mean_loss
from opmix.guard import predicted_mean
from opmix.law import laws_from_rows
from opmix.run.atomic import write_json
from opmix.stages import train_full

log = logging.getLogger(__name__)

WARN_SPEARMAN = 0.6


def spread_points(X: np.ndarray, first: np.ndarray, n: int) -> list[int]:
    """Indices of ``n - 1`` rows of ``X`` spread over its range: greedy farthest-point order from ``first``."""
    chosen: list[int] = []
    reference = [np.asarray(first, dtype=float)]
    for _ in range(min(n - 1, len(X))):
        distance = np.min([np.abs(X - r).sum(axis=1) for r in reference], axis=0)
        distance[chosen] = -1.0
        index = int(np.argmax(distance))
        chosen.append(index)
        reference.append(X[index])
    return chosen


def correlations(predicted: np.ndarray, real: np.ndarray) -> dict:
    predicted, real = np.asarray(predicted, dtype=float), np.asarray(real, dtype=float)
    enough = len(real) >= 3 and np.ptp(real) > 0 and np.ptp(predicted) > 0
    return {
        "spearman": float(spearmanr(predicted, real).statistic) if enough else math.nan,
        "pearson": float(pearsonr(predicted, real).statistic) if enough else math.nan,
        "bias": float(np.mean(real - predicted)),
    }


def run_check(run_dir: Path, runs: int = 4, steps: int | None = None) -> dict:
    """The check on a pretraining run directory (its config, prefix, proxies and laws); see the module docstring."""
    from opmix.config import PretrainConfig, load_config
    from opmix.run.rundir import RunDir
    from opmix.train.schedule import WSDSchedule
    from opmix.workspace import open_workspace

    run_dir = Path(run_dir)
    config, proposal_file = run_dir / "config.yaml", run_dir / "propose" / "proposal.json"
    if not config.is_file():
        raise OpmixError(f"{run_dir} is not an opmix pretraining run directory (no config.yaml)",
                         "give the --out directory of an `opmix pretrain` run")
    if not proposal_file.is_file() or not (run_dir / "proxies.csv").is_file():
        raise OpmixError(f"{run_dir} has no proxies or proposal yet", "run or resume `opmix pretrain` on it until "
                         "the proposal step is done, then check it")
    if runs < 2:
        raise OpmixError(f"--runs {runs}: a check needs at least 2 runs", "give --runs 2 or more (default 4)")
    cfg = load_config(config, PretrainConfig)
    run = RunDir(run_dir)
    with run.lock():
        ws = open_workspace(run, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed)
        domains, S = ws.domain_names, cfg.train.steps
        steps = cfg.probe_steps if steps is None else int(steps)
        if not 1 <= steps <= S - cfg.prefix_steps:
            raise OpmixError(f"--steps {steps} is outside 1..{S - cfg.prefix_steps} (the final training's length)",
                             "give fewer steps, or none for the probe length")
        schedule = WSDSchedule.from_fractions(S, cfg.train.warmup_fraction, cfg.train.decay_fraction,
                                              cfg.train.final_lr_ratio)
        p = normalize(cfg.method.initial_mixture or uniform(domains), "method.initial_mixture")
        saved = json.loads(proposal_file.read_text())
        components = list(saved["components"])
        laws = laws_from_rows(json.loads((run_dir / "propose" / "laws.json").read_text())["laws"])
        X = _proxy_weights(run_dir / "proxies.csv", components)
        proposed = np.array([saved["components"][c] for c in components])
        points = [proposed] + [X[i] for i in spread_points(X, proposed, runs)]
        prefix = run.path("prefix", "checkpoint")
        rows = []
        for i, x in enumerate(points):
            mixture = expand(dict(zip(components, x)), domains, p if OLD in components else None)
            step = f"check_{steps}_{i}"
            train_full(ws, step, mixture, schedule, end_step=cfg.prefix_steps + steps, start_from=prefix)
            losses = ws.run.step_info(step)["eval_loss"]
            rows.append({"step": step, "components": dict(zip(components, map(float, x))), "mixture": mixture,
                         "predicted": predicted_mean(laws, x), "real": mean_loss(losses), "eval_loss": losses})
        result = {"steps": steps, "runs": rows,
                  **correlations([r["predicted"] for r in rows], [r["real"] for r in rows])}
        result["warning"] = (f"the simulator's ranking departs from real training on this data: Spearman "
                             f"{result['spearman']:+.2f} < {WARN_SPEARMAN}" if not result["spearman"] >= WARN_SPEARMAN
                             else None)
        write_json(run.path("check.json"), result)
    return result


def _proxy_weights(table: Path, components: list[str]) -> np.ndarray:
    import csv

    with open(table, newline="") as f:
        return np.array([[float(row[f"w_{c}"]) for c in components] for row in csv.DictReader(f)])


def format_check(result: dict) -> str:
    lines = [f"fidelity check: {len(result['runs'])} real runs of {result['steps']} steps from the prefix",
             f"  {'run':<4} {'predicted':>10} {'real':>10}  mixture"]
    for i, r in enumerate(result["runs"]):
        mixture = ", ".join(f"{d}={w:.2f}" for d, w in r["mixture"].items())
        lines.append(f"  {i:<4} {r['predicted']:10.4f} {r['real']:10.4f}  {mixture}" + ("  (proposed)" if i == 0 else ""))
    lines.append(f"Spearman {result['spearman']:+.3f}, Pearson {result['pearson']:+.3f}, bias (real - predicted) "
                 f"{result['bias']:+.4f}")
    if result.get("warning"):
        lines.append(f"warning: {result['warning']}")
    return "\n".join(lines)
