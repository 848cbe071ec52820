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
    ProbeCacheConfig,
    ProposerConfig,
    Section,
    TrainConfig,
    check_run_inputs,
)

logger = logging.getLogger(__name__)

METHODS = ("opmix", "sequential", "replay", "fifty", "retrain", "lora-merge", "grid")


class ContinualMethodConfig(Section):
    """OP-Mix at every stage k >= 2. Defaults are the published ones."""

    # Probe length as a fraction of a stage (reference 2,500 of 10,000). At tiny scale probes of 200 of 800 steps
    # gave proxy/real Spearman ~0.9 and half-stage probes only 0.5-0.6, so keep them short.
    probe_fraction: float = Field(
        0.25, gt=0, le=1, description="Length of each of the two probes, as a fraction of a stage's `train.steps` "
                                      "(reference: 2,500 of 10,000).")
    probe_lr_multiplier: float = Field(
        2.0, gt=0, description="Probes train at this multiple of `train.lr`, without warmup.")
    probe_decay_fraction: float = Field(
        0.2, ge=0, le=1, description="Probes end with a linear decay over this last fraction of their own steps.")
    old_probe_share: float = Field(
        0.9, gt=0.5, le=1, description="The old probe trains on this share of p plus the rest from the new domain "
                                       "(0.9 p + 0.1 D_k).")
    new_probe_share: float = Field(
        0.9, gt=0.5, le=1, description="The new probe trains on this share of the new domain plus the rest from p "
                                       "(0.1 p + 0.9 D_k).")
    n_proxies: int = Field(
        9, description="Proxies evenly spaced on the segment between the two probes (a = 0, 1/8, ..., 1 for 9). "
                       "Must exceed 3, the parameters of each law (a warning below 6).")
    prior_new_weight: float = Field(
        0.5, gt=0, lt=1, description="The prior q: the new domain gets this weight, the old domains share the rest "
                                     "in proportion to p. The prior's mixture is the guard's safe mixture (50/50).")
    lora: LoraConfig = Field(LoraConfig(), description="The probes' LoRA adapters.")
    probe_cache: ProbeCacheConfig = Field(ProbeCacheConfig(), description="Reuse of probes already trained.")
    law: LawConfig = Field(LawConfig(), description="The fit of the mixing laws.")
    proposer: ProposerConfig = Field(ProposerConfig(), description="The convex program that picks the mixture.")
    guard: GuardConfig = Field(
        GuardConfig(), description="The real check of the proposal against the prior's mixture at every stage "
                                   "k >= 2. A proposal with more new data than the prior must win the check by "
                                   "`margin`.")

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
    """The papers' continual baselines, each under the same per-stage budget as OP-Mix (`run` picks one)."""

    replay_new_fraction: float = Field(
        0.9, gt=0, le=1, description="`replay`: this fraction of new data, the rest from the old domains split by p.")
    fifty_new_fraction: float = Field(
        0.5, gt=0, le=1, description="`fifty`: the same, with this fraction of new data.")
    retrain_mixture: Literal["uniform", "natural"] = Field(
        "uniform", description="`retrain`: the mixture over the domains seen so far, uniform or by train tokens.")
    lora_merge_scale: float = Field(
        1.0, gt=0, description="`lora-merge`: the weights become theta + scale x B A, with the LoRA trained on the "
                               "new domain.")
    grid: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)], min_length=2,
        description="`grid`: the new-data fractions trained for real at every stage k >= 2, to find the best one "
                    "and measure OP-Mix's regret.")
    grid_seeds: int = Field(
        2, ge=1, description="`grid`: full-training runs per grid point, each drawing its batches differently.")

    @model_validator(mode="after")
    def _grid_inside(self) -> ContinualBaselinesConfig:
        check_grid(self.grid, "new-data", "[0.1, 0.5, 0.9]")
        return self


def check_grid(grid: list[float], what: str, example: str) -> None:
    """A grid of new-data (or new-task) fractions: distinct, each in (0, 1]."""
    if any(not 0 < r <= 1 for r in grid) or len(set(grid)) != len(grid):
        raise ValueError(f"baselines.grid must hold distinct {what} fractions in (0, 1]; fix: e.g. {example}")


class ContinualConfig(Section):
    """A whole continual-midtraining run (``opmix continual``)."""

    seed: int = Field(0, description="Seeds every random draw: data order, law fits, grid branches.")
    model: ModelConfig = Field(
        description="The start model: a local HF directory, a pretraining run's directory (its `final/model` is "
                    "used), or a built-in config.")
    tokenizer: str | None = Field(
        None, description="A local tokenizer directory or `builtin:bytes`. Null: the model directory's tokenizer.")
    domains: list[DomainConfig] = Field(
        min_length=2, description="D1..DK in the order they arrive: stage k adds domain k.")
    data: DataConfig = Field(DataConfig(), description="Tokenization, eval split and cache.")
    train: TrainConfig = Field(
        TrainConfig(steps=800), description="ONE stage: every stage trains `train.steps` steps on its own WSD "
                                            "schedule.")
    method: ContinualMethodConfig = Field(ContinualMethodConfig(), description="OP-Mix's own settings.")
    baselines: ContinualBaselinesConfig = Field(
        ContinualBaselinesConfig(), description="Settings of the baselines (`run` other than `opmix`).")
    run: Literal[METHODS] = Field(
        "opmix", description="The method this run trains: `opmix`, `sequential`, `replay`, `fifty`, `retrain`, "
                             "`lora-merge`, or `grid` (OP-Mix plus the grid oracle at every stage). The CLI's "
                             "`--method` sets it.")

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
