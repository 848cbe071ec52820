"""Run outputs for people: the exported final model, ``summary.json``, and the table the CLI prints."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from opmix.eval import mean_loss
from opmix.run.atomic import atomic_dir, write_json
from opmix.stages import load_weights

STAGE_GROUPS = {"prefix": "prefix", "start": "prefix", "probe_": "probes", "proxies": "proxy_eval",
                "propose": "fit_propose",
                "guard_": "guard", "final": "final", "erm": "final", "natural": "final",
                "swarm_": "swarm_search", "mergemix_": "mergemix_search"}
BASELINE_NAMES = {"erm": "ERM", "natural": "natural", "swarm": "Swarm", "mergemix": "MergeMix"}


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


def stage_flops(ledger: Mapping[str, float], include: set[str], as_final: set[str] = frozenset()) -> dict[str, float]:
    """Ledger entries grouped into SPEC section 6's stages, for the steps named in ``include``; steps in
    ``as_final`` count as final training (a guard check run that the final training continued). A baseline's search
    group (``swarm_search``, ``mergemix_search``) appears only when one of its steps is included."""
    grouped = {"prefix": 0.0, "probes": 0.0, "proxy_eval": 0.0, "fit_propose": 0.0, "guard": 0.0, "final": 0.0}
    for step, flops in ledger.items():
        if step not in include:
            continue
        group = "final" if step in as_final else next(g for prefix, g in STAGE_GROUPS.items() if step.startswith(prefix))
        grouped[group] = grouped.get(group, 0.0) + flops
    grouped["total"] = sum(grouped.values())
    return grouped


def run_summary(ws, mixture, proposal, guard, final_step: str, baselines: Mapping[str, dict], started: float,
                repetition: dict | None = None) -> dict:
    """``summary.json``. OP-Mix's compute is every step but the baselines' own; the guard's check run that the
    final training continued counts as final training, the other one as the guard's cost.

    ``tokens_consumed`` and ``epochs`` are those of the final model's whole run (prefix, the guard's check run it
    continued, and the final training), over all processes; ``repetition`` (``opmix.repetition.Repetition.record``)
    holds the repetition factor and the caps the proposer used.

    A baseline is ``{"mixture", "steps", "result_step"}`` and optionally ``"search_steps"``: its FLOPs are those of
    ``steps``, the search steps grouped as such and the others (the prefix aside) as final training. Its own steps,
    not OP-Mix's, are the one named like it and those named ``<name>_...``."""
    flops = ws.ledger.totals()
    baseline_only = {step for name, b in baselines.items() for step in b["steps"]
                     if step == name or step.startswith(name + "_")}
    ours = {s for s in flops if s != "total" and s not in baseline_only}
    continued = {guard.record["continued_step"]} if guard.record.get("checked") else set()
    final_info = ws.run.step_info(final_step)
    summary = {
        "mixture": mixture,
        "components": proposal.components,
        "eval_loss": final_info["eval_loss"],
        "mean_eval_loss": mean_loss(final_info["eval_loss"]),
        "flops": stage_flops(flops, ours, continued),
        "elapsed_s": time.perf_counter() - started,
        "tokens_consumed": final_info.get("tokens_consumed_total", final_info["tokens_consumed"]),
        "epochs": final_info.get("epochs_total", final_info["epochs"]),
        "repetition": repetition,
        "guard": guard.record,
        "warnings": [*ws.notes, *proposal.warnings, *guard.warnings],
        "laws": proposal.laws,
        "baselines": {},
    }
    summary["model"] = str(Path(final_step) / "model")
    for name, b in baselines.items():
        info = ws.run.step_info(b["result_step"])
        model = Path(b["result_step"]) / "model"  # evaluate a baseline's model the same way as the final one
        export_model(ws, ws.run.path(b["result_step"], "checkpoint"), ws.run.path(model))
        seconds = ws.ledger.as_dict()
        summary["baselines"][name] = {
            "name": name,
            "mixture": b["mixture"],
            "model": str(model),
            "eval_loss": info["eval_loss"],
            "mean_eval_loss": mean_loss(info["eval_loss"]),
            "flops": stage_flops(flops, set(b["steps"]), set(b["steps"]) - {"prefix", *b.get("search_steps", ())}),
            "elapsed_s": sum(seconds.get(step, {}).get("seconds", 0.0) for step in b["steps"] if step != "prefix"),
        }
    if summary["baselines"]:  # the first baseline, under the key earlier versions wrote
        summary["baseline"] = next(iter(summary["baselines"].values()))
    write_json(ws.run.path("summary.json"), summary)
    return summary


def format_summary(summary: dict) -> str:
    kept_safe = summary.get("guard", {}).get("chosen") == "safe"
    lines = ["mixture (the guard kept the safe mixture; see below):" if kept_safe else "proposed mixture:"]
    lines += [f"  {d:<12} {w:6.3f}" for d, w in summary["mixture"].items()]
    baselines = list(summary.get("baselines", {}).values())
    header = f"  {'domain':<12} {'OP-Mix':>8}" + "".join(
        f" {BASELINE_NAMES.get(b['name'], b['name']):>8} {'change':>8}" for b in baselines)
    lines += ["eval loss (nats/token) at equal final-training tokens; change = OP-Mix against the baseline:", header]
    rows = [(domain, loss, [b["eval_loss"][domain] for b in baselines]) for domain, loss in summary["eval_loss"].items()]
    rows.append(("average", summary["mean_eval_loss"], [b["mean_eval_loss"] for b in baselines]))
    for domain, loss, others in rows:
        lines.append(f"  {domain:<12} {loss:8.4f}" + "".join(
            f" {other:8.4f} {100 * (loss - other) / other:+7.2f}%" for other in others))
    guard = summary.get("guard")
    if guard:
        lines.append(f"guard: {guard['reason']}")
    lines.append("compute (FLOPs):")
    lines += [f"  {stage:<12} {value:10.3e}" for stage, value in summary["flops"].items()]
    for b in baselines:
        lines.append(f"  {BASELINE_NAMES.get(b['name'], b['name']) + ' total':<12} {b['flops']['total']:10.3e}")
        for group in ("swarm_search", "mergemix_search"):
            if group in b["flops"]:
                lines.append(f"  {'  of which search':<12} {b['flops'][group]:10.3e}")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    lines.append(f"elapsed: {summary['elapsed_s']:.1f} s")
    return "\n".join(lines)
