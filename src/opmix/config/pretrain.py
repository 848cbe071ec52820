"""Config of the pretraining recipe (SPEC section 3, "Pretraining")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from opmix.config.base import (
    DataConfig,
    DomainConfig,
    LawConfig,
    LoraConfig,
    ModelConfig,
    ProposerConfig,
    Section,
    TrainConfig,
    check_run_inputs,
)
from opmix.domains import normalize
from opmix.errors import OpmixError


class PretrainMethodConfig(Section):
    prefix_fraction: float = Field(0.2, gt=0, lt=1)  # prefix on p for 20% of S
    probe_fraction: float = Field(0.1, gt=0, le=1)  # each probe: 10% of S
    probe_lr_multiplier: float = Field(2.0, gt=0)  # probes train at 2x the full-training rate, no warmup
    probe_decay_fraction: float = Field(0.2, ge=0, le=1)  # probes end with a short decay of their own
    domain_probe_share: float = Field(0.9, gt=0, le=1)  # domain probe data: 0.9 * D_i + 0.1 * p
    n_proxies: int = Field(12, ge=2)  # Dirichlet(1) samples over the m+1 components
    initial_mixture: dict[str, float] | None = None  # p for the prefix; None = uniform
    prior: Literal["default", "uniform", "natural"] = "default"  # default: old 0.5, each domain 0.5/m
    lora: LoraConfig = LoraConfig()
    law: LawConfig = LawConfig()
    proposer: ProposerConfig = ProposerConfig()


class PretrainConfig(Section):
    seed: int = 0
    model: ModelConfig
    tokenizer: str | None = None  # a local tokenizer directory or "builtin:bytes"; None = the model directory's
    domains: list[DomainConfig] = Field(min_length=2)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    method: PretrainMethodConfig = PretrainMethodConfig()
    baseline: Literal["none", "erm"] = "none"

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        names = check_run_inputs(self.domains, self.model, self.tokenizer)
        if self.method.initial_mixture is not None:
            unknown = sorted(set(self.method.initial_mixture) - set(names))
            if unknown:
                raise ValueError(f"method.initial_mixture names unknown domain(s) {unknown}; fix: use the known domains {names}")
            try:
                normalize(self.method.initial_mixture, "method.initial_mixture")
            except OpmixError as error:
                raise ValueError(str(error)) from None
        prefix_steps = self.prefix_steps
        if prefix_steps < 1 or prefix_steps >= self.train.steps:
            raise ValueError(
                f"method.prefix_fraction gives {prefix_steps} prefix steps of {self.train.steps}; fix: raise train.steps"
            )
        if self.probe_steps < 1:
            raise ValueError(f"method.probe_fraction gives 0 probe steps of {self.train.steps}; fix: raise it or train.steps")
        decay_start = self.train.steps - round(self.train.decay_fraction * self.train.steps)
        if prefix_steps > decay_start:
            raise ValueError(
                "the prefix must end before the learning-rate decay starts; "
                "fix: lower method.prefix_fraction or train.decay_fraction"
            )
        if self.method.n_proxies < len(self.domains) + 1:
            raise ValueError(
                f"method.n_proxies={self.method.n_proxies} is fewer than the {len(self.domains) + 1} components; "
                "fix: raise it (SPEC default 12)"
            )
        return self

    @property
    def prefix_steps(self) -> int:
        return round(self.method.prefix_fraction * self.train.steps)

    @property
    def probe_steps(self) -> int:
        return round(self.method.probe_fraction * self.train.steps)
