"""How often a run may consume each domain's data (Olmix caps, SPEC section 5), for the recipes.

Over a whole run a domain d is consumed at most k times its train tokens N_d (k =
``method.proposer.repetition_factor``). Two things follow:

- the proposer's caps bound the *expanded* domain weights of the training being planned,
  ``w_d <= (k N_d - U_d) / R``, with U_d the tokens of d the same model's earlier training already consumed (the
  prefix in pretraining, the earlier stages in continual midtraining; read from their step markers) and R the tokens
  the planned training consumes over all processes (``opmix.propose.repetition_caps``);
- a mixture fixed in advance (a user-given ``method.initial_mixture``, a fixed-mixture baseline, the guard's safe
  mixture, the mixture finally trained) that would take a domain past k N_d is refused with an OpmixError before it
  is trained, unless ``data.allow_repetition`` is set; then it is trained and a warning goes to ``summary.json``.

Consumption is planned from the mixture's *expected* draws (weight x tokens): the sampler draws each row's domain
at random, so the tokens a run actually consumes differ from the plan by sampling noise (a few percent at the
test sizes, far less at real ones). ``k = None`` turns both off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from opmix.errors import OpmixError
from opmix.propose import repetition_caps

log = logging.getLogger(__name__)

TOLERANCE = 1e-6  # relative: a proposal that sits on its cap plans exactly k N_d, up to the solver's precision


def tokens_per_step(ws, seq_len: int) -> int:
    """Tokens one optimizer step consumes over all processes: ``batch_size`` sequences in each process."""
    return ws.train.batch_size * seq_len * ws.accelerator.num_processes


def consumed(info: Mapping | None) -> dict[str, float]:
    """Tokens of each domain a training step's run had consumed when it finished (over all processes), from its
    marker's info: cumulative over the run it continues (the sampler's counters carry from step to step)."""
    if not info:
        return {}
    return {d: float(v) for d, v in info.get("tokens_consumed_total", info.get("tokens_consumed", {})).items()}


def plan(used: Mapping[str, float], mixture: Mapping[str, float], tokens: float) -> dict[str, float]:
    """Tokens of each domain consumed after training ``tokens`` more tokens on ``mixture``, from ``used``."""
    domains = dict.fromkeys([*used, *mixture])
    return {d: used.get(d, 0.0) + mixture.get(d, 0.0) * tokens for d in domains}


@dataclass
class Repetition:
    """A run's repetition limit: N_d per domain, the factor k (None: no limit) and whether going past it is allowed.
    Warnings (a mixture past k trained because it was allowed) are appended to ``notes`` (the run's ``ws.notes``,
    which end in ``summary.json["warnings"]``)."""

    sizes: dict[str, float]  # N_d: train tokens of each domain
    factor: float | None  # k
    allowed: bool  # data.allow_repetition
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ws, factor: float | None, allowed: bool) -> Repetition:
        return cls({d: float(ws.domains[d].train_tokens) for d in ws.domain_names}, factor, allowed, ws.notes)

    def caps(self, domains: Sequence[str], used: Mapping[str, float], tokens: float) -> np.ndarray | None:
        """Caps on the domain weights of a training of ``tokens`` tokens that follows ``used``: (k N_d - U_d) / R.
        None without a factor; raises OpmixError when they sum to less than 1."""
        if self.factor is None:
            return None
        return repetition_caps(np.array([self.sizes[d] for d in domains]), tokens, self.factor,
                               np.array([used.get(d, 0.0) for d in domains]))

    def epochs(self, planned: Mapping[str, float]) -> dict[str, float]:
        return {d: planned[d] / self.sizes[d] for d in planned if self.sizes.get(d)}

    def check(self, what: str, used: Mapping[str, float], mixture: Mapping[str, float], tokens: float) -> None:
        """Refuse (or, when allowed, warn about) training ``tokens`` tokens on ``mixture`` after ``used`` when that
        takes some domain past k times its train tokens over the run. ``what`` names the mixture and where it comes
        from, e.g. "the prefix's mixture p (method.initial_mixture)". A domain the mixture does not draw from is
        never the reason (its earlier draws may have passed k N_d by sampling noise, or because it was allowed)."""
        if self.factor is None:
            return
        k, planned = self.factor, plan(used, mixture, tokens)
        over = {d: e for d, e in self.epochs(planned).items()
                if e > k * (1 + TOLERANCE) and mixture.get(d, 0.0) * tokens > TOLERANCE * k * self.sizes[d]}
        if not over:
            return
        listed = ", ".join(f"{d!r} {e:.3g} times its {self.sizes[d]:.0f} train tokens" for d, e in over.items())
        problem = f"{what} would consume {listed} over the run, more than the repetition factor k={k:g} allows"
        if self.allowed:
            note = f"{problem} (trained anyway: data.allow_repetition is true)"
            log.warning("%s", note)
            if note not in self.notes:
                self.notes.append(note)
            return
        raise OpmixError(problem, "add data to the domain, shorten the run (train.steps), raise "
                                  "method.proposer.repetition_factor, or set data.allow_repetition: true to allow it")

    def record(self, caps: np.ndarray | None = None, domains: Sequence[str] = (), **extra) -> dict:
        """For ``summary.json``: the limit, the train tokens, and the caps the proposer used."""
        return {"factor": self.factor, "allowed": self.allowed, "train_tokens": dict(self.sizes),
                "caps": None if caps is None else {d: float(c) for d, c in zip(domains, caps)}, **extra}
