"""Training pieces continual midtraining adds to ``opmix.stages``: per-stage schedules, branch points for the grid's
seeds, the starting model as a checkpoint, and LoRA-merge.

Learning-rate schedule (a decision, documented in docs/CONTINUAL.md): every stage runs its own WSD schedule over
its ``train.steps`` global steps (short warmup, flat, linear decay over the last ``decay_fraction``), continuing
the previous stage's weights, optimizer state and data sampler. A stage is a unit of work a user may stop after,
so each one ends decayed (the published continual setup decays every stage too); the short re-warm at the start
of the next stage is the price.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from opmix.run.atomic import atomic_dir
from opmix.stages import load_weights
from opmix.train.checkpoint import STATE, save_trainer_checkpoint
from opmix.train.schedule import WSDSchedule


@dataclass(frozen=True)
class StageSchedule:
    """A WSD schedule over global steps ``start .. start + steps``: the Trainer counts steps globally."""

    start: int
    wsd: WSDSchedule

    @classmethod
    def for_stage(cls, start: int, steps: int, warmup_fraction: float, decay_fraction: float, final_ratio: float):
        return cls(start, WSDSchedule.from_fractions(steps, warmup_fraction, decay_fraction, final_ratio))

    @property
    def end(self) -> int:
        return self.start + self.wsd.total_steps

    def __call__(self, step: int) -> float:
        return self.wsd(step - self.start)


@dataclass(frozen=True)
class FixedStages:
    """Continual midtraining's stage lengths: every stage ``steps`` optimizer steps, every probe ``probe_steps``.
    (Instruction tuning's stages instead last one epoch of the new task: ``opmix.instruct.budget``.)"""

    stage_steps: int
    probe_length: int

    def steps(self, stage: int, mixture, new: str) -> int:
        return self.stage_steps

    def probe_steps(self, stage: int, new: str) -> int:
        return self.probe_length


def reseed_branch(source: Path, target: Path, seed: int) -> Path:
    """A copy of a trainer checkpoint whose data sampler draws its domain choices from a new RNG stream.

    The grid's second seed branches from the same weights, optimizer and data positions (still fresh data) but
    draws its batches differently, so two runs at one grid point differ only by the data draw."""
    if (target / STATE).is_file():
        return target
    state = json.loads((source / STATE).read_text())
    rng = np.random.default_rng([seed, 104729]).bit_generator.state
    state["loop"]["sampler"]["rng"] = rng
    with atomic_dir(target) as tmp:
        for item in source.iterdir():
            if item.name != STATE:
                shutil.copy2(item, tmp / item.name)
        (tmp / STATE).write_text(json.dumps(state, sort_keys=True))
    return target


def _save_weights(model: torch.nn.Module, directory: Path, stage: str) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])  # no state: weights only
    loop = {"step": 0, "stage": stage, "tokens_trained": 0, "seconds": 0.0, "sampler": None}
    save_trainer_checkpoint(directory, model, optimizer, loop)


def start_checkpoint(ws, step: str = "start") -> Path:
    """The starting model saved as a (weights-only) checkpoint, so probes can branch off it."""
    checkpoint = ws.run.path(step, "checkpoint")
    if not ws.run.is_done(step):
        _save_weights(ws.new_model(), checkpoint, step)
        ws.run.mark_done(step, [checkpoint])
    return checkpoint


@torch.no_grad()
def merge_lora(ws, step: str, base: Path, adapter: Path, scale: float = 1.0) -> Path:
    """LoRA-merge: theta <- theta + scale * B A * (alpha / r) on every adapted layer; a weights-only checkpoint."""
    from opmix.probes.lora import load_probe

    checkpoint = ws.run.path(step, "checkpoint")
    if ws.run.is_done(step):
        return checkpoint
    model = load_weights(ws, base)
    delta = load_probe(adapter, device=next(model.parameters()).device)
    modules = dict(model.named_modules())
    for name in delta.factors:
        weight = modules[name].weight
        weight.add_((scale * delta.delta(name)).to(weight.dtype))  # delta is laid out like the weight
    _save_weights(model, checkpoint, step)
    losses = ws.measure(model).values
    ws.run.mark_done(step, [checkpoint], info={"scale": scale, "eval_loss": losses})
    return checkpoint
