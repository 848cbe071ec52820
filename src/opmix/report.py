"""Run outputs for people: the exported final model, ``summary.json``, and the table the CLI prints."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from opmix.eval import mean_loss
from opmix.run.atomic import atomic_dir, write_json
from opmix.stages import load_weights

STAGE_GROUPS = {"prefix": "prefix", "probe_": "probes", "proxies": "proxy_eval", "propose": "fit_propose",
                "final": "final", "erm": "final"}


def export_model(ws, checkpoint: Path, directory: Path) -> None:
    """The trained model as a Hugging Face directory (safetensors + tokenizer) that any HF code can load.

    A step of its own (``export_<path>``): redone unless its marker's files all verify."""
    directory = Path(directory)
    try:
        parts = directory.resolve().relative_to(ws.run.root).parts
    except ValueError:  # outside the run directory
        parts = (directory.name,)
    step = "export_" + "_".join(parts)
    if ws.run.is_done(step):
        return
    if ws.accelerator.is_main_process:  # one writer: data-parallel ranks would race to the same folder
        model = load_weights(ws, checkpoint)
        with atomic_dir(directory) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            ws.tokenizer.save_pretrained(tmp)
    ws.accelerator.wait_for_everyone()
    ws.run.mark_done(step, [directory])


def stage_flops(ledger: Mapping[str, float], include: set[str]) -> dict[str, float]:
    """Ledger entries grouped into SPEC section 6's stages, for the steps named in ``include``."""
    grouped = {"prefix": 0.0, "probes": 0.0, "proxy_eval": 0.0, "fit_propose": 0.0, "final": 0.0}
    for step, flops in ledger.items():
        if step not in include:
            continue
        group = next(g for prefix, g in STAGE_GROUPS.items() if step.startswith(prefix))
        grouped[group] += flops
    grouped["total"] = sum(grouped.values())
    return grouped


def run_summary(ws, mixture, proposal, final_step: str, baseline_step: str | None, prefix_mixture,
                started: float) -> dict:
    flops = ws.ledger.totals()
    ours = {s for s in flops if s != "total" and s != baseline_step}
    final_info = ws.run.step_info(final_step)
    summary = {
        "mixture": mixture,
        "components": proposal.components,
        "eval_loss": final_info["eval_loss"],
        "mean_eval_loss": mean_loss(final_info["eval_loss"]),
        "flops": stage_flops(flops, ours),
        "elapsed_s": time.perf_counter() - started,
        "tokens_consumed": final_info["tokens_consumed"],
        "epochs": final_info["epochs"],
        "warnings": proposal.warnings,
        "laws": proposal.laws,
    }
    if baseline_step is not None:
        info = ws.run.step_info(baseline_step)
        summary["baseline"] = {
            "name": baseline_step,
            "mixture": prefix_mixture,
            "eval_loss": info["eval_loss"],
            "mean_eval_loss": mean_loss(info["eval_loss"]),
            "flops": stage_flops(flops, {"prefix", baseline_step}),
            "elapsed_s": ws.ledger.as_dict().get(baseline_step, {}).get("seconds", 0.0),
        }
    write_json(ws.run.path("summary.json"), summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = ["proposed mixture:"]
    lines += [f"  {d:<12} {w:6.3f}" for d, w in summary["mixture"].items()]
    header = f"  {'domain':<12} {'OP-Mix':>8}"
    baseline = summary.get("baseline")
    if baseline:
        header += f" {'ERM':>8} {'change':>8}"
    lines += ["eval loss (nats/token) at equal final-training tokens:", header]
    for domain, loss in summary["eval_loss"].items():
        row = f"  {domain:<12} {loss:8.4f}"
        if baseline:
            other = baseline["eval_loss"][domain]
            row += f" {other:8.4f} {100 * (loss - other) / other:+7.2f}%"
        lines.append(row)
    row = f"  {'average':<12} {summary['mean_eval_loss']:8.4f}"
    if baseline:
        other = baseline["mean_eval_loss"]
        row += f" {other:8.4f} {100 * (summary['mean_eval_loss'] - other) / other:+7.2f}%"
    lines.append(row)
    lines.append("compute (FLOPs):")
    lines += [f"  {stage:<12} {value:10.3e}" for stage, value in summary["flops"].items()]
    if baseline:
        lines.append(f"  {'ERM total':<12} {baseline['flops']['total']:10.3e}")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    lines.append(f"elapsed: {summary['elapsed_s']:.1f} s")
    return "\n".join(lines)
