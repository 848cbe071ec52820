"""Config sections shared by every recipe. Defaults are SPEC's published ones."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    """A local Hugging Face causal-LM directory, or a named built-in config initialised at random."""

    path: Path | None = None
    builtin: str | None = None  # e.g. "llama-1m" (see opmix.model.BUILTIN_CONFIGS)
    trust_remote_code: bool = False  # never trust a model's own code unless the user says so

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("model needs exactly one source; fix: give exactly one of model.path (a local HF model directory) or model.builtin")
        return self


class DomainConfig(Section):
    name: str = Field(min_length=1)
    files: list[Path] = Field(min_length=1)  # files or folders: text, JSONL, Parquet, .npy/.bin token arrays
    eval_files: list[Path] = []  # a separate eval split; else the held-out fraction of data.eval_fraction
    text_field: str = "text"  # JSONL key / Parquet column holding the text


class DataConfig(Section):
    seq_len: int = Field(256, ge=8)
    eval_fraction: float = Field(0.05, gt=0, lt=0.5)
    # per domain, evenly spread over the eval split: bounds the eval cost (12 proxies x domains x this). 256 keeps the
    # eval-set noise under 1/5 of the loss gap between mixtures on the demo; 64 did not (bench_eval_noise.py)
    max_eval_sequences: int = Field(256, ge=1)
    bin_dtype: Literal["uint16", "uint32"] = "uint16"  # dtype of raw .bin token files
    cache_dir: Path | None = None  # default: <run dir>/cache


class TrainConfig(Section):
    """The budget of the full training run and its WSD schedule."""

    steps: int = Field(1000, ge=1)  # S: the whole budget (prefix + final)
    batch_size: int = Field(16, ge=1)  # sequences per optimizer step (per process)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = Field(0.02, ge=0, lt=1)
    decay_fraction: float = Field(0.2, gt=0, le=1)  # linear decay over the last fraction of the steps ...
    final_lr_ratio: float = Field(0.1, ge=0, le=1)  # ... down to this fraction of lr
    grad_clip: float = Field(1.0, gt=0)
    eval_batch_size: int = Field(16, ge=1)
    checkpoint_every: int = Field(0, ge=0)  # steps between resumable checkpoints inside a training step; 0 = only at the end
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    eval_every: int = Field(0, ge=0)  # per-domain eval loss logged every N steps; 0 = only at the end


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)


class LawConfig(Section):
    huber_delta: float = Field(0.02, gt=0)
    n_c_starts: int = Field(10, ge=1)
    n_t_starts: int = Field(30, ge=1)


class ProposerConfig(Section):
    kl_weight: float = Field(0.05, ge=0)  # lambda
    repetition_factor: float | None = Field(None, gt=0)  # caps x_j <= k N_j / R (Olmix); None = no caps
    solver: Literal["CLARABEL", "SCS"] = "CLARABEL"


class GuardConfig(Section):
    """SPEC section 8: a short real check of the proposal against the safe mixture (the prior's) before the full
    training commits to either. The full training continues the check run of the mixture that wins, so the
    guard's own cost is the losing run (and two evaluations)."""

    enabled: bool = True
    check_fraction: float = Field(0.1, gt=0, le=0.5)  # each check run: this fraction of the final training / stage
    # no check when the proposal is this close to the safe mixture (total-variation distance of domain weights):
    # the two would train alike and a short run could not tell them apart
    min_distance: float = Field(0.05, ge=0, le=1)
    # fall back only when the proposal's real loss is above the safe mixture's by more than this fraction: a
    # check this short misjudges the full-length difference by ~0.6-0.8% on the continual test beds
    # (docs/FIDELITY.md), so a smaller gap is not evidence against the proposal
    margin: float = Field(0.01, ge=0, lt=1)


def check_run_inputs(domains: list[DomainConfig], model: ModelConfig, tokenizer: str | None) -> list[str]:
    """Rules every recipe's config shares; returns the domain names. Raises ValueError naming the fix."""
    names = [d.name for d in domains]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate domain name(s) {duplicates}; fix: give each domain a unique name")
    if "old" in names:
        raise ValueError("a domain is named 'old', the name of the collapsed old-mixture component; fix: rename it")
    if model.builtin is not None and tokenizer is None:
        raise ValueError("a built-in model needs a tokenizer; fix: set tokenizer to a local directory or builtin:bytes")
    return names
