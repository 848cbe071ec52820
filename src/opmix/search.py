"""Simulated proxies -> one mixing law per eval domain -> KL-regularised proposal (SPEC section 2, steps 3-4).

The step persists ``laws.json`` (parameters and fit errors of every law) and ``proposal.json`` (component weights,
warnings), and is skipped on resume once both verify.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from opmix.diagnostics import law_warnings
from opmix.law import fit_laws
from opmix.propose import KLProposer
from opmix.run.atomic import write_json
from opmix.run.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Proposal:
    components: dict[str, float]  # component -> weight x
    warnings: list[str]
    laws: list[dict]


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
    caps: np.ndarray | None = None,
    law_settings: dict | None = None,
    solver: str = "CLARABEL",
    seed: int = 0,
) -> Proposal:
    laws_path, proposal_path = run.path(step, "laws.json"), run.path(step, "proposal.json")
    if run.is_done(step):
        saved = json.loads(proposal_path.read_text())
        return Proposal(saved["components"], saved["warnings"], json.loads(laws_path.read_text())["laws"])
    started = time.perf_counter()
    laws = fit_laws(X, Y, list(own_components), seed=seed, **(law_settings or {}))
    warnings = law_warnings(laws, X, Y, list(components), list(eval_domains))
    T = np.stack([law.t_ for law in laws])  # (n, k)
    proposer = KLProposer(kl_weight=kl_weight, caps=caps, solver=solver).fit(T, prior, expansion)
    seconds = time.perf_counter() - started
    for warning in warnings:
        log.warning("%s", warning)
    law_rows = [{"domain": d, **law.to_dict()} for d, law in zip(eval_domains, laws)]
    proposal = Proposal({c: float(v) for c, v in zip(components, proposer.x_)}, warnings, law_rows)
    write_json(laws_path, {"components": list(components), "laws": law_rows})
    write_json(proposal_path, {
        "components": proposal.components, "warnings": warnings, "kl_weight": kl_weight,
        "prior": prior.tolist(), "objective": float(proposer.objective_), "seconds": seconds,
    })
    run.mark_done(step, [laws_path, proposal_path], info={"seconds": seconds})
    return proposal
