"""The guard (SPEC section 8): a user is never worse off for using opmix than with the safe mixture.

The proxies can mis-rank mixtures on data unlike the one the method was tuned on (docs/FIDELITY.md), and nothing in
the laws' fit shows it. So before the full training commits to the proposal, two short *real* continuations run from
the checkpoint it starts from, with the run's own optimizer, data stream and learning-rate schedule: one on the
proposed mixture, one on the safe mixture (the prior's: uniform in pretraining, 50/50 in continual midtraining).

    the proposal's real loss is not above the safe one's by more than ``margin``  -> keep the proposal
    it is                                   -> the guard fires: train on the safe mixture, and say why
    (when a check this short is known to favour the proposal, the proposal must instead win by ``margin``)

Both runs are exactly the first ``check_fraction`` of the full training they stand for (same schedule, same
optimizer state, same data stream), so the full training continues the winning run instead of starting over: the
guard's own cost is the losing run and two evaluations. No check runs when the proposal is within
``min_distance`` (total variation) of the safe mixture: the two would train alike, a short run could not tell them
apart, and the safe mixture is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opmix.eval import mean_loss
from opmix.stages import train_full

log = logging.getLogger(__name__)

PROPOSAL, SAFE = "proposal", "safe"


@dataclass
class GuardOutcome:
    mixture: dict[str, float]  # what the full training trains on
    start_from: Path  # the checkpoint the full training continues (a check run's, or the one it would have used)
    record: dict  # for summary.json: what was checked, the figures, the decision and why
    warnings: list[str]


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in keys)


def predicted_mean(laws: Sequence, x: np.ndarray) -> float:
    """The laws' mean predicted eval loss at component weights ``x``: what the proxies say of a mixture."""
    return float(np.mean([law.predict(np.asarray(x, dtype=float)[None, :])[0] for law in laws]))


def guard_proposal(
    ws,
    prefix: str,  # step-name prefix: "" in pretraining, "s<k>_" in continual midtraining
    start_from: Path,
    proposal: Mapping[str, float],
    safe: Mapping[str, float],
    schedule,
    start_step: int,
    end_step: int,
    eval_domains: Sequence[str],
    predicted: Mapping[str, float] | None,  # the laws' mean prediction at each of PROPOSAL, SAFE
    law_warnings: Sequence[str],
    settings,
    check_favours_proposal: bool = False,
) -> GuardOutcome:
    """Check ``proposal`` against ``safe`` with two short real runs and pick the mixture the full training uses.

    ``check_favours_proposal``: the caller knows that a run as short as the check is biased toward the proposal
    (in continual midtraining, a proposal with more new data than the safe mixture: over a short horizon learning
    the new domain dominates, over the full stage the forgetting of the old ones catches up; docs/FIDELITY.md).
    Then a check that merely does not contradict the proposal is no evidence for it: the proposal must *win* by
    more than the margin, else the safe mixture is kept."""
    distance = total_variation(proposal, safe)
    record = {"enabled": bool(settings.enabled), "distance": distance, "checked": False, "fired": False,
              "chosen": PROPOSAL, "predicted": dict(predicted) if predicted else None,
              "proposal": dict(proposal), "safe": dict(safe)}
    if not settings.enabled:
        record["reason"] = "disabled (method.guard.enabled: false)"
        return GuardOutcome(dict(proposal), start_from, record, [])
    if distance < settings.min_distance:
        # Departing this little from the safe mixture changes the final loss by less than the run-to-run noise
        # (on the pretraining test beds, proposals within 0.03 of uniform ended -1.0% to +0.9% from ERM:
        # docs/FIDELITY.md), so it carries no evidence: keep the safe mixture, and the run equals that baseline.
        record["chosen"] = SAFE
        record["reason"] = (f"the proposal is within {distance:.3f} (total variation) of the safe mixture, below "
                            f"method.guard.min_distance = {settings.min_distance}: too close to matter, so the "
                            "safe mixture is kept (nothing to check)")
        return GuardOutcome(dict(safe), start_from, record, [])

    steps = max(1, round(settings.check_fraction * (end_step - start_step)))
    checkpoints, real = {}, {}
    for name, mixture in ((PROPOSAL, proposal), (SAFE, safe)):
        step = f"{prefix}guard_{name}"
        checkpoints[name] = train_full(ws, step, mixture, schedule, end_step=start_step + steps, start_from=start_from)
        losses = ws.run.step_info(step)["eval_loss"]
        real[name] = mean_loss({d: losses[d] for d in eval_domains})
    gap = (real[PROPOSAL] - real[SAFE]) / real[SAFE]
    fired = gap > (-settings.margin if check_favours_proposal else settings.margin)
    chosen = SAFE if fired else PROPOSAL
    record.update({
        "checked": True, "fired": fired, "chosen": chosen, "steps": steps, "margin": settings.margin,
        "check_favours_proposal": check_favours_proposal,
        "real": real, "relative_gap": gap, "continued_step": f"{prefix}guard_{chosen}",
        "overhead_step": f"{prefix}guard_{SAFE if chosen == PROPOSAL else PROPOSAL}",
    })
    warnings: list[str] = []
    proxies_said = ""
    if predicted:
        agree = (predicted[PROPOSAL] <= predicted[SAFE]) == (real[PROPOSAL] <= real[SAFE])
        record["proxies_agree"] = bool(agree)
        proxies_said = (f"; the laws predicted {predicted[PROPOSAL]:.4f} vs {predicted[SAFE]:.4f}"
                        + ("" if agree else ", the other way round"))
    if fired and check_favours_proposal and gap <= settings.margin:
        record["reason"] = (f"after {steps} real steps the proposal's mean eval loss {real[PROPOSAL]:.4f} is "
                            f"{100 * gap:+.2f}% against the safe mixture's {real[SAFE]:.4f}{proxies_said}; a check "
                            "this short favours the proposal's extra new data, so it must win by more than "
                            f"{100 * settings.margin:g}% to be kept")
        warnings.append(f"guard fired: {record['reason']}; training on the safe mixture (the prior's) instead")
    elif fired:
        why = "the proxies mis-ranked them" if record.get("proxies_agree") is False else "the proposal lost"
        if law_warnings:
            why += f" (and {len(law_warnings)} law diagnostic(s) were raised)"
        record["reason"] = (f"after {steps} real steps the proposal's mean eval loss {real[PROPOSAL]:.4f} is "
                            f"{100 * gap:+.2f}% above the safe mixture's {real[SAFE]:.4f}{proxies_said}: {why}")
        warnings.append(f"guard fired: {record['reason']}; training on the safe mixture (the prior's) instead")
    else:
        within = f", within the {100 * settings.margin:g}% margin" if gap > 0 else ""
        record["reason"] = (f"after {steps} real steps the proposal's mean eval loss {real[PROPOSAL]:.4f} is "
                            f"{100 * gap:+.2f}% against the safe mixture's {real[SAFE]:.4f}{proxies_said}{within}: "
                            "the proposal is kept")
    log.info("guard: %s", record["reason"])
    return GuardOutcome(dict(safe if fired else proposal), checkpoints[chosen], record, warnings)
