"""Warmup-stable-decay (WSD) learning-rate schedule.

One schedule spans the whole run: prefix and final training are one run (SPEC section 3), so the prefix ends in the
flat phase and the final training decays at its end. The schedule is a pure function of the global step, which
makes resuming trivial: no scheduler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WSDSchedule:
    total_steps: int
    warmup_steps: int
    decay_steps: int  # linear decay over the last decay_steps ...
    final_ratio: float = 0.1  # ... down to final_ratio x the peak rate

    @classmethod
    def from_fractions(cls, total_steps: int, warmup_fraction: float, decay_fraction: float, final_ratio: float):
        return cls(
            total_steps=total_steps,
            warmup_steps=round(warmup_fraction * total_steps),
            decay_steps=round(decay_fraction * total_steps),
            final_ratio=final_ratio,
        )

    def __post_init__(self) -> None:
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError("warmup and decay together are longer than the schedule")

    def __call__(self, step: int) -> float:
        """Multiplier of the peak learning rate for the update made at ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / self.decay_steps  # reaches 1 at the last step
        return 1.0 - (1.0 - self.final_ratio) * min(progress, 1.0)


@dataclass(frozen=True)
class CoolDown:
    """The run's schedule up to ``branch_step``, then a linear decay from the rate there to ``final_ratio`` of it
    over ``steps``: a short run's own cool-down before it is evaluated. At the flat rate a short run's loss
    favours whatever it saw last (docs/FIDELITY.md); cooled down, it reflects what the run has learned."""

    base: object  # the run's schedule: global step -> multiplier of the peak rate
    branch_step: int
    steps: int
    final_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.branch_step:
            return self.base(step)
        progress = min((step - self.branch_step + 1) / self.steps, 1.0)
        return self.base(self.branch_step) * (1.0 - (1.0 - self.final_ratio) * progress)
