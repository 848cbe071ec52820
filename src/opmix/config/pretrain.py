"""Config of the pretraining recipe (SPEC section 3, "Pretraining")."""

from __future__ import annotations

import logging
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
from opmix.domains import normalize
from opmix.errors import OpmixError

logger = logging.getLogger(__name__)


class PretrainMethodConfig(Section):
    """OP-Mix in pretraining: prefix, probes, proxies, laws, proposal, guard. Defaults are the published ones."""

    prefix_fraction: float = Field(
        0.2, gt=0, lt=1, description="The prefix trains on the initial mixture p for this fraction of `train.steps`, "
                                     "ending before the learning-rate decay.")
    probe_fraction: float = Field(0.1, gt=0, le=1, description="Length of each probe, as a fraction of `train.steps`.")
    probe_lr_multiplier: float = Field(
        2.0, gt=0, description="Probes train at this multiple of `train.lr`, without warmup.")
    probe_decay_fraction: float = Field(
        0.2, ge=0, le=1, description="Probes end with a linear decay over this last fraction of their own steps.")
    domain_probe_share: float = Field(
        0.9, gt=0, le=1, description="A domain's probe trains on this share of its domain plus the rest from p "
                                     "(0.9 D_i + 0.1 p).")
    n_proxies: int = Field(
        12, ge=2, description="Proxies: Dirichlet(1) samples over the m+1 components. Must exceed m+2, the "
                              "parameters of each law (a warning below 2(m+2)).")
    initial_mixture: dict[str, float] | None = Field(
        None, description="p: the prefix's mixture, `{domain: weight}`. Normalised to sum to 1 when the config is "
                          "loaded (the saved `config.yaml` holds the normalised weights); domains left out get 0. "
                          "Null: uniform.")
    prior: Literal["default", "uniform", "natural"] = Field(
        "default", description="The prior q of the proposer over the components. `default`: `old` 0.5, each domain "
                               "0.5/m; `uniform`: 1/(m+1) each; `natural`: by train tokens, `old` taking the mean "
                               "size. Its mixture is also the guard's safe mixture.")
    lora: LoraConfig = Field(LoraConfig(), description="The probes' LoRA adapters.")
    probe_cache: ProbeCacheConfig = Field(ProbeCacheConfig(), description="Reuse of probes already trained.")
    law: LawConfig = Field(LawConfig(), description="The fit of the mixing laws.")
    proposer: ProposerConfig = Field(ProposerConfig(), description="The convex program that picks the mixture.")
    guard: GuardConfig = Field(GuardConfig(), description="The real check of the proposal against the safe mixture.")

    @field_validator("initial_mixture")
    @classmethod
    def _normalised(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """Store p summing to 1, so the resolved config.yaml holds the mixture the run trains on."""
        if value is None:
            return None
        try:
            return normalize(value, "the mixture")
        except OpmixError as error:
            raise ValueError(str(error)) from None


BASELINES = ("erm", "natural", "swarm", "mergemix")


class SwarmConfig(Section):
    """The swarm baseline (Olmix / RegMix style): K proxy models trained from scratch on Dirichlet
    mixtures centred on the prior's domain mixture, each for ``fraction`` of the budget."""

    k: int | None = Field(
        None, ge=1, description="Number of proxy models, at least m+1 (the parameters of each law). Null: 3(m+1).")
    fraction: float = Field(
        0.2, gt=0, le=1, description="Each proxy model trains from scratch for this fraction of `train.steps`.")
    concentration: float = Field(
        1.0, gt=0, description="The mixtures are drawn from Dirichlet(m x concentration x prior): larger values "
                               "stay closer to the prior.")


class PretrainConfig(Section):
    """A whole pretraining run (``opmix pretrain``)."""

    seed: int = Field(0, description="Seeds every random draw: data order, proxies, law fits. Same config and "
                                     "seed, same mixture.")
    model: ModelConfig = Field(description="The model to train: a local directory or a built-in config.")
    tokenizer: str | None = Field(
        None, description="A local tokenizer directory or `builtin:bytes`. Null: the model directory's tokenizer.")
    domains: list[DomainConfig] = Field(min_length=2, description="The domains to mix, at least two.")
    data: DataConfig = Field(DataConfig(), description="Tokenization, eval split and cache.")
    train: TrainConfig = Field(
        TrainConfig(), description="The whole budget S (prefix + final training) and its one WSD schedule.")
    method: PretrainMethodConfig = Field(PretrainMethodConfig(), description="OP-Mix's own settings.")
    # baselines trained under the same budget: "none", one name, or several ("erm,natural" or a list)
    baseline: str | list[str] = Field(
        "none", description="Baselines trained under the same budget: `none`, or any of `erm`, `natural`, `swarm`, "
                            "`mergemix`, comma-separated or as a list.")
    swarm: SwarmConfig = Field(SwarmConfig(), description="Settings of the swarm baseline.")

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        names = check_run_inputs(self.domains, self.model, self.tokenizer)
        if self.method.initial_mixture is not None:
            unknown = sorted(set(self.method.initial_mixture) - set(names))
            if unknown:
                raise ValueError(f"method.initial_mixture names unknown domain(s) {unknown}; fix: use the known domains {names}")
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
        m = len(self.domains)
        if self.swarm.k is not None and self.swarm.k < m + 1:
            raise ValueError(
                f"swarm.k={self.swarm.k} proxy models cannot determine the swarm's laws: each law over the {m} domains "
                f"has {m + 1} parameters; fix: raise swarm.k to at least {m + 1} (default 3(m+1) = {3 * (m + 1)})"
            )
        if self.swarm_steps < 1:
            raise ValueError(f"swarm.fraction gives 0 steps of {self.train.steps} per swarm model; fix: raise it or "
                             "train.steps")
        if "mergemix" in self.baselines and prefix_steps + self.probe_steps > self.train.steps:
            raise ValueError(
                f"the prefix ({prefix_steps} steps) and a probe ({self.probe_steps} steps) together exceed train.steps="
                f"{self.train.steps}, so the mergemix baseline's models would train past the budget; fix: lower "
                "method.probe_fraction or method.prefix_fraction"
            )
        law_params = len(self.domains) + 2  # c and one exponent per component: m + 2 for the m + 1 components
        if self.method.n_proxies <= law_params:
            raise ValueError(
                f"method.n_proxies={self.method.n_proxies} cannot overdetermine the laws: each law exp(c) + exp(t . x) "
                f"over the {len(self.domains) + 1} components has {law_params} parameters, so it needs more than "
                f"{law_params} proxies; fix: raise method.n_proxies to {2 * law_params} or more (the minimum is "
                f"{law_params + 1})"
            )
        if self.method.n_proxies < 2 * law_params:
            logger.warning(
                "method.n_proxies=%d is under twice the %d parameters of each law: its fit error says little; "
                "raise it to at least %d", self.method.n_proxies, law_params, 2 * law_params,
            )
        return self

    @field_validator("baseline")
    @classmethod
    def _known_baselines(cls, value):
        names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
        names = [] if names == ["none"] else names
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; fix: use any of {list(BASELINES)}, comma-separated, "
                             "or none")
        return ",".join(dict.fromkeys(names)) or "none"

    @property
    def baselines(self) -> list[str]:
        return [] if self.baseline == "none" else self.baseline.split(",")

    @property
    def swarm_k(self) -> int:
        """The swarm's number of proxy models: swarm.k, or 3(m+1) by default."""
        return self.swarm.k if self.swarm.k is not None else 3 * (len(self.domains) + 1)

    @property
    def swarm_steps(self) -> int:
        return round(self.swarm.fraction * self.train.steps)

    @property
    def prefix_steps(self) -> int:
        return round(self.method.prefix_fraction * self.train.steps)

    @property
    def probe_steps(self) -> int:
        return round(self.method.probe_fraction * self.train.steps)
