"""OP-Mix for continual midtraining (SPEC section 3, "Continual midtraining"); with ``run: grid``, also the grid
oracle from the same checkpoint at every stage (SPEC section 4).

    Stage 1: train on 100% D1.
    Stage k >= 2 (p = stage k-1's mixture over D1..Dk-1):
      - two probes from the current checkpoint: old probe on 0.9*p + 0.1*Dk, new probe on 0.1*p + 0.9*Dk.
      - 9 proxies on the segment between them: theta_0 + (1-a)*Delta_old + a*Delta_new, a in {0, 1/8, ..., 1};
        the regression coordinate is the effective new-data fraction r = 0.1 + 0.8a (old = 1 - r), not a.
      - laws on the eval splits of D1..Dk; prior q: Dk = 0.5, each old domain d = 0.5 * p[d]; lambda = 0.05.
      - guard (SPEC section 8): short real runs on w and on the prior's mixture; the better one is kept.
      - full training for the stage budget on w = x_old*p + x_new*e_k; then p <- w for the next stage.
      - each stage draws fresh (disjoint) data from every domain where the data allows.

Repetition (``opmix.repetition``; decided: caps apply at every stage rather than the setting being refused, since
every stage's marker records the tokens of each domain its run consumed so far): with k =
``method.proposer.repetition_factor``, stage k's proposer bounds the stage's domain weights
``w_d = (M x)_d <= (k N_d - U_d) / R_stage``, U_d the tokens of d stages 1..k-1 consumed (cumulative in the marker
of s<k-1>_train: the model's whole run so far) and R_stage the tokens of one stage (all processes). Before any
training the recipe checks that stage 1 (100% D1) stays within k N_1 and that every stage's caps can sum to 1
(j stages of tokens fit in k times the data of D1..Dj); at every stage the guard's safe mixture and the mixture
finally trained are checked before they are trained. Past k a run is refused, unless ``data.allow_repetition``.
The grid oracle (``run: grid``) trains its fixed fractions unchecked: it measures, it does not choose.
"""

from __future__ import annotations

import time
from pathlib import Path

from opmix.config.continual import ContinualConfig
from opmix.continual.grid import grid_report, sweep_grid
from opmix.continual.report import continual_summary, stage_record
from opmix.continual.segment import (
    continual_prior,
    effective_new_fraction,
    law_coordinates,
    probe_mixtures,
    proxy_weights,
    segment_points,
    stage_expansion,
    stage_mixture,
)
from opmix.continual.training import FixedStages, StageSchedule
from opmix.diagnostics import segment_warnings
from opmix.domains import OLD
from opmix.errors import OpmixError
from opmix.guard import PROPOSAL, SAFE, guard_proposal, predicted_mean
from opmix.law import laws_from_rows
from opmix.repetition import Repetition, consumed, tokens_per_step
from opmix.report import export_model
from opmix.run.rundir import RunDir
from opmix.search import propose_mixture
from opmix.stages import ProbeJob, evaluate_proxies, train_full, train_probes
from opmix.workspace import open_workspace


def planned_steps(cfg: ContinualConfig) -> list[str]:
    """The run's steps in order, for ``opmix status`` (the guard's runs are conditional; grid runs not listed)."""
    steps = ["s1_train"]
    for k in range(2, len(cfg.domain_names) + 1):
        steps += [f"s{k}_probe_old", f"s{k}_probe_new", f"s{k}_proxies", f"s{k}_propose"]
        steps += [f"s{k}_guard_proposal", f"s{k}_guard_safe"] if cfg.method.guard.enabled else []
        steps.append(f"s{k}_train")
    return [*steps, "export_final_model"]


def run(cfg: ContinualConfig, run_dir: RunDir) -> dict:
    started = time.perf_counter()
    run_dir.save_config(cfg.model_dump(mode="json"))  # a resumed run must use the same settings
    ws = open_workspace(run_dir, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed,
                        cfg.method.probe_cache)
    budget = FixedStages(cfg.train.steps, cfg.probe_steps)
    repetition = Repetition.of(ws, cfg.method.proposer.repetition_factor, cfg.data.allow_repetition)
    stage_tokens = cfg.train.steps * tokens_per_step(ws, cfg.data.seq_len)  # R of one stage, all processes
    check_stages(repetition, cfg.domain_names, stage_tokens)  # before any training
    stages, checkpoint = run_stages(cfg, ws, budget, repetition, stage_tokens)
    export_model(ws, checkpoint, ws.run.path("final", "model"))
    return continual_summary(ws, cfg.run, stages, started, repetition=repetition.record())


def run_stages(cfg, ws, budget, repetition: Repetition, stage_tokens: float) -> tuple[list[dict], Path]:
    """The stage loop, shared with continual instruction tuning (``opmix.recipes.instruct``: tasks for domains,
    its learner and metric in ``ws``, its stage lengths in ``budget``). Returns the stage records and the last
    checkpoint."""
    method, order, t = cfg.method, cfg.domain_names, cfg.train
    a = segment_points(method.n_proxies)
    r = effective_new_fraction(a, method.old_probe_share, method.new_probe_share)  # 0.1 + 0.8a
    ends = [0]  # global step at the end of each stage: stage k runs ends[k-1] .. ends[k]

    def schedule(k: int, mixture) -> StageSchedule:  # stage k's own WSD schedule over its global steps
        steps = budget.steps(k, mixture, order[k - 1])
        return StageSchedule.for_stage(ends[k - 1], steps, t.warmup_fraction, t.decay_fraction, t.final_lr_ratio)

    # Stage 1: 100% D1, from the starting model.
    p = {order[0]: 1.0}
    first = schedule(1, p)
    checkpoint = train_full(ws, "s1_train", p, first, end_step=first.end)
    ends.append(first.end)
    stages = [stage_record(ws, 1, order[:1], "s1_train", p)]

    for k in range(2, len(order) + 1):
        new, seen = order[k - 1], order[: k]

        # 1. Probes from the current checkpoint: old on 0.9p + 0.1Dk, new on 0.1p + 0.9Dk; 2x rate, no warmup.
        data = probe_mixtures(p, new, method.old_probe_share, method.new_probe_share)
        adapters = train_probes(ws, [
            ProbeJob(f"s{k}_probe_{name}", checkpoint, data[c], budget.probe_steps(k, new),
                     lr=method.probe_lr_multiplier * t.lr, decay_fraction=method.probe_decay_fraction,
                     lora=method.lora.model_dump(), sampler_offset=1000 * k + i)
            for i, (name, c) in enumerate([("old", OLD), ("new", new)])
        ])

        # 2. Proxies theta_0 + (1-a) Delta_old + a Delta_new, measured on the eval split of every seen domain.
        Y = evaluate_proxies(ws, f"s{k}_proxies", checkpoint, adapters, ["probe_old", "probe_new"],
                             proxy_weights(a), table=ws.run.path(f"s{k}_proxies", "proxies.csv"),
                             eval_domains=seen)
        # Y: (P, k) metric (eval loss, or an instruction task's error rate) on the seen domains D1..Dk

        # 3-4. Laws on the effective fraction r, expanded prior, proposer: x = [x_old, x_new], the stage's domain
        #      weights M x under the caps (k N_d - U_d) / R_stage.
        used = consumed(ws.run.step_info(f"s{k - 1}_train"))  # the whole run so far: stages 1..k-1
        try:
            caps = repetition.caps(seen, used, stage_tokens)
            proposal = propose_mixture(
                ws.run, f"s{k}_propose", law_coordinates(r), Y, [OLD, new], seen,
                own_components=[0] * (k - 1) + [1], prior=continual_prior(p, new, seen, method.prior_new_weight),
                expansion=stage_expansion(p, new, seen), kl_weight=method.proposer.kl_weight, caps=caps,
                law_settings=method.law.model_dump(), solver=method.proposer.solver, seed=cfg.seed,
                ledger=ws.ledger, to_domains=lambda components: stage_mixture(components[new], p, new, seen),
            )
        except OpmixError as error:
            raise OpmixError(f"stage {k} ({new}): {error.problem}", error.fix) from None
        x_new = proposal.components[new]
        w = stage_mixture(x_new, p, new, seen)
        warnings = proposal.warnings + segment_warnings(r, Y, seen)

        # Guard (SPEC section 8): short real runs of this stage on w and on the prior's mixture (50/50 by default);
        # the stage continues the winner. Its runs share the stage's schedule: only for stages of fixed length.
        r_safe, laws = method.prior_new_weight, laws_from_rows(proposal.laws)
        safe = stage_mixture(r_safe, p, new, seen)
        if method.guard.enabled:
            repetition.check(f"stage {k}'s safe mixture (the prior's, {r_safe:g} new data), which the stage falls "
                             "back to when the guard fires", used, safe, stage_tokens)
        stage = schedule(k, w)
        guard = guard_proposal(
            ws, f"s{k}_", checkpoint, w, safe, stage, stage.start, stage.end, seen,
            predicted={PROPOSAL: predicted_mean(laws, [1 - x_new, x_new]),
                       SAFE: predicted_mean(laws, [1 - r_safe, r_safe])},
            law_warnings=warnings, settings=method.guard, check_favours_proposal=x_new > r_safe,
        )
        chosen_r = x_new if guard.record["chosen"] == PROPOSAL else r_safe

        # Grid oracle (run: grid): full training at r = 0.1 ... 0.9 from this same checkpoint.
        grid = None
        if cfg.run == "grid":
            b = cfg.baselines
            grid = sweep_grid(ws, k, checkpoint, p, new, seen, b.grid, b.grid_seeds, lambda m: schedule(k, m))

        # 5. Full training for the stage budget on the chosen mixture, continuing the previous stage (weights,
        #    optimizer, data) through the guard's run of that mixture.
        w = guard.mixture
        stage = schedule(k, w)
        repetition.check(f"stage {k}'s mixture", used, w, stage_tokens)
        checkpoint = train_full(ws, f"s{k}_train", w, stage, end_step=stage.end, start_from=guard.start_from)
        ends.append(stage.end)
        record = stage_record(ws, k, seen, f"s{k}_train", w, {OLD: 1 - chosen_r, new: chosen_r},
                              warnings + guard.warnings, previous_step=f"s{k - 1}_train",
                              continued=guard.record.get("continued_step"),
                              proxies={"r": r.tolist(), "eval_loss": Y.tolist()}, proposed_r=x_new,
                              guard=guard.record, caps=None if caps is None else dict(zip(seen, caps.tolist())))
        if grid is not None:
            record["grid"] = grid_report(grid, chosen_r, record["mean_eval_loss"], r, Y)
        stages.append(record)
        p = w  # carried to the next stage
    return stages, checkpoint


def check_stages(repetition: Repetition, order: list[str], stage_tokens: float) -> None:
    """Before any training: stage 1 (100% D1 for a stage) stays within k N_1, and at every stage j the caps can
    sum to 1 whatever the earlier stages chose: j stages of tokens fit in k times the train tokens of D1..Dj."""
    repetition.check("stage 1 (100% of the first domain for a whole stage)", {}, {order[0]: 1.0}, stage_tokens)
    if repetition.factor is None:
        return
    for j in range(2, len(order) + 1):
        room = repetition.factor * sum(repetition.sizes[d] for d in order[:j]) - (j - 1) * stage_tokens
        if room < stage_tokens:
            raise OpmixError(
                f"stage {j} ({order[j - 1]}): the caps sum to {max(room, 0.0) / stage_tokens:.4g} < 1: {j} stages "
                f"consume {j * stage_tokens:.0f} tokens, more than k={repetition.factor:g} times the "
                f"{sum(repetition.sizes[d] for d in order[:j]):.0f} train tokens of the domains seen by then",
                "raise the repetition factor (method.proposer.repetition_factor; null turns the caps off), add data, "
                "or shorten the stages (train.steps)",
            )
