"""Mixture reuse when the domain set changes (``opmix update``; Olmix's reuse, grounded in on-policy probes).

    Start: the previous run's final model (weights; a fresh optimizer and one WSD schedule over this run's S).
    Existing: the unchanged domains at their previous relative weights p_U, one frozen component.
    Probes from the start, only for what changed: one `existing` probe on p_U, one per affected domain on
        0.9*Di + 0.1*p_U (new, revised, partition parts, and domains named by --recompute).
    Proxies: 2(k+1) Dirichlet(1) samples over the k components {existing, affected...}, evaluated on every domain.
    Laws per domain, the proposer with the prior expanded to domains (KL on domain weights, M x), the guard.
    Final: S steps from the start on the chosen mixture (``update.train: false``: propose only).

Repetition: each domain's expanded weight is capped at (k N_d - U_d) / R (R the update's training tokens, U_d what
the previous model consumed of an unchanged domain's data; new, revised and partitioned data starts at 0), and the
mixture trained is refused past k unless data.allow_repetition.

Removal alone changes no data that is left: the mixture is p_U renormalised, with no search compute at all.
"""

from __future__ import annotations

import time

import numpy as np

from opmix.config.update import UpdateConfig
from opmix.domains import EXISTING, expand, expansion_matrix, mix
from opmix.guard import PROPOSAL, SAFE, guard_proposal, predicted_mean
from opmix.law import laws_from_rows
from opmix.probes.proxy import proxy_points
from opmix.repetition import Repetition, tokens_per_step
from opmix.report import export_model, run_summary
from opmix.run.atomic import write_json
from opmix.run.rundir import RunDir
from opmix.search import Proposal, propose_mixture
from opmix.stages import ProbeJob, evaluate_proxies, train_full, train_probes
from opmix.train.schedule import WSDSchedule
from opmix.workspace import open_workspace


def run(cfg: UpdateConfig, run_dir: RunDir) -> dict:
    started = time.perf_counter()
    run_dir.save_config(cfg.model_dump(mode="json"))
    ws = open_workspace(run_dir, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed,
                        cfg.method.probe_cache)
    method, domains, S = cfg.method, ws.domain_names, cfg.train.steps
    schedule = WSDSchedule.from_fractions(S, cfg.train.warmup_fraction, cfg.train.decay_fraction,
                                          cfg.train.final_lr_ratio)
    existing, affected, components = cfg.existing, cfg.affected, cfg.components
    M = expansion_matrix(components, domains, existing or None)
    q = _component_prior(components)
    safe = expand(dict(zip(components, q)), domains, existing or None)

    repetition = Repetition.of(ws, method.proposer.repetition_factor, cfg.data.allow_repetition)
    revised = set(affected) | {c.name for c in cfg.update.changes if c.kind == "revise"}
    used = {d: float(cfg.update.previous_tokens.get(d, 0.0)) for d in domains if d not in revised}
    final_tokens = S * tokens_per_step(ws, cfg.data.seq_len)
    caps = repetition.caps(domains, used, final_tokens)  # (k N_d - U_d) / R on the expanded weights

    # 0. The start: the previous model's weights with a fresh optimizer at step 0 (evaluated: "before").
    start = train_full(ws, "start", safe, schedule, end_step=0)

    if not affected:  # removal only: the previous weights of what is left, no search
        proposal = Proposal({EXISTING: 1.0}, [], [])
        mixture = dict(existing)
    else:
        # 1. Probes, only for what changed.
        rest = existing or safe
        probe_data = {EXISTING: existing} | {
            d: mix([(method.domain_probe_share, {d: 1.0}), (1 - method.domain_probe_share, rest)]) for d in affected
        }
        adapters = train_probes(ws, [
            ProbeJob(f"probe_{c}", start, probe_data[c], cfg.probe_steps, lr=method.probe_lr_multiplier * cfg.train.lr,
                     decay_fraction=method.probe_decay_fraction, lora=method.lora.model_dump(),
                     sampler_offset=1000 * (i + 1))
            for i, c in enumerate(components)
        ])
        # 2. Proxies over the components, evaluated on every domain.
        X = proxy_points(len(components), cfg.update_proxies, seed=cfg.seed)
        Y = evaluate_proxies(ws, "proxies", start, adapters, components, X)
        # 3. Laws and proposal, KL on the expanded domain weights.
        own = [components.index(d) if d in affected else components.index(EXISTING) for d in domains]
        proposal = propose_mixture(
            ws.run, "propose", X, Y, components, domains, own_components=own, prior=M @ q, expansion=M,
            kl_weight=method.proposer.kl_weight, caps=caps, law_settings=method.law.model_dump(),
            solver=method.proposer.solver, seed=cfg.seed, ledger=ws.ledger,
            to_domains=lambda x: expand(x, domains, existing or None),
        )
        mixture = expand(proposal.components, domains, existing or None)

    if not cfg.update.train:
        return _proposal_only(ws, cfg, mixture, proposal, started)
    laws = laws_from_rows(proposal.laws) if proposal.laws else []
    predicted = ({PROPOSAL: predicted_mean(laws, list(proposal.components.values())), SAFE: predicted_mean(laws, q)}
                 if laws else None)
    guard = guard_proposal(ws, "", start, mixture, safe if affected else mixture, schedule, 0, S, domains,
                           predicted=predicted, law_warnings=proposal.warnings, settings=method.guard)
    repetition.check("the update's mixture", used, guard.mixture, final_tokens)
    final = train_full(ws, "final", guard.mixture, schedule, end_step=S, start_from=guard.start_from)
    export_model(ws, final, ws.run.path("final", "model"))
    summary = run_summary(ws, guard.mixture, proposal, guard, final_step="final", baselines={}, started=started)
    summary["update"] = _update_record(ws, cfg, mixture)
    write_json(ws.run.path("summary.json"), summary)
    return summary


def planned_steps(cfg: UpdateConfig) -> list[str]:
    search = [*(f"probe_{c}" for c in cfg.components), "proxies", "propose"] if cfg.affected else []
    guard = ["guard_proposal", "guard_safe"] if cfg.method.guard.enabled and cfg.affected else []
    return ["start", *search, *(guard + ["final", "export_final_model"] if cfg.update.train else [])]


def _component_prior(components: list[str]) -> np.ndarray:
    return np.full(len(components), 1.0 / len(components))


def _update_record(ws, cfg: UpdateConfig, proposed: dict[str, float]) -> dict:
    ledger = ws.ledger.as_dict()
    search = [s for s in ledger if s.startswith("probe_") or s in ("proxies", "propose")]
    return {
        "from": cfg.update.from_run,
        "changes": [c.model_dump() for c in cfg.update.changes],
        "existing": cfg.existing,
        "affected": cfg.affected,
        "proposed": proposed,
        "search_flops": sum(ledger[s]["flops"] for s in search),
        "saved_flops": sum(ledger[s].get("saved_flops", 0.0) for s in search),
        "probes_trained": [s.removeprefix("probe_") for s in search if s.startswith("probe_")],
    }


def _proposal_only(ws, cfg: UpdateConfig, mixture: dict, proposal: Proposal, started: float) -> dict:
    summary = {
        "mixture": mixture, "components": proposal.components, "trained": False,
        "flops": ws.ledger.totals(), "elapsed_s": time.perf_counter() - started,
        "warnings": [*ws.notes, *proposal.warnings], "laws": proposal.laws,
        "update": _update_record(ws, cfg, mixture),
    }
    write_json(ws.run.path("summary.json"), summary)
    return summary


def format_update(summary: dict) -> str:
    """What ``opmix update`` prints: the change, the search it cost, then the run's usual table."""
    from opmix.report import format_summary

    record = summary["update"]
    lines = [f"update of {record['from']}: existing {_weights(record['existing'])}; searched "
             f"{', '.join(record['affected']) or 'nothing (removal only)'}",
             f"search FLOPs {record['search_flops']:.3e} (probes: "
             f"{', '.join(record['probes_trained']) or 'none'}; {record['saved_flops']:.3e} saved by the probe cache)"]
    if summary.get("trained") is False:
        lines += ["mixture (proposed; not trained, --no-train):",
                  *(f"  {d:<12} {w:.3f}" for d, w in summary["mixture"].items())]
        return "\n".join(lines)
    return "\n".join([*lines, format_summary(summary)])


def _weights(mixture: dict[str, float]) -> str:
    return ", ".join(f"{d}={w:.3f}" for d, w in mixture.items()) or "none"
