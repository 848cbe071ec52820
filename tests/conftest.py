"""Shared fixtures: small real-text domains harvested from the Python installation, and a tiny config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> dict[str, list[Path]]:
    from opmix.data.demo import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("corpus"), max_bytes=120_000)


@pytest.fixture
def tiny_pretrain_raw(tiny_pretrain_base) -> dict:
    """A pretraining config that runs end to end in seconds on CPU (a fresh copy per test)."""
    return copy.deepcopy(tiny_pretrain_base)


@pytest.fixture(scope="session")
def tiny_pretrain_base(demo_corpus) -> dict:
    """The tiny config itself, for module-scoped fixtures; copy it before changing it."""
    return {
        "seed": 0,
        "model": {"builtin": "llama-tiny"},
        "tokenizer": "builtin:bytes",
        "domains": [{"name": n, "files": [str(p) for p in paths]} for n, paths in demo_corpus.items()],
        "data": {"seq_len": 32, "eval_fraction": 0.1, "max_eval_sequences": 8},
        "train": {"steps": 20, "batch_size": 4, "lr": 3e-3, "eval_batch_size": 8},
        # 10 proxies for laws of 5 parameters (old + 3 domains): overdetermined, so fit errors mean something
        "method": {"n_proxies": 10, "lora": {"r": 4, "alpha": 8}},
        "baseline": "erm",
    }
