"""``opmix continual demo``: a tiny byte-level Llama pretrained on the embedded demo corpus (stdlib code, reference
prose, Unicode records), then four more domains in order (C headers, docstrings, calendars, package READMEs);
CPU, offline, minutes. Both configs are plain dicts, validated by the CLI like any user config."""

from __future__ import annotations

from pathlib import Path

SEQ_LEN = 64


def demo_pretrain_config(data_dir: Path) -> dict:
    """The start model: the pretraining demo's recipe at a smaller size (llama-tiny, 64-byte sequences)."""
    from opmix.demo import demo_config

    raw = demo_config(data_dir)
    raw.update({
        "model": {"builtin": "llama-tiny"},
        "data": {"seq_len": SEQ_LEN, "eval_fraction": 0.05, "max_eval_sequences": 256},
        "train": {"steps": 800, "batch_size": 16, "lr": 3e-3, "warmup_fraction": 0.02, "decay_fraction": 0.2,
                  "checkpoint_every": 50},  # Ctrl-C loses at most 50 steps
        "method": {"n_proxies": 12, "lora": {"r": 4, "alpha": 8}},
        "baseline": "none",
    })
    return raw


def demo_continual_config(data_dir: Path, start_run: Path) -> dict:
    """Four domains after the pretrained model, 300 steps per stage, probes of 25% of a stage."""
    from opmix.data.continual_demo import build_continual_demo_corpus

    corpus = build_continual_demo_corpus(data_dir)
    return {
        "seed": 0,
        "model": {"path": str(start_run)},  # a pretraining run directory: its final/model
        "domains": [{"name": name, "files": [str(p) for p in paths]} for name, paths in corpus.items()],
        "data": {"seq_len": SEQ_LEN, "eval_fraction": 0.05, "max_eval_sequences": 256},
        "train": {"steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_fraction": 0.02, "decay_fraction": 0.2,
                  "checkpoint_every": 50},  # Ctrl-C loses at most 50 steps
        # r = 4 (alpha 8, the same alpha/r as SPEC's 16/32): at hidden size 32 a rank-16 adapter would be as
        # large as the layers it adapts
        "method": {"probe_fraction": 0.25, "lora": {"r": 4, "alpha": 8}},
    }
