"""What every stage of a run shares: the run directory, tokenizer, tokenized domains, base model, accelerator."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from opmix.config.base import (
    DataConfig,
    DomainConfig,
    ModelConfig,
    ProbeCacheConfig,
    TrainConfig,
)
from opmix.data.cache import TokenizedDomain, load_domains, max_eval_tokens
from opmix.data.readers import SourceCheck, inspect_sources
from opmix.data.tokenizer import load_tokenizer
from opmix.errors import OpmixError
from opmix.eval import evaluate
from opmix.model import (
    builtin_model,
    check_causal_lm_dir,
    check_sequence_length,
    check_vocabulary,
    load_model,
    model_vocab_size,
)
from opmix.probes.cache import ProbeCache, cache_folder
from opmix.run.ledger import ComputeLedger, count_params, eval_flops
from opmix.run.rundir import RunDir
from opmix.train.loop import make_accelerator

log = logging.getLogger(__name__)


@dataclass
class Measured:
    """A model measured on some domains: the metric per domain (lower is better), its FLOPs and tokens, and any
    further figures per domain (``extra``: e.g. accuracy and generated tokens for instruction tasks)."""

    values: dict[str, float]
    flops: float
    tokens: int
    extra: dict = field(default_factory=dict)


@dataclass
class Workspace:
    run: RunDir
    tokenizer: object
    domains: dict[str, TokenizedDomain]
    new_model: Callable[[], torch.nn.Module]  # a fresh copy of the starting model (random init or loaded)
    accelerator: object
    train: TrainConfig
    seed: int
    ledger: ComputeLedger
    n_params: int  # N for FLOPs (input embeddings excluded)
    notes: list[str] = field(default_factory=list)  # warnings collected for summary.json
    probe_cache: ProbeCache | None = None  # trained probes kept by content, shared across runs (None: off)
    # What a training step optimises and how a model is measured: language modeling and per-domain eval loss by
    # default; the instruction recipe gives its learner (SFT, SDFT) and its metric (error rate or response loss).
    learner: Callable[[], object] | None = None  # a fresh learner per trainer (it may hold state, e.g. an EMA)
    metric: Callable[[torch.nn.Module, list[str], bool], Measured] | None = None
    learner_settings: dict = field(default_factory=dict)  # part of a probe's cache key (empty: language modeling)

    @property
    def domain_names(self) -> list[str]:
        return list(self.domains)

    def train_sets(self) -> dict[str, np.ndarray]:
        return {name: d.train for name, d in self.domains.items()}

    def eval_sets(self) -> dict[str, np.ndarray]:
        return {name: d.eval for name, d in self.domains.items()}

    def new_learner(self):
        return self.learner() if self.learner is not None else None

    def measure(self, model: torch.nn.Module, domains: Sequence[str] | None = None, final: bool = False) -> Measured:
        """The run's metric (lower is better) on the eval split of each of ``domains`` (default: all), and the
        compute it took: per-domain eval loss unless the recipe set ``metric``. ``final``: a trained model at the
        end of a step, which a metric may report more figures on (``Measured.extra``)."""
        names = list(domains) if domains is not None else self.domain_names
        if self.metric is not None:
            return self.metric(model, names, final)
        sets = {d: self.domains[d].eval for d in names}
        tokens = sum(int(s.size) for s in sets.values())
        return Measured(evaluate(model, sets, self.train.eval_batch_size), eval_flops(self.n_params, tokens), tokens)

    def training_accelerator(self):
        """What trains a model over all the run's processes: the accelerator (DDP), or FSDP when asked for."""
        if self.train.parallel == "fsdp" and self.accelerator.num_processes > 1:
            from opmix.train.fsdp import FSDPAccelerator

            return FSDPAccelerator(self.accelerator)
        return self.accelerator

    def sampler_seed(self, offset: int) -> int:
        # the same on every process: they cut the same global batches (MixtureSampler's rank and world_size)
        return self.seed + offset


def check_inputs(
    model: ModelConfig, domains: list[DomainConfig], data: DataConfig | None = None, tokenizer: str | None = None
):
    """Every check that needs no tokenization or compute, cheapest first; raises a one-line OpmixError.

    Always: each domain's files exist (glob patterns match), are readable, of a supported kind, and start as
    their kind says (UTF-8, the JSONL text field, the Parquet column, 1-D integer token arrays); a local model
    directory has a causal-LM config.json and safetensors weights. With ``data`` (``tokenizer`` is then the
    config's tokenizer, None for the model directory's): ``data.seq_len`` fits the model's positions, each domain
    can hold one train and one eval sequence as far as its file sizes tell, and the tokenizer loads and fits the
    model's vocabulary. Returns that tokenizer (None without ``data``)."""
    sources = {domain.name: _inspect_domain(domain, data) for domain in domains}
    config = check_causal_lm_dir(model.path, model.trust_remote_code) if model.path is not None else None
    if data is None:
        return None
    if config is not None:
        check_sequence_length(config, data.seq_len, model.path)
    for domain in domains:
        _check_domain_size(domain.name, *sources[domain.name], data)
    loaded = load_tokenizer(tokenizer or str(model.path))
    rows = model_vocab_size(config) if config is not None else None
    if rows is not None:  # ids past the model's embedding table would fail mid-training
        check_vocabulary(rows, loaded)
    return loaded


def _inspect_domain(domain: DomainConfig, data: DataConfig | None) -> tuple[SourceCheck, SourceCheck | None]:
    bin_dtype = data.bin_dtype if data is not None else None  # unknown: .bin sizes are checked with data
    try:
        train = inspect_sources(domain.files, domain.text_field, bin_dtype)
        evals = inspect_sources(domain.eval_files, domain.text_field, bin_dtype) if domain.eval_files else None
    except OpmixError as error:
        raise OpmixError(f"domain {domain.name!r}: {error.problem}", error.fix) from None
    return train, evals


def _check_domain_size(name: str, train: SourceCheck, evals: SourceCheck | None, data: DataConfig) -> None:
    """What file sizes already tell (an upper bound on the tokens, exact for token arrays): too few tokens for one
    train and one eval sequence is certain before anything is tokenized."""
    seq_len = data.seq_len
    splits = [("train", train)] if evals is None else [("train", train), ("eval", evals)]
    for split, check in splits:
        if check.max_tokens == 0:
            where = "files" if split == "train" else "eval_files"
            raise OpmixError(f"domain {name!r} has no tokens in its {where}: they are empty or blank",
                             f"add data to the domain's {where}")
    for split, check in splits if evals is not None else []:  # separate eval files: each split on its own
        if check.max_tokens is not None and check.max_tokens < seq_len:
            more = "add more data to the domain" if split == "train" else "add more eval files"
            raise OpmixError(
                f"domain {name!r} has {_at_most(check)}{check.max_tokens} {split} tokens, fewer than one sequence "
                f"of seq_len={seq_len}",
                f"{more}, or use a smaller data.seq_len",
            )
    if evals is not None or train.max_tokens is None:
        return
    if train.max_tokens < 2 * seq_len:
        raise OpmixError(
            f"domain {name!r} has {_at_most(train)}{train.max_tokens} tokens, fewer than one train and one eval "
            f"sequence of seq_len={seq_len} ({2 * seq_len} tokens)",
            "add more data to the domain, or use a smaller data.seq_len",
        )
    held_out = max_eval_tokens(train.max_tokens, data.eval_fraction)
    if held_out < seq_len:
        raise OpmixError(
            f"domain {name!r} has {_at_most(train)}{train.max_tokens} tokens, so its held-out eval split "
            f"(data.eval_fraction={data.eval_fraction}) has at most {held_out}, fewer than one sequence of "
            f"seq_len={seq_len}",
            "raise data.eval_fraction, give the domain eval_files, add data, or use a smaller data.seq_len",
        )


def _at_most(check: SourceCheck) -> str:
    return "" if check.pretokenized else "at most "  # token arrays are counted exactly, text bounded by its bytes


def open_workspace(
    run: RunDir,
    model: ModelConfig,
    tokenizer_spec: str | None,
    domains: list[DomainConfig],
    data: DataConfig,
    train: TrainConfig,
    seed: int,
    probe_cache: ProbeCacheConfig | None = None,
) -> Workspace:
    tokenizer = check_inputs(model, domains, data, tokenizer_spec)  # before tokenizing anything
    accelerator = make_accelerator(train.precision)  # also before: bf16 without CUDA is a bad input
    cache_dir = Path(data.cache_dir) if data.cache_dir else run.path("cache")
    tokenized = load_domains(
        {d.name: d.files for d in domains}, tokenizer, data.seq_len, cache_dir,
        eval_fraction=data.eval_fraction, eval_files={d.name: d.eval_files for d in domains if d.eval_files},
        text_field={d.name: d.text_field for d in domains}, seed=seed, bin_dtype=data.bin_dtype,
        max_eval_sequences=data.max_eval_sequences,
    )
    notes = [warning for domain in tokenized.values() for warning in domain.warnings]
    for note in notes:
        log.warning("%s", note)

    new_model, n_params = model_factory(model, tokenizer, seed, data.seq_len, accelerator)
    return Workspace(
        run=run,
        tokenizer=tokenizer,
        domains=tokenized,
        new_model=new_model,
        accelerator=accelerator,
        train=train,
        seed=seed,
        ledger=ComputeLedger(run.path("ledger.json")),
        n_params=n_params,
        notes=notes,
        probe_cache=_probe_cache(probe_cache, run),
    )


def model_factory(model: ModelConfig, tokenizer, seed: int, max_positions: int,
                  accelerator) -> tuple[Callable[[], torch.nn.Module], int]:
    """A function giving a fresh copy of the starting model on the accelerator's device, and N for FLOPs."""

    def new_model() -> torch.nn.Module:
        if model.builtin is not None:
            fresh = builtin_model(model.builtin, vocab_size=len(tokenizer), seed=seed, max_positions=max_positions)
        else:
            fresh = load_model(model.path, model.trust_remote_code)
        check_vocabulary(fresh, tokenizer)
        return fresh.to(accelerator.device)

    probe = new_model()
    n_params = count_params(probe)
    del probe
    return new_model, n_params


def _probe_cache(settings: ProbeCacheConfig | None, run: RunDir) -> ProbeCache | None:
    folder = cache_folder(settings.enabled, settings.path, run.root) if settings is not None else None
    if folder is not None:
        log.debug("probe cache: %s", folder)
    return ProbeCache(folder) if folder is not None else None
