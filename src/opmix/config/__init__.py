"""Typed configs: YAML is the source of truth, pydantic validates it (unknown keys are errors)."""

from opmix.config.base import (
    DataConfig,
    DomainConfig,
    LoraConfig,
    ModelConfig,
    ProposerConfig,
    TrainConfig,
)
from opmix.config.loading import apply_overrides, load_config
from opmix.config.pretrain import PretrainConfig, PretrainMethodConfig

__all__ = [
    "DataConfig",
    "DomainConfig",
    "LoraConfig",
    "ModelConfig",
    "PretrainConfig",
    "PretrainMethodConfig",
    "ProposerConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
]
