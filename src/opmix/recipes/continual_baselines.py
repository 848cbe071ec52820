"""Continual-midtraining baselines (SPEC section 4), each under OP-Mix's per-stage budget of ``train.steps`` steps.

    sequential: 100% new data at every stage.          replay: 90% new + 10% old, the old part split by p.
    fifty:      50% new + 50% old, split by p.         (stage 1 of all three: 100% D1, as OP-Mix's stage 1)
    retrain:    at stage k, from the starting model, k stages' worth of steps (all the data seen so far) on
                the seen domains, uniform (or by size); its own WSD schedule over those k*S steps.
    lora-merge: at every stage a LoRA (OP-Mix's probe settings) trained for S steps on 100% new data from the
                current model, then theta <- theta + scale * Delta instead of full training.

Every baseline's mixtures are fixed in advance, so before any training each is checked against the repetition
factor k (``opmix.repetition``): the stages of sequential / replay / fifty consume one run's data cumulatively,
each retrain model and each LoRA its own. Past k N_d a run is refused, unless ``data.allow_repetition``.
"""

from __future__ import annotations

import time

from opmix.config.continual import ContinualConfig
from opmix.continual.report import continual_summary, stage_record
from opmix.continual.segment import stage_mixture
from opmix.continual.training import (
    FixedStages,
    StageSchedule,
    merge_lora,
    start_checkpoint,
)
from opmix.domains import normalize, uniform
from opmix.repetition import Repetition, plan, tokens_per_step
from opmix.report import export_model
from opmix.run.rundir import RunDir
from opmix.stages import train_full, train_probe
from opmix.workspace import open_workspace


def planned_steps(cfg: ContinualConfig) -> list[str]:
    """The run's steps in order, for ``opmix status``."""
    K = len(cfg.domain_names)
    if cfg.run == "retrain":
        steps = ["s1_train", *(f"s{k}_retrain" for k in range(2, K + 1))]
    elif cfg.run == "lora-merge":
        steps = [step for k in range(1, K + 1) for step in (f"s{k}_lora", f"s{k}_merge")]
    else:
        steps = [f"s{k}_train" for k in range(1, K + 1)]
    return [*steps, "export_final_model"]


def run(cfg: ContinualConfig, run_dir: RunDir) -> dict:
    started = time.perf_counter()
    run_dir.save_config(cfg.model_dump(mode="json"))  # a resumed run must use the same settings
    ws = open_workspace(run_dir, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed,
                        cfg.method.probe_cache)
    _check_repetition(cfg, ws)  # before any training
    if cfg.run == "retrain":
        stages, checkpoint = _retrain(cfg, ws)
    elif cfg.run == "lora-merge":
        stages, checkpoint = _lora_merge(cfg, ws)
    else:
        stages, checkpoint = fixed_fraction_stages(cfg, ws, _new_fraction(cfg))
    export_model(ws, checkpoint, ws.run.path("final", "model"))
    return continual_summary(ws, cfg.run, stages, started)


def _check_repetition(cfg: ContinualConfig, ws) -> None:
    """Each stage's planned consumption (weights x tokens) against k N_d, for the baseline ``cfg.run``."""
    repetition = Repetition.of(ws, cfg.method.proposer.repetition_factor, cfg.data.allow_repetition)
    order, R, b = cfg.domain_names, cfg.train.steps * tokens_per_step(ws, cfg.data.seq_len), cfg.baselines
    if cfg.run == "retrain":  # at stage k, a model from scratch on k stages' worth of steps
        for k in range(1, len(order) + 1):
            seen = order[:k]
            w = (normalize({d: ws.domains[d].train_tokens for d in seen}, "retrain mixture")
                 if b.retrain_mixture == "natural" else uniform(seen))
            repetition.check(f"the retrain baseline's model of stage {k}", {}, w, k * R)
        return
    if cfg.run == "lora-merge":  # every stage's LoRA draws S steps of its own domain, with its own sampler
        for k, domain in enumerate(order, start=1):
            repetition.check(f"the LoRA of stage {k} of the lora-merge baseline ({domain} alone)", {}, {domain: 1.0}, R)
        return
    fraction = _new_fraction(cfg)
    p, used = {order[0]: 1.0}, {}
    repetition.check(f"stage 1 of the {cfg.run} baseline (100% of {order[0]})", used, p, R)
    for k in range(2, len(order) + 1):  # one run: the stages' consumption adds up
        used = plan(used, p, R)
        p = stage_mixture(fraction, p, order[k - 1], order[:k])
        repetition.check(f"stage {k} of the {cfg.run} baseline", used, p, R)


def _new_fraction(cfg: ContinualConfig) -> float:
    b = cfg.baselines
    return {"sequential": 1.0, "replay": b.replay_new_fraction, "fifty": b.fifty_new_fraction}[cfg.run]


def _schedule(cfg, start: int, steps: int) -> StageSchedule:
    t = cfg.train
    return StageSchedule.for_stage(start, steps, t.warmup_fraction, t.decay_fraction, t.final_lr_ratio)


def fixed_fraction_stages(cfg, ws, new_fraction: float, budget=None):
    """A fixed new-data fraction: w = (1 - f) p + f e_k, continuing the previous stage; p <- w. Each stage lasts
    ``budget.steps`` (default: ``train.steps``; instruction tuning: one epoch of the new task)."""
    order = cfg.domain_names
    budget = budget if budget is not None else FixedStages(cfg.train.steps, cfg.train.steps)
    p, end = {order[0]: 1.0}, 0
    schedule = _schedule(cfg, end, budget.steps(1, p, order[0]))
    checkpoint = train_full(ws, "s1_train", p, schedule, end_step=schedule.end)
    stages, end = [stage_record(ws, 1, order[:1], "s1_train", p)], schedule.end
    for k in range(2, len(order) + 1):
        seen = order[:k]
        w = stage_mixture(new_fraction, p, order[k - 1], seen)
        schedule = _schedule(cfg, end, budget.steps(k, w, order[k - 1]))
        checkpoint = train_full(ws, f"s{k}_train", w, schedule, end_step=schedule.end, start_from=checkpoint)
        stages.append(stage_record(ws, k, seen, f"s{k}_train", w, previous_step=f"s{k - 1}_train"))
        p, end = w, schedule.end
    return stages, checkpoint


def _retrain(cfg: ContinualConfig, ws):
    """From the starting model at every stage: k*S steps on the union of D1..Dk (stage 1 is OP-Mix's stage 1)."""
    order, S = cfg.domain_names, cfg.train.steps
    stages = []
    for k in range(1, len(order) + 1):
        seen = order[:k]
        if cfg.baselines.retrain_mixture == "natural":
            w = normalize({d: ws.domains[d].train_tokens for d in seen}, "retrain mixture")
        else:
            w = uniform(seen)
        step = "s1_train" if k == 1 else f"s{k}_retrain"  # stage 1 is the same run as every method's
        checkpoint = train_full(ws, step, w, _schedule(cfg, 0, k * S), end_step=k * S)
        stages.append(stage_record(ws, k, seen, step, w, retrain_steps=k * S))
    return stages, checkpoint


def _lora_merge(cfg: ContinualConfig, ws):
    """Every stage: a LoRA on 100% D_k from the current model, merged into it with ``lora_merge_scale``."""
    order, S, m = cfg.domain_names, cfg.train.steps, cfg.method
    checkpoint = start_checkpoint(ws)
    stages = []
    for k in range(1, len(order) + 1):
        seen, w = order[:k], {order[k - 1]: 1.0}
        adapter = train_probe(ws, f"s{k}_lora", checkpoint, w, S, lr=m.probe_lr_multiplier * cfg.train.lr,
                              decay_fraction=cfg.train.decay_fraction, lora=m.lora.model_dump(),
                              sampler_offset=1000 * k + 7)
        checkpoint = merge_lora(ws, f"s{k}_merge", checkpoint, adapter, cfg.baselines.lora_merge_scale)
        stages.append(stage_record(ws, k, seen, f"s{k}_merge", w))
    return stages, checkpoint
