"""Config sections shared by every recipe. Defaults are SPEC's published ones.

Every field carries a ``description``: ``python -m opmix.config.docs`` renders them into docs/config-*.md.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    """A local Hugging Face causal-LM directory, or a named built-in config initialised at random."""

    path: Path | None = Field(
        None, description="A local Hugging Face directory of any `AutoModelForCausalLM` with safetensors weights. "
                          "Give exactly one of `path` and `builtin`.")
    builtin: str | None = Field(
        None, description="A built-in Llama config initialised at random: `llama-tiny`, `llama-1m`, `llama-5m` or "
                          "`llama-30m` (see `opmix.model.BUILTIN_CONFIGS`); it needs `tokenizer` set.")
    trust_remote_code: bool = Field(
        False, description="Run the model directory's own Python code. Off unless you trust that code.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("model needs exactly one source; fix: give exactly one of model.path (a local HF model directory) or model.builtin")
        return self


class DomainConfig(Section):
    """One source of training data, with a train split and a held-out eval split."""

    name: str = Field(min_length=1, description="The domain's unique name (not `old`, which names the collapsed "
                                                "old-mixture component).")
    files: list[Path] = Field(
        min_length=1, description="Files or folders of training data: plain text (`.txt`, `.md`, `.py`, ...), JSONL, "
                                  "Parquet, or pre-tokenized `.npy` / `.bin` token arrays. Relative paths are "
                                  "resolved against the config file's folder.")
    eval_files: list[Path] = Field(
        [], description="A separate eval split. Empty: about `data.eval_fraction` of the domain's tokens (a random "
                        "sample of whole documents, or pieces spread over a single stream) is held out.")
    text_field: str = Field("text", description="The JSONL key or Parquet column that holds the text.")

    @field_validator("files", "eval_files")
    @classmethod
    def _expand_globs(cls, paths: list[Path]) -> list[Path]:
        """A glob pattern (`data/*.txt`, `data/**/*.jsonl`) stands for the sorted paths it matches, so the saved
        config.yaml lists the files the run read."""
        expanded: list[Path] = []
        for path in paths:
            if not glob.has_magic(str(path)) or path.exists():
                expanded.append(path)
                continue
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise ValueError(f"the pattern {path} matches no file; fix: check the pattern (relative ones start at "
                                 "the config file's folder; ** spans folders), or list the files")
            expanded += [Path(match) for match in matches]
        return expanded


class DataConfig(Section):
    """Tokenization, the eval split and the token cache."""

    seq_len: int = Field(256, ge=8, description="Tokens per training and eval sequence.")
    eval_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="Fraction of a domain held out for evaluation when it has no `eval_files`.")
    # per domain, evenly spread over the eval split: bounds the eval cost (12 proxies x domains x this). 256 keeps the
    # eval-set noise under 1/5 of the loss gap between mixtures on the demo; 64 did not (bench_eval_noise.py)
    max_eval_sequences: int = Field(
        256, ge=1, description="At most this many eval sequences per domain, spread evenly over the eval split. It "
                               "bounds the cost of evaluating every proxy; 256 kept the eval noise under 1/5 of the "
                               "loss gaps between mixtures on the demo domains (docs/FIDELITY.md).")
    bin_dtype: Literal["uint16", "uint32"] = Field(
        "uint16", description="The dtype of raw token files: `.bin` without a Megatron `.idx` beside it, and `.npy` "
                               "without a NumPy header (OLMo/Dolma's token files).")
    cache_dir: Path | None = Field(
        None, description="Where tokenized domains are cached as `.npy`. Null: `<run dir>/cache`.")
    allow_repetition: bool = Field(
        False, description="Train on mixtures that consume a domain more than `method.proposer.repetition_factor` "
                           "(k) times its train tokens over the run. Off: such a mixture (a user-given "
                           "`method.initial_mixture`, a fixed-mixture baseline, the guard's safe mixture) is refused "
                           "with an error before training. On: it is trained, with a warning; the proposer's caps "
                           "still apply.")


class TrainConfig(Section):
    """The training budget and its warmup-stable-decay (WSD) learning-rate schedule; in continual midtraining, the
    budget and schedule of one stage."""

    steps: int = Field(1000, ge=1, description="Optimizer steps: the whole budget S in pretraining (prefix and final "
                                              "training), the steps of every stage in continual midtraining.")
    batch_size: int = Field(
        16, ge=1, description="Sequences per optimizer step **in each process** (not global): with N data-parallel "
                              "processes (`accelerate launch`) one step consumes `batch_size` x N sequences. Each "
                              "accumulation micro-step draws `batch_size // grad_accum` of them, so keep it a "
                              "multiple of `grad_accum`.")
    grad_accum: int = Field(
        1, ge=1, description="Gradient-accumulation micro-steps per optimizer step; the step's `batch_size` "
                             "sequences are split evenly between them.")
    lr: float = Field(3e-3, gt=0, description="Peak (flat-phase) learning rate of AdamW.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas (beta1, beta2).")
    warmup_fraction: float = Field(
        0.02, ge=0, lt=1, description="Linear warmup over this fraction of the steps, at the start of the schedule.")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="Linear decay over this last fraction of the steps (the D of WSD).")
    final_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="The decay ends at this fraction of `lr`.")
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient norm to this value.")
    eval_batch_size: int = Field(16, ge=1, description="Sequences per forward pass when evaluating.")
    checkpoint_every: int = Field(
        0, ge=0, description="Optimizer steps between resumable checkpoints inside a training step (weights, "
                             "optimizer, sampler, RNG). 0: a checkpoint only at the end of each step.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`auto`: bf16 autocast on CUDA, fp32 on CPU.")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="How several processes (`torchrun`, `accelerate launch`) share a training step: `ddp`, "
                           "every process holds the whole model and gradients are averaged; `fsdp`, PyTorch FSDP2 "
                           "full shard (parameters, gradients and optimizer state split across the processes, each "
                           "decoder layer a unit), for models that do not fit one device. Ignored with one process. "
                           "Probes trained concurrently, one per process, are never sharded.")
    eval_every: int = Field(
        0, ge=0, description="Log the per-domain eval loss every N steps. 0: only at the end of a training step.")


class LoraConfig(Section):
    """The probes' LoRA adapters (on attention and MLP linear layers; embeddings and LM head excluded)."""

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha: the delta is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout on the adapted layers' inputs.")


class ProbeCacheConfig(Section):
    """Trained probes kept by content (the base weights, the mixture and the hashes of its token data, every probe
    setting) and reused instead of trained again, across runs and updates."""

    enabled: bool = Field(True, description="Look probes up in the cache and keep newly trained ones there.")
    path: str | None = Field(
        None, description="The cache folder, shared by every run that names it. Null: `opmix-probe-cache` beside "
                          "the run directory (shared by the runs in the same folder).")


class LawConfig(Section):
    """The fit of each mixing law `exp(c) + exp(t . x)` (multi-start L-BFGS on a Huber loss)."""

    huber_delta: float = Field(0.02, gt=0, description="Huber loss threshold on the residuals.")
    n_c_starts: int = Field(10, ge=1, description="Starting values of c, evenly spaced over [-2, 1.5].")
    n_t_starts: int = Field(30, ge=1, description="Random starting values of t per starting c.")


class ProposerConfig(Section):
    """The KL-regularised convex program that turns the fitted laws into a mixture."""

    kl_weight: float = Field(
        0.05, ge=0, description="lambda: the weight of KL(M x || q), which pulls the mixture toward the prior q. "
                                "0: no prior.")
    repetition_factor: float | None = Field(
        4.0, gt=0, description="k of the Olmix caps: over the whole run a domain is consumed at most k times its "
                               "train tokens N_d. The proposer bounds each domain's expanded weight `(M x)_d <= "
                               "(k N_d - U_d) / R`, with U_d the tokens of d earlier training of the same model "
                               "already consumed (pretraining: the prefix; continual: the earlier stages) and R the "
                               "tokens the training being planned consumes (all processes). A fixed mixture that "
                               "would go past k is refused unless `data.allow_repetition`. Null: no caps and no "
                               "check. Default 4, as Olmix.")
    solver: Literal["CLARABEL", "SCS"] = Field(
        "CLARABEL", description="The cvxpy solver tried first; the other one is the fallback.")


class GuardConfig(Section):
    """The guard: a short real check of the proposal against the safe mixture (the prior's) before the full
    training commits to either. The full training continues the check run of the mixture that wins, so the
    guard's own cost is the losing run (and two evaluations)."""

    enabled: bool = Field(True, description="Run the guard. Off: the proposal is trained unchecked.")
    check_fraction: float = Field(
        0.1, gt=0, le=0.5, description="Length of each of the two check runs, as a fraction of the final training "
                                       "(pretraining) or of a stage (continual).")
    # no check when the proposal is this close to the safe mixture (total-variation distance of domain weights):
    # the two would train alike and a short run could not tell them apart
    min_distance: float = Field(
        0.05, ge=0, le=1, description="No check when the proposal is within this total-variation distance of the "
                                      "safe mixture: the two would train alike, so the safe mixture is kept.")
    # fall back only when the proposal's real loss is above the safe mixture's by more than this fraction: a
    # check this short misjudges the full-length difference by ~0.6-0.8% on the continual test beds
    # (docs/FIDELITY.md), so a smaller gap is not evidence against the proposal
    margin: float = Field(
        0.01, ge=0, lt=1, description="Fall back to the safe mixture only when the proposal's mean eval loss in the "
                                      "check is worse by more than this fraction. A check this short misjudges the "
                                      "full-length difference by about 0.6-0.8% (docs/FIDELITY.md).")


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
