"""Simulated proxies -> one mixing law per eval domain -> KL-regularised proposal (SPEC section 2, steps 3-4).

The step persists ``laws.json`` (parameters, fit errors and diagnostic figures of every law) and ``proposal.json``
(component weights, warnings), and is skipped on resume once both verify. Given a ledger, it records its seconds
and estimated FLOPs (`opmix.run.ledger.law_fit_flops`, `proposer_flops`) under the step's name before marking it
done, so a redone step overwrites its entry.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from opmix.diagnostics import law_measures, law_warnings, proxy_count_warnings
from opmix.law import fit_laws
from opmix.propose import KLProposer
from opmix.run.atomic import write_json
from opmix.run.ledger import ComputeLedger, law_fit_flops, proposer_flops
from opmix.run.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Proposal:
    components: dict[str, float]  # component -> weight x
    warnings: list[str]
    laws: list[dict]


@dataclass
class Search:
    """What one search found: the fitted laws (one per eval domain), the fitted proposer (``x_``,
    ``domain_weights_``, ``objective_``), the component weights, the laws as JSON-safe rows (parameters, fit
    errors, diagnostics) and the warnings about the proxies and the fits."""

    laws: list
    proposer: KLProposer
    components: dict[str, float]
    law_rows: list[dict]
    warnings: list[str]


def fit_and_propose(
    X: np.ndarray,
    Y: np.ndarray,
    components: Sequence[str],
    eval_domains: Sequence[str],
    own_components: Sequence[int | None],
    prior: np.ndarray,
    expansion: np.ndarray | None = None,
    kl_weight: float = 0.05,
    caps: np.ndarray | None = None,
    law_settings: dict | None = None,
    solver: str = "CLARABEL",
    seed: int = 0,
    caps_expansion: np.ndarray | None = None,
) -> Search:
    """Laws on the proxies (``X`` (P, k) component weights, ``Y`` (P, n) eval losses), then the KL-regularised
    proposal with ``prior`` over the rows of ``expansion`` (default: the identity, a prior over components);
    ``caps`` bound the domain weights ``caps_expansion @ x`` (default ``expansion``)."""
    X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    laws = fit_laws(X, Y, list(own_components), seed=seed, **(law_settings or {}))
    warnings = proxy_count_warnings(X.shape[0], X.shape[1])
    warnings += law_warnings(laws, X, Y, list(components), list(eval_domains))
    T = np.stack([law.t_ for law in laws])  # (n, k)
    M = np.eye(X.shape[1]) if expansion is None else expansion
    proposer = KLProposer(kl_weight=kl_weight, caps=caps, solver=solver).fit(T, np.asarray(prior, dtype=float), M, caps_expansion)
    law_rows = [{"domain": d, **law.to_dict(), "diagnostics": law_measures(law, X, Y[:, j])}
                for j, (d, law) in enumerate(zip(eval_domains, laws))]
    return Search(laws, proposer, {c: float(v) for c, v in zip(components, proposer.x_)}, law_rows, warnings)


def propose_mixture(
    run: RunDir,
    step: str,
    X: np.ndarray,  # (P, k) component weights of the proxies
    Y: np.ndarray,  # (P, n) eval losses of the proxies
    components: Sequence[str],
    eval_domains: Sequence[str],
    own_components: Sequence[int | None],
    prior: np.ndarray,  # q over the rows of `expansion`
    expansion: np.ndarray,  # M (d, k)
    kl_weight: float = 0.05,  # lambda
    caps: np.ndarray | None = None,  # on the domain weights caps_expansion @ x (one per cap domain)
    law_settings: dict | None = None,
    solver: str = "CLARABEL",
    seed: int = 0,
    ledger: ComputeLedger | None = None,  # where the step's seconds and FLOPs go (the run's ``ws.ledger``)
    to_domains: Callable[[dict[str, float]], dict[str, float]] | None = None,  # components -> domain mixture
    caps_expansion: np.ndarray | None = None,  # C (d, k) of the capped domains; default `expansion`
) -> Proposal:
    laws_path, proposal_path = run.path(step, "laws.json"), run.path(step, "proposal.json")
    if run.is_done(step):
        saved = json.loads(proposal_path.read_text())
        return Proposal(saved["components"], saved["warnings"], json.loads(laws_path.read_text())["laws"])
    started = time.perf_counter()
    X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    log.info("%s: fitting %d mixing laws on %d proxies, then the KL-regularised proposal", step, Y.shape[1], X.shape[0])
    search = fit_and_propose(X, Y, components, eval_domains, own_components, prior, expansion, kl_weight=kl_weight,
                             caps=caps, law_settings=law_settings, solver=solver, seed=seed,
                             caps_expansion=caps_expansion)
    laws, warnings, proposer, law_rows = search.laws, search.warnings, search.proposer, search.law_rows
    seconds = time.perf_counter() - started
    flops = sum(law_fit_flops(law.n_evaluations_, X.shape[0], X.shape[1]) for law in laws)
    flops += proposer_flops(len(laws), X.shape[1], np.shape(expansion)[0])
    for warning in warnings:
        log.warning("%s", warning)
    proposal = Proposal({c: float(v) for c, v in zip(components, proposer.x_)}, warnings, law_rows)
    write_json(laws_path, {"components": list(components), "laws": law_rows})
    write_json(proposal_path, {
        "components": proposal.components,
        **({"domains": to_domains(proposal.components)} if to_domains is not None else {}),
        "warnings": warnings, "kl_weight": kl_weight,
        "prior": prior.tolist(), "objective": float(proposer.objective_), "seconds": seconds,
        **({"caps": np.asarray(caps, dtype=float).tolist(), "capped_weights": proposer.capped_weights_.tolist()}
           if caps is not None else {}),
    })
    if ledger is not None:
        ledger.set(step, flops, seconds)
    run.mark_done(step, [laws_path, proposal_path], info={"seconds": seconds, "flops": flops})
    return proposal
