"""Benchmark tables for continual midtraining, from the ``summary.json`` files of runs of every method on one
domain sequence (the runs themselves: ``benchmarks/bench_continual.py``).

Per stage and method: per-domain eval loss, average loss over the seen domains, regret against the best grid
point of the same stage (grid from OP-Mix's checkpoint: exact for stage 2, where every method starts from the same
stage-1 model; for later stages the reference is the best mixture from OP-Mix's state), forgetting (mean increase of
each old domain's loss since the end of the stage that introduced it), cumulative FLOPs and that as % of
retraining's, and the simulator's fidelity (Spearman between proxy and grid objective, per stage).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

METHOD_ORDER = ("opmix", "sequential", "replay", "fifty", "retrain", "lora-merge", "grid-best")


def method_rows(summary: dict, method: str, grid: dict | None, retrain: dict | None) -> list[dict]:
    """One row per stage for one run's summary (``grid``/``retrain``: the same sequence's grid and retrain runs)."""
    rows, introduced, flops = [], {}, 0.0
    retrain_flops = np.cumsum([s["flops"]["total"] for s in retrain["stages"]]) if retrain else None
    for i, stage in enumerate(summary["stages"]):
        losses = stage["eval_loss"]
        introduced[stage["domain"]] = losses[stage["domain"]]
        old = [d for d in losses if d != stage["domain"]]
        flops += stage["flops"]["total"]
        row = {"method": method, "stage": stage["stage"], "domain": stage["domain"],
               "mean_eval_loss": stage["mean_eval_loss"],
               "forgetting": float(np.mean([losses[d] - introduced[d] for d in old])) if old else 0.0,
               "cumulative_flops": flops,
               "compute_vs_retrain_pct": 100 * flops / retrain_flops[i] if retrain_flops is not None else None,
               **{f"loss_{d}": v for d, v in losses.items()}}
        reference = _grid_of(grid, stage["stage"])
        row["regret_pct"] = (100 * (stage["mean_eval_loss"] - reference["best_loss"]) / reference["best_loss"]
                             if reference else None)
        rows.append(row)
    return rows


def _grid_of(grid: dict | None, stage: int) -> dict | None:
    if grid is None:
        return None
    return next((s["grid"] for s in grid["stages"] if s["stage"] == stage and "grid" in s), None)


def sequence_rows(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Rows for every method run under ``run_dir/<method>/summary.json`` and the grid's per-stage fidelity."""
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("*/summary.json"))}
    grid, retrain = summaries.get("grid"), summaries.get("retrain")
    rows = []
    for name, summary in summaries.items():
        rows += method_rows(summary, "opmix" if name == "grid" else name, grid, retrain)
    fidelity = []
    for stage in (grid or {}).get("stages", []):
        if "grid" in stage:
            g = stage["grid"]
            fidelity.append({"stage": stage["stage"], "spearman": g["fidelity_spearman"], "best_r": g["best_r"],
                             "chosen_r": g["chosen_r"], "regret_pct": 100 * g["regret"],
                             "grid_seed_std": float(np.mean(g["seed_std"]))})
            rows.append({"method": "grid-best", "stage": stage["stage"], "domain": stage["domain"],
                         "mean_eval_loss": g["best_loss"], "regret_pct": 0.0})
    for row in rows + fidelity:
        row["sequence"] = run_dir.name
    return rows, fidelity


def write_tables(root: Path, sequences: list[Path]) -> str:
    """``continual_bench.csv``, ``continual_fidelity.csv`` and ``continual_bench.md`` under ``root``."""
    rows, fidelity = [], []
    for sequence in sequences:
        r, f = sequence_rows(sequence)
        rows += r
        fidelity += f
    _write_csv(root / "continual_bench.csv", rows)
    _write_csv(root / "continual_fidelity.csv", fidelity)
    markdown = _markdown(rows, fidelity, len(sequences))
    (root / "continual_bench.md").write_text(markdown)
    return markdown


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _markdown(rows: list[dict], fidelity: list[dict], n_sequences: int) -> str:
    lines = [f"# Continual midtraining benchmark ({n_sequences} sequence/seed runs, means over them)", "",
             "| stage | method | avg loss | regret vs grid best % | forgetting | cumulative FLOPs | % of retrain |",
             "|---|---|---|---|---|---|---|"]
    stages = sorted({r["stage"] for r in rows})
    for stage in stages:
        for method in METHOD_ORDER:
            sel = [r for r in rows if r["stage"] == stage and r["method"] == method]
            if not sel:
                continue
            lines.append(f"| {stage} | {method} | {_fmt(_mean(r['mean_eval_loss'] for r in sel), '.4f')} | "
                         f"{_fmt(_mean(r.get('regret_pct') for r in sel), '+.2f')} | "
                         f"{_fmt(_mean(r.get('forgetting') for r in sel), '+.4f')} | "
                         f"{_fmt(_mean(r.get('cumulative_flops') for r in sel), '.3e')} | "
                         f"{_fmt(_mean(r.get('compute_vs_retrain_pct') for r in sel), '.1f')} |")
    lines += ["", "## Simulator fidelity and OP-Mix's choice, per stage and run", "",
              "| run | stage | Spearman(proxy, grid) | grid best r | OP-Mix r | regret % | grid seed std |",
              "|---|---|---|---|---|---|---|"]
    for f in fidelity:
        lines.append(f"| {f['sequence']} | {f['stage']} | {f['spearman']:+.2f} | {f['best_r']:.1f} | "
                     f"{f['chosen_r']:.3f} | {f['regret_pct']:+.2f} | {f['grid_seed_std']:.4f} |")
    return "\n".join(lines) + "\n"
