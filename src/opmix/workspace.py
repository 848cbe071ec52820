"""What every stage of a run shares: the run directory, tokenizer, tokenized domains, base model, accelerator."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from opmix.config.base import DataConfig, DomainConfig, ModelConfig, TrainConfig
from opmix.data.cache import TokenizedDomain, prepare_domain
from opmix.data.tokenizer import load_tokenizer
from opmix.errors import OpmixError
from opmix.model import builtin_model, check_causal_lm_dir, check_vocabulary, load_model
from opmix.run.ledger import ComputeLedger, count_params
from opmix.run.rundir import RunDir
from opmix.train.loop import make_accelerator

log = logging.getLogger(__name__)


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

    @property
    def domain_names(self) -> list[str]:
        return list(self.domains)

    def train_sets(self) -> dict[str, np.ndarray]:
        return {name: d.train for name, d in self.domains.items()}

    def eval_sets(self) -> dict[str, np.ndarray]:
        return {name: d.eval for name, d in self.domains.items()}

    def sampler_seed(self, offset: int) -> int:
        # each data-parallel process draws its own batches
        return self.seed + offset + 7919 * self.accelerator.process_index


def check_inputs(model: ModelConfig, domains: list[DomainConfig]) -> None:
    """Cheap checks that fail before any tokenization or compute."""
    for domain in domains:
        for path in [*domain.files, *domain.eval_files]:
            if not Path(path).exists():
                raise OpmixError(f"domain {domain.name!r}: {path} does not exist", "check the domain's files")
    if model.path is not None:
        check_causal_lm_dir(model.path, model.trust_remote_code)


def open_workspace(
    run: RunDir,
    model: ModelConfig,
    tokenizer_spec: str | None,
    domains: list[DomainConfig],
    data: DataConfig,
    train: TrainConfig,
    seed: int,
) -> Workspace:
    check_inputs(model, domains)
    tokenizer = load_tokenizer(tokenizer_spec or str(model.path))
    if model.path is not None:  # before tokenizing: ids past the model's embedding table would fail mid-training
        rows = getattr(check_causal_lm_dir(model.path, model.trust_remote_code), "vocab_size", None)
        if isinstance(rows, int):
            check_vocabulary(rows, tokenizer)
    cache_dir = Path(data.cache_dir) if data.cache_dir else run.path("cache")
    tokenized = {
        d.name: prepare_domain(
            d.name,
            d.files,
            tokenizer,
            data.seq_len,
            cache_dir,
            eval_files=d.eval_files or None,
            eval_fraction=data.eval_fraction,
            text_field=d.text_field,
            seed=seed,
            bin_dtype=data.bin_dtype,
            max_eval_sequences=data.max_eval_sequences,
        )
        for d in domains
    }
    notes = [warning for domain in tokenized.values() for warning in domain.warnings]
    for note in notes:
        log.warning("%s", note)
    accelerator = make_accelerator(train.precision)

    def new_model() -> torch.nn.Module:
        if model.builtin is not None:
            fresh = builtin_model(model.builtin, vocab_size=len(tokenizer), seed=seed, max_positions=data.seq_len)
        else:
            fresh = load_model(model.path, model.trust_remote_code)
        check_vocabulary(fresh, tokenizer)
        return fresh.to(accelerator.device)

    probe = new_model()
    n_params = count_params(probe)
    del probe
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
    )
