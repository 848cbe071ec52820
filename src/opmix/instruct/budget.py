"""How long a stage of continual instruction tuning trains (SPEC section 3, "mixing for SFT").

The new task is seen once per stage; each old task is sampled in proportion to its weight relative to the new
task's. With new-task weight w, a task of n train examples and B examples per optimizer step (all processes), the
stage is therefore ceil(n / (w B)) steps: n examples of the new task and n (1 - w) / w of the old ones. Probes are
short: ``probe_fraction`` of one epoch of the new task (SPEC: 0.4), at most ``max_probe_steps`` (SPEC: 256).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# A proposal of almost no new data would make the stage almost endless (1/w epochs' worth of steps); the probes'
# segment starts at 10% new data, so no proposal below it is supported by the laws' evidence anyway.
MIN_NEW_FRACTION = 0.1


@dataclass(frozen=True)
class OneEpochOfNewTask:
    examples: Mapping[str, int]  # train examples per task
    batch: int  # examples per optimizer step, all processes together
    probe_fraction: float = 0.4
    max_probe_steps: int = 256
    epochs: float = 1.0  # of the new task per stage (SPEC: once)

    def steps(self, stage: int, mixture: Mapping[str, float], new: str) -> int:
        share = max(float(mixture.get(new, 0.0)), MIN_NEW_FRACTION)
        return max(1, math.ceil(self.epochs * self.examples[new] / (share * self.batch)))

    def probe_steps(self, stage: int, new: str) -> int:
        return min(self.max_probe_steps, max(1, round(self.probe_fraction * self.examples[new] / self.batch)))
