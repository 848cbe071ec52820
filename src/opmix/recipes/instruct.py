"""OP-Mix for continual instruction tuning (SPEC section 3, "Continual instruction tuning"), and its baselines.

    Stage 1: learn T1 (one epoch), from the start model.
    Stage k >= 2: as continual midtraining (``opmix.recipes.continual.run_stages``), with the run's learner (SFT or
      on-policy self-distillation) for the probes and the full training, and each seen task's error rate (1 -
      accuracy under its scorer) as the metric the laws are fitted on (or the gold responses' cross-entropy);
      the stage then learns T_k once (one epoch), each old task sampled in proportion to its weight relative to
      T_k's: ceil(n_k / (w_k B)) steps (``opmix.instruct.budget``).
    Baselines: ``sequential`` (100% new task: with SDFT, on-policy distillation without OP-Mix, SPEC section 4),
    ``replay`` (90% new, 10% old by p), ``grid`` (OP-Mix plus real runs at fixed new-task fractions).

Decided: no guard (a stage's length depends on its mixture) and no repetition caps (old tasks are replayed by
design); both settings are refused in the config.
"""

from __future__ import annotations

import time

import numpy as np

from opmix.config.instruct import InstructConfig
from opmix.continual.report import continual_summary
from opmix.instruct.budget import OneEpochOfNewTask
from opmix.instruct.workspace import open_instruct_workspace
from opmix.recipes.continual import run_stages
from opmix.recipes.continual_baselines import fixed_fraction_stages
from opmix.repetition import Repetition
from opmix.report import export_model
from opmix.run.atomic import write_json
from opmix.run.rundir import RunDir


def planned_steps(cfg: InstructConfig) -> list[str]:
    """The run's steps in order, for ``opmix status`` (grid runs not listed)."""
    steps = ["s1_train"]
    for k in range(2, len(cfg.tasks) + 1):
        if cfg.run in ("opmix", "grid"):
            steps += [f"s{k}_probe_old", f"s{k}_probe_new", f"s{k}_proxies", f"s{k}_propose"]
        steps.append(f"s{k}_train")
    return [*steps, "export_final_model"]


def run(cfg: InstructConfig, run_dir: RunDir) -> dict:
    started = time.perf_counter()
    run_dir.save_config(cfg.model_dump(mode="json"))  # a resumed run must use the same settings
    ws, tasks = open_instruct_workspace(run_dir, cfg)
    budget = OneEpochOfNewTask({name: len(task.train) for name, task in tasks.items()},
                               cfg.train.batch_size * ws.accelerator.num_processes,
                               cfg.method.probe_fraction, cfg.method.max_probe_steps, cfg.method.epochs_per_stage)
    if cfg.run in ("opmix", "grid"):
        repetition = Repetition.of(ws, None, True)  # no caps: old tasks are replayed by design
        stages, checkpoint = run_stages(cfg, ws, budget, repetition, stage_tokens=1.0)
    else:
        fraction = 1.0 if cfg.run == "sequential" else cfg.baselines.replay_new_fraction
        stages, checkpoint = fixed_fraction_stages(cfg, ws, fraction, budget)
    export_model(ws, checkpoint, ws.run.path("final", "model"))
    for stage in stages:
        add_task_figures(ws, stage)
    summary = continual_summary(ws, f"{cfg.run} ({cfg.learner})", stages, started)
    last = stages[-1]
    summary.update({
        "recipe": "instruct", "learner": cfg.learner, "metric": cfg.method.metric,
        "accuracy": last["accuracy"], "mean_accuracy": last["mean_accuracy"],
        "forgetting": {t: stages[i]["accuracy"][t] - last["accuracy"][t] for i, t in enumerate(cfg.domain_names)},
        "flops_by_kind": flops_by_kind(ws.ledger.as_dict()),
    })
    write_json(ws.run.path("summary.json"), summary)
    return summary


def flops_by_kind(ledger: dict) -> dict[str, float]:
    """The method's compute by kind (SPEC section 6): training, generation and the teacher's forward passes of
    self-distillation, evaluation of the proxies (prompts and generated answers), fitting and proposing. The
    grid's runs are the benchmark's, not the method's."""
    kinds = {"train": 0.0, "generation": 0.0, "teacher": 0.0, "proxy_eval": 0.0, "fit_propose": 0.0}
    for step, entry in ledger.items():
        if step == "total" or "_grid_" in step:
            continue
        if "kinds" in entry:
            for kind, flops in entry["kinds"].items():
                kinds[kind] = kinds.get(kind, 0.0) + flops
        else:
            searched = {"_proxies": "proxy_eval", "_propose": "fit_propose"}
            kinds[next((k for end, k in searched.items() if step.endswith(end)), "train")] += entry["flops"]
    return kinds


def add_task_figures(ws, stage: dict) -> None:
    """A stage record's accuracy and error rate per seen task, from its training step; its warnings for tasks."""
    # Replaying old tasks is the point of a stage here, so "ran out of fresh data" says nothing a user must act on.
    stage["warnings"] = [w for w in stage["warnings"] if "ran out of fresh data" not in w]
    proxies = np.asarray((stage.get("proxies") or {}).get("eval_loss", []), dtype=float)
    if proxies.ndim == 2 and len(proxies) > 1:
        flat = [t for t, column in zip(stage["eval_loss"], proxies.T) if np.ptp(column) == 0]
        if flat:
            stage["warnings"].append(
                f"stage {stage['stage']}: the proxies' metric did not vary on {flat} (every proxy scored the same), so "
                "their laws carry no signal; with small eval sets or near-0/1 accuracy, fit on the responses' "
                "cross-entropy instead (method.metric: loss) or add eval examples")
    step = f"s{stage['stage']}_train"
    measures = ws.run.step_info(step).get("measures", {})
    seen = list(stage["eval_loss"])
    stage["accuracy"] = {t: measures[t]["accuracy"] for t in seen if t in measures}
    stage["error_rate"] = {t: measures[t]["error_rate"] for t in seen if t in measures}
    stage["mean_accuracy"] = sum(stage["accuracy"].values()) / max(len(stage["accuracy"]), 1)
