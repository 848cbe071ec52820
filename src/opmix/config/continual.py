"""Config of the continual-midtraining recipe (SPEC section 3, "Continual midtraining") and its baselines (section 4).

``train`` describes ONE stage: ``train.steps`` is the fixed step budget of every stage, and its warmup/decay
fractions shape each stage's own WSD learning-rate schedule (see ``opmix.continual.schedule``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from opmix.config.base import (
    DataConfig,
    DomainConfig,
    GuardConfig,
    LawConfig,
    LoraConfig,
    ModelConfig,
    ProposerConfig,
    Section,
    TrainConfig,
    check_run_inputs,
)

logger = logging.getLogger(__name__)

METHODS = ("opmix", "sequential", "replay", "fifty", "retrain", "lora-merge", "grid")


class ContinualMethodConfig(Section):
    """OP-Mix at every stage k >= 2. Defaults are SPEC's, except where a comment says otherwise."""

    # Probe length as a fraction of a stage (reference 2,500 of 10,000). At tiny scale probes of 200 of 800 steps
    # gave proxy/real Spearman ~0.9 and half-stage probes only 0.5-0.6, so keep them short.
    probe_fraction: float = Field(0.25, gt=0, le=1)
    probe_lr_multiplier: float = Field(2.0, gt=0)  # probes train at 2x the full-training rate, no warmup
    probe_decay_fraction: float = Field(0.2, ge=0, le=1)  # probes end with a short decay of their own
    old_probe_share: float = Field(0.9, gt=0.5, le=1)  # old probe data: 0.9 * p + 0.1 * D_k
    new_probe_share: float = Field(0.9, gt=0.5, le=1)  # new probe data: 0.1 * p + 0.9 * D_k
    n_proxies: int = 9  # a in {0, 1/8, ..., 1} on the segment between the probes; > 3, the law's parameters
    prior_new_weight: float = Field(0.5, gt=0, lt=1)  # q: D_k = 0.5, each old domain d = 0.5 * p[d]
    lora: LoraConfig = LoraConfig()
    law: LawConfig = LawConfig()
    proposer: ProposerConfig = ProposerConfig()
    guard: GuardConfig = GuardConfig()  # safe mixture: the prior's (new-data fraction prior_new_weight, 50/50)

    @field_validator("n_proxies")
    @classmethod
    def _overdetermined(cls, value: int) -> int:
        # each law exp(c) + exp(t_old (1 - r) + t_new r) has 3 parameters: more points than that, or no fit error
        if value <= 3:
            raise ValueError(f"{value} proxies cannot overdetermine the laws: each has 3 parameters (c, t_old, "
                             "t_new), so it needs more than 3 proxies; fix: raise it to 6 or more (SPEC: 9)")
        if value < 6:
            logger.warning("method.n_proxies=%d is under twice the 3 parameters of each law: its fit error says "
                           "little; raise it to at least 6 (SPEC: 9)", value)
        return value


class ContinualBaselinesConfig(Section):
    """The SPEC section 4 baselines, each under the same per-stage budget as OP-Mix."""

    replay_new_fraction: float = Field(0.9, gt=0, le=1)  # fixed replay: 90% new + 10% old (old split by p)
    fifty_new_fraction: float = Field(0.5, gt=0, le=1)  # the fixed 50/50 mix
    retrain_mixture: Literal["uniform", "natural"] = "uniform"  # over the domains seen so far
    lora_merge_scale: float = Field(1.0, gt=0)  # theta <- theta + scale * B A (LoRA trained on the new domain)
    grid: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)], min_length=2)
    grid_seeds: int = Field(2, ge=1)  # full-training runs per grid point (differently drawn batches)

    @model_validator(mode="after")
    def _grid_inside(self) -> ContinualBaselinesConfig:
        if any(not 0 < r <= 1 for r in self.grid) or len(set(self.grid)) != len(self.grid):
            raise ValueError("baselines.grid must hold distinct new-data fractions in (0, 1]; fix: e.g. [0.1, 0.5, 0.9]")
        return self


class ContinualConfig(Section):
    seed: int = 0
    model: ModelConfig  # a local HF directory, a pretraining run's directory (its final/model), or a built-in
    tokenizer: str | None = None  # a local tokenizer directory or "builtin:bytes"; None = the model directory's
    domains: list[DomainConfig] = Field(min_length=2)  # D1..DK in the order they arrive
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig(steps=800)  # ONE stage: train.steps = steps per stage
    method: ContinualMethodConfig = ContinualMethodConfig()
    baselines: ContinualBaselinesConfig = ContinualBaselinesConfig()
    run: Literal[METHODS] = "opmix"  # which method this run trains (grid = OP-Mix plus the grid at every stage)

    @model_validator(mode="before")
    @classmethod
    def _pretraining_run(cls, raw):
        """``model.path`` may name a pretraining run directory: its exported ``final/model`` is the start model."""
        model = raw.get("model") if isinstance(raw, dict) else None
        if isinstance(model, dict) and model.get("path"):
            path = Path(model["path"])
            if not (path / "config.json").is_file() and (path / "final" / "model" / "config.json").is_file():
                raw = {**raw, "model": {**model, "path": str(path / "final" / "model")}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ContinualConfig:
        check_run_inputs(self.domains, self.model, self.tokenizer)
        if self.probe_steps < 1:
            raise ValueError(f"method.probe_fraction gives 0 probe steps of {self.train.steps}; fix: raise it or train.steps")
        warmup = round(self.train.warmup_fraction * self.train.steps)
        if warmup + round(self.train.decay_fraction * self.train.steps) > self.train.steps:
            raise ValueError("train.warmup_fraction + train.decay_fraction exceed one stage; fix: lower them")
        return self

    @property
    def probe_steps(self) -> int:
        return round(self.method.probe_fraction * self.train.steps)

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]
