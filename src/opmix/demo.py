"""The embedded default: real text harvested from the Python installation, a small Llama, a byte tokenizer.

``opmix demo`` runs the whole pretraining recipe and the ERM baseline on it, on CPU, offline, in a few minutes.
"""

from __future__ import annotations

from pathlib import Path


def demo_config(data_dir: Path) -> dict:
    """The demo's config as a plain dict (validated by the CLI like any user config)."""
    from opmix.data.demo import build_demo_corpus

    corpus = build_demo_corpus(data_dir)
    return {
        "seed": 0,
        "model": {"builtin": "llama-1m"},
        "tokenizer": "builtin:bytes",
        "domains": [{"name": name, "files": [str(p) for p in paths]} for name, paths in corpus.items()],
        "data": {"seq_len": 128, "eval_fraction": 0.05, "max_eval_sequences": 256},
        "train": {"steps": 600, "batch_size": 16, "lr": 3e-3, "warmup_fraction": 0.02, "decay_fraction": 0.2,
                  "checkpoint_every": 50},  # Ctrl-C loses at most 50 steps
        "method": {"n_proxies": 12},
        "baseline": "erm",
    }
