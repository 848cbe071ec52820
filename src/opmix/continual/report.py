"""Per-stage records of a continual run, fresh-data accounting, ``summary.json`` and the table the CLI prints.

Step names carry their stage: ``s<k>_<what>`` (``s2_probe_old``, ``s2_proxies``, ``s2_train``, ``s3_grid_r0.50_seed1``
...), so a stage's compute is the sum of the ledger entries named ``s<k>_*``, grouped by what they did.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from opmix.eval import mean_loss
from opmix.run.atomic import write_json

# step-name part -> compute group (SPEC section 6); the grid oracle is the benchmark's cost, not the method's
FLOP_GROUPS = (("_probe_", "probes"), ("_proxies", "proxy_eval"), ("_propose", "fit_propose"), ("_guard_", "guard"),
               ("_grid_", "grid"),
               ("_lora", "lora"), ("_retrain", "train"), ("_train", "train"))
_EPOCH_SLACK = 1e-9


def stage_flops(ledger: Mapping[str, float], stage: int, as_train: frozenset | set = frozenset()) -> dict[str, float]:
    """FLOPs of stage ``stage`` by group; ``total`` leaves out the grid (an oracle, not part of any method).
    Steps in ``as_train`` count as training (the guard's check run that the stage's training continued)."""
    groups = {g: 0.0 for _, g in FLOP_GROUPS}
    for step, flops in ledger.items():
        if not step.startswith(f"s{stage}_"):
            continue
        group = "train" if step in as_train else next((g for part, g in FLOP_GROUPS if part in step), None)
        if group is not None:
            groups[group] += flops
    groups["total"] = sum(v for g, v in groups.items() if g != "grid")
    return groups


def fresh_data(previous: Mapping | None, current: Mapping, seen: Sequence[str]) -> tuple[dict, list[str]]:
    """Sequences' tokens each seen domain supplied this stage, epochs so far, and a warning per repeated domain.

    The sampler draws without replacement within an epoch and its positions carry from stage to stage, so a
    stage's data is fresh (disjoint from every earlier stage's) until a domain passes the end of its first epoch.
    """
    before = (previous or {}).get("tokens_consumed", {})
    consumed, epochs = current.get("tokens_consumed", {}), current.get("epochs", {})
    record = {d: {"tokens": consumed.get(d, 0) - before.get(d, 0), "epochs": epochs.get(d, 0.0)} for d in seen}
    warnings = [f"domain {d!r} ran out of fresh data ({r['epochs']:.2f} epochs so far): this stage repeats some of "
                "its sequences" for d, r in record.items() if r["tokens"] > 0 and r["epochs"] > 1 + _EPOCH_SLACK]
    return record, warnings


def stage_record(ws, stage: int, seen: Sequence[str], step: str, mixture: Mapping[str, float],
                 components: Mapping[str, float] | None = None, warnings: Sequence[str] = (),
                 previous_step: str | None = None, continued: str | None = None, **extra) -> dict:
    """What one stage did: its mixture, per-domain eval loss on the seen domains, FLOPs and fresh data."""
    info = ws.run.step_info(step)
    previous = ws.run.step_info(previous_step) if previous_step else None
    data, repeats = fresh_data(previous, info, seen) if "tokens_consumed" in info else ({}, [])
    losses = {d: info["eval_loss"][d] for d in seen}
    return {
        "stage": stage, "domain": seen[-1], "mixture": {d: mixture.get(d, 0.0) for d in seen},
        "components": dict(components) if components is not None else None,
        "eval_loss": losses, "mean_eval_loss": mean_loss(losses),
        "flops": stage_flops(ws.ledger.totals(), stage, {continued} if continued else frozenset()), "data": data,
        "warnings": [f"stage {stage}: {w}" for w in [*warnings, *repeats]], **extra,
    }


def continual_summary(ws, method: str, stages: list[dict], started: float, repetition: dict | None = None) -> dict:
    """``summary.json``: the final mixture and losses (as the pretraining summary) plus every stage's record;
    ``repetition``: the repetition factor and train tokens (each stage's record holds the caps it used)."""
    last = stages[-1]
    totals = {g: sum(s["flops"][g] for s in stages) for g in stages[0]["flops"]}
    summary = {
        "method": method,
        "domains": [s["domain"] for s in stages],
        "mixture": last["mixture"],
        "eval_loss": last["eval_loss"],
        "mean_eval_loss": last["mean_eval_loss"],
        "flops": totals,
        "elapsed_s": time.perf_counter() - started,
        "warnings": [*ws.notes, *(w for s in stages for w in s["warnings"])],  # notes: e.g. a one-document eval split
        "stages": stages,
        "repetition": repetition,
    }
    write_json(ws.run.path("summary.json"), summary)
    return summary


def format_continual(summary: dict) -> str:
    domains = summary["domains"]
    lines = [f"method: {summary['method']}", "per stage: mixture over the seen domains, eval loss (nats/token)"]
    lines.append("  " + f"{'stage':<6}" + "".join(f"{d[:10]:>11}" for d in domains) + f"{'average':>10}{'FLOPs':>11}")
    unseen = f"{'-':>11}"  # a domain a stage has not reached yet
    lines.append("  (- : domain not seen yet at that stage)")
    for s in summary["stages"]:
        mix = "".join(f"{s['mixture'].get(d, 0.0):11.3f}" if d in s["mixture"] else unseen for d in domains)
        loss = "".join(f"{s['eval_loss'][d]:11.4f}" if d in s["eval_loss"] else unseen for d in domains)
        lines.append(f"  {s['stage']:<6}{mix}")
        lines.append(f"  {'':<6}{loss}{s['mean_eval_loss']:10.4f}{s['flops']['total']:11.3e}")
        guard = s.get("guard") or {}
        if guard.get("checked"):
            lines.append(f"  {'':<6}guard: {'FIRED, ' if guard['fired'] else ''}{guard['reason']}")
        grid = s.get("grid")
        if grid:
            lines.append(f"  {'':<6}grid best r={grid['best_r']:.2f} loss {grid['best_loss']:.4f}; chosen r="
                         f"{grid['chosen_r']:.3f}, regret {100 * grid['regret']:+.2f}%, proxy/real Spearman "
                         f"{grid['fidelity_spearman']:+.2f}")
    lines.append("compute (FLOPs): " + ", ".join(f"{g} {v:.3e}" for g, v in summary["flops"].items() if v))
    lines += [f"warning: {w}" for w in summary["warnings"]]
    lines.append(f"elapsed: {summary['elapsed_s']:.1f} s")
    return "\n".join(lines)
