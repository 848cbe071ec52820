"""OP-Mix for pretraining (SPEC section 3, "Pretraining"), and the ERM baseline under the same budget.

    Prefix: train on the uniform (or user-given) mixture p for 20% of S.
    Probes from the prefix checkpoint: one `old` probe on p, and one per domain on 0.9*Di + 0.1*p.
    Proxies: 12 Dirichlet(1) samples over the m+1 components.
    Prior q: old = 0.5, each domain 0.5/m (M = identity in this phase).
    Guard (SPEC section 8): short real runs on the proposal and on the prior's mixture; the better one is kept.
    Final: continue from the prefix checkpoint for the remaining 80% on the expanded mixture.

Repetition (``opmix.repetition``): with k = ``method.proposer.repetition_factor`` the proposer bounds the final
training's expanded domain weights, ``(M x)_d <= (k N_d - U_d) / R_final``, where U_d is what the prefix consumed
of d (its step marker) and M the expansion ``[p | I]`` (``old`` draws from every domain in p's proportions). Before
any training: the caps must be feasible (from the prefix's planned consumption), and p for the prefix, the guard's
safe mixture and the ERM / natural baselines must stay within k N_d over the run, else the run is refused (unless
``data.allow_repetition``). The mixture finally trained is checked again before the final training.
"""

from __future__ import annotations

import time

import numpy as np

from opmix.config.pretrain import PretrainConfig
from opmix.domains import (
    OLD,
    component_prior,
    expand,
    expansion_matrix,
    mix,
    normalize,
    uniform,
)
from opmix.guard import (
    PROPOSAL,
    SAFE,
    guard_proposal,
    predicted_mean,
    total_variation,
)
from opmix.law import laws_from_rows
from opmix.probes.proxy import proxy_points
from opmix.recipes.pretrain_baselines import mergemix_baseline, swarm_baseline
from opmix.repetition import Repetition, consumed, plan, tokens_per_step
from opmix.report import export_model, run_summary
from opmix.run.rundir import RunDir
from opmix.search import propose_mixture
from opmix.stages import ProbeJob, evaluate_proxies, train_full, train_probes
from opmix.train.schedule import WSDSchedule
from opmix.workspace import open_workspace


def run(cfg: PretrainConfig, run_dir: RunDir) -> dict:
    started = time.perf_counter()
    run_dir.save_config(cfg.model_dump(mode="json"))  # a resumed run must use the same settings
    ws = open_workspace(run_dir, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed,
                        cfg.method.probe_cache)
    method, domains, S = cfg.method, ws.domain_names, cfg.train.steps
    schedule = WSDSchedule.from_fractions(
        S, cfg.train.warmup_fraction, cfg.train.decay_fraction, cfg.train.final_lr_ratio
    )
    p = normalize(method.initial_mixture or uniform(domains), "method.initial_mixture")
    components = [OLD, *domains]
    sizes = {d: ws.domains[d].train_tokens for d in domains}
    q, M = component_prior(method.prior, components, sizes), np.eye(len(components))
    safe = expand(dict(zip(components, q)), domains, p)  # the prior's mixture: uniform under the default prior
    repetition = Repetition.of(ws, method.proposer.repetition_factor, cfg.data.allow_repetition)
    per_step = tokens_per_step(ws, cfg.data.seq_len)
    final_tokens = (S - cfg.prefix_steps) * per_step  # R of the final training, all processes
    _check_repetition(cfg, ws, repetition, p, safe, per_step)  # before any training: a bad input, not a late failure

    # 1. Prefix: p for 20% of S, ending in the flat phase of the run's one WSD schedule.
    prefix = train_full(ws, "prefix", p, schedule, end_step=cfg.prefix_steps)
    used = consumed(ws.run.step_info("prefix"))  # tokens of each domain the prefix consumed
    caps = repetition.caps(domains, used, final_tokens)  # (k N_d - U_d) / R_final on the expanded weights
    capped = expansion_matrix(components, domains, p)  # domain weights of the components: M x with `old` = p

    # 2. Probes from the prefix: `old` on p, one per domain on 0.9*Di + 0.1*p; 2x rate, no warmup.
    probe_data = {OLD: p} | {
        d: mix([(method.domain_probe_share, {d: 1.0}), (1 - method.domain_probe_share, p)]) for d in domains
    }
    adapters = train_probes(ws, [
        ProbeJob(f"probe_{c}", prefix, probe_data[c], cfg.probe_steps, lr=method.probe_lr_multiplier * cfg.train.lr,
                 decay_fraction=method.probe_decay_fraction, lora=method.lora.model_dump(),
                 sampler_offset=1000 * (i + 1))
        for i, c in enumerate(components)
    ])  # concurrently, one per process, when there are several

    # 3. Proxies: Dirichlet(1) samples over the m+1 components, evaluated on every domain's eval split.
    X = proxy_points(len(components), method.n_proxies, seed=cfg.seed)  # (P, m+1)
    Y = evaluate_proxies(ws, "proxies", prefix, adapters, components, X)  # (P, m)

    # 4. Laws and proposal: min (1/n) sum_j exp(t_j . x) + lambda KL(x || q), the expanded weights under the caps.
    proposal = propose_mixture(
        ws.run, "propose", X, Y, components, domains,
        own_components=[components.index(d) for d in domains], prior=q, expansion=M,
        kl_weight=method.proposer.kl_weight, caps=caps, law_settings=method.law.model_dump(),
        solver=method.proposer.solver, seed=cfg.seed, ledger=ws.ledger,
        to_domains=lambda components: expand(components, domains, p), caps_expansion=capped,
    )
    mixture = expand(proposal.components, domains, p)

    # 5. Guard (SPEC section 8): short real runs from the prefix on the proposal and on the prior's mixture; the
    #    final training continues the winner, so a user is never worse off than with the safe mixture.
    laws = laws_from_rows(proposal.laws)
    guard = guard_proposal(
        ws, "", prefix, mixture, safe, schedule, cfg.prefix_steps, S, domains,
        predicted={PROPOSAL: predicted_mean(laws, list(proposal.components.values())), SAFE: predicted_mean(laws, q)},
        law_warnings=proposal.warnings, settings=method.guard,
    )

    # 6. Final: continue the prefix (weights, optimizer, schedule) for the remaining 80% on the chosen mixture.
    repetition.check("the final training's mixture", used, guard.mixture, final_tokens)
    final = train_full(ws, "final", guard.mixture, schedule, end_step=S, start_from=guard.start_from)
    export_model(ws, final, ws.run.path("final", "model"))

    # Baselines under the same budget. ERM keeps p, natural weighs by size: each continues the same prefix. Swarm
    # and MergeMix search for a mixture themselves (recipes/pretrain_baselines.py), their search counted as theirs.
    searched = {
        "swarm": lambda: swarm_baseline(ws, cfg, safe, schedule, repetition),
        "mergemix": lambda: mergemix_baseline(ws, cfg, prefix, probe_data, X, components, q, M, p, schedule,
                                              repetition, used),
    }
    baselines = {name: searched[name]() if name in searched else
                 baseline_run(ws, name, p if name == "erm" else natural(ws), prefix, schedule, S, guard, safe)
                 for name in cfg.baselines}
    return run_summary(ws, guard.mixture, proposal, guard, final_step="final", baselines=baselines,
                       started=started, repetition=repetition.record(caps, domains, final_tokens=final_tokens,
                                                                     prefix_tokens=used))


def planned_steps(cfg: PretrainConfig) -> list[str]:
    """The run's steps in order, for ``opmix status``. The guard's runs and a baseline that shares OP-Mix's run
    are conditional: a finished run that did not need them lists them as skipped."""
    names = [d.name for d in cfg.domains]
    components = [OLD, *names]
    steps = ["prefix", *(f"probe_{c}" for c in components), "proxies", "propose"]
    steps += ["guard_proposal", "guard_safe"] if cfg.method.guard.enabled else []
    steps += ["final", "export_final_model"]
    for name in cfg.baselines:
        if name == "swarm":
            steps += [*(f"swarm_{i}" for i in range(cfg.swarm_k)), "swarm_propose", "swarm_final"]
        elif name == "mergemix":
            steps += [*(f"mergemix_{c}" for c in components), "mergemix_proxies", "mergemix_propose",
                      "mergemix_final"]
        else:
            steps.append(name)
    return steps


def baseline_run(ws, name: str, weights: dict, prefix, schedule, end_step: int, guard, safe: dict) -> dict:
    """A fixed-mixture baseline continuing the prefix to the end of the budget. When the guard already trained
    the first steps of that same run (its safe mixture is this baseline's), the baseline continues the guard's
    run, and when the guard chose it, the final training *is* this baseline: nothing is trained twice."""
    start, steps = prefix, ["prefix"]
    if not guard.record.get("checked") and total_variation(guard.mixture, weights) < 1e-9:
        return {"mixture": weights, "steps": ["prefix", "final"], "result_step": "final"}  # the same run
    if guard.record.get("checked") and total_variation(safe, weights) < 1e-9:
        if guard.record["chosen"] == SAFE:
            return {"mixture": weights, "steps": ["prefix", "guard_safe", "final"], "result_step": "final"}
        start, steps = ws.run.path("guard_safe", "checkpoint"), ["prefix", "guard_safe"]
    train_full(ws, name, weights, schedule, end_step=end_step, start_from=start)
    return {"mixture": weights, "steps": [*steps, name], "result_step": name}


def natural(ws) -> dict[str, float]:
    """Weights proportional to each domain's train tokens (SPEC section 4, "Natural")."""
    return normalize({d: float(ws.domains[d].train_tokens) for d in ws.domain_names}, "natural mixture")


def _check_repetition(cfg: PretrainConfig, ws, repetition: Repetition, p: dict, safe: dict, per_step: int) -> None:
    """Before any training, from the planned consumption (weights x tokens): the final training's caps are feasible
    after the prefix (and the swarm's, from scratch), and no fixed mixture goes past k N_d over the run: p in the
    prefix, the guard's safe mixture (the final training may fall back to it), the ERM and natural baselines."""
    domains, S = ws.domain_names, cfg.train.steps
    prefix_tokens, final_tokens = cfg.prefix_steps * per_step, (S - cfg.prefix_steps) * per_step
    after_prefix = plan({}, p, prefix_tokens)
    repetition.caps(domains, after_prefix, final_tokens)  # raises when the caps sum to less than 1
    if "swarm" in cfg.baselines:
        repetition.caps(domains, {}, S * per_step)
    given = "method.initial_mixture" if cfg.method.initial_mixture else "the uniform mixture"
    repetition.check(f"the prefix's mixture p ({given})", {}, p, prefix_tokens)
    if cfg.method.guard.enabled:
        repetition.check(f"the guard's safe mixture (the prior's, method.prior: {cfg.method.prior}), which the final "
                         "training falls back to when the guard fires", after_prefix, safe, final_tokens)
    if "erm" in cfg.baselines:
        repetition.check(f"the ERM baseline ({given} for the whole run)", {}, p, S * per_step)
    if "natural" in cfg.baselines:
        repetition.check("the natural baseline (weights by train tokens after the prefix)", after_prefix,
                         natural(ws), final_tokens)

