"""The probe cache: a probe already trained is never trained again, across runs and updates.

A probe is a pure function of what it starts from and what it trains on, so it is keyed by content:

- the base checkpoint's trainable weights (their sha256, which the checkpoint records);
- the probe's data mixture, with the sha256 of each drawn domain's train tokens (computed once per token-cache
  entry and kept beside it);
- every setting that changes the trained adapter: steps, learning rate and schedule, LoRA settings, batch and
  sequence length, the sampler's seed, the training settings the loop reads, the number of processes.

Layout: ``<cache>/<key>/adapter/`` (the PEFT adapter) and ``<cache>/<key>/entry.json`` (the key's source, each
adapter file's size and sha256, and what training the probe cost). Entries are written atomically and verified
on every hit; a damaged entry is a miss (and is replaced). Runs that name the same folder share it; by default
it is ``opmix-probe-cache`` beside the run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from opmix.run.atomic import atomic_dir, write_text
from opmix.run.rundir import sha256_file
from opmix.train.checkpoint import STATE, WEIGHTS

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_FOLDER = "opmix-probe-cache"
_ENTRY = "entry.json"
_TOKENS_HASH = "train.sha256"  # beside a token-cache entry's arrays
_TRAIN_SETTINGS_IGNORED = ("steps", "checkpoint_every", "eval_batch_size", "warmup_fraction", "decay_fraction")


def cache_folder(enabled: bool, path: str | None, run_root: Path) -> Path | None:
    """The cache folder a run uses: None when disabled, the configured one, else beside the run directory."""
    if not enabled:
        return None
    return Path(path).expanduser().resolve() if path else Path(run_root).resolve().parent / DEFAULT_FOLDER


def base_weights_hash(checkpoint: Path) -> str:
    """sha256 of a trainer checkpoint's trainable weights, as the checkpoint itself recorded it."""
    state = json.loads((Path(checkpoint) / STATE).read_text(encoding="utf-8"))
    return state["files"][WEIGHTS]["sha256"]


def tokens_hash(train: np.ndarray, entry: Path | None) -> str:
    """sha256 of a domain's train token array; memoised in its token-cache entry (entries never change)."""
    memo = Path(entry) / _TOKENS_HASH if entry is not None else None
    if memo is not None and memo.is_file():
        return memo.read_text(encoding="utf-8").strip()
    digest = hashlib.sha256(f"{train.dtype.str}{train.shape}".encode())
    flat = train.reshape(-1)
    for start in range(0, flat.size, 1 << 22):  # bounded memory for memory-mapped domains of any size
        digest.update(np.ascontiguousarray(flat[start:start + (1 << 22)]).tobytes())
    value = digest.hexdigest()
    if memo is not None:
        write_text(memo, value + "\n")
    return value


def probe_key(base: Path, mixture: Mapping[str, float], data_hashes: Mapping[str, str], settings: Mapping) -> tuple:
    """The probe's cache key and the JSON it hashes (kept in the entry, so a hit can be explained)."""
    drawn = {name: float(w) for name, w in sorted(mixture.items()) if w > 0}
    source = {
        "format": CACHE_FORMAT,
        "base": base_weights_hash(base),
        "mixture": {name: round(w, 12) for name, w in drawn.items()},
        "data": {name: data_hashes[name] for name in drawn},
        "settings": settings,
    }
    text = json.dumps(source, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], source


def train_settings(train) -> dict:
    """The training settings that shape a probe (the full run's length and schedule do not)."""
    return {k: v for k, v in train.model_dump(mode="json").items() if k not in _TRAIN_SETTINGS_IGNORED}


class ProbeCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def lookup(self, key: str) -> tuple[Path, dict] | None:
        """The cached adapter folder and its entry, when present and every file verifies."""
        entry_dir = self.root / key
        try:
            entry = json.loads((entry_dir / _ENTRY).read_text(encoding="utf-8"))
            for name, record in entry["files"].items():
                path = entry_dir / "adapter" / name
                if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
                    raise ValueError(f"{path} does not match its record")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as problem:
            log.warning("probe cache entry %s is damaged (%s): training the probe again", entry_dir, problem)
            return None
        return entry_dir / "adapter", entry

    def store(self, key: str, source: dict, adapter: Path, cost: Mapping[str, float]) -> None:
        """Keep a trained adapter under ``key``; a failure to write the cache never fails the run."""
        try:
            with atomic_dir(self.root / key) as tmp:
                shutil.copytree(adapter, tmp / "adapter")
                files = {str(p.relative_to(tmp / "adapter")): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                         for p in sorted((tmp / "adapter").rglob("*")) if p.is_file()}
                (tmp / _ENTRY).write_text(json.dumps({"key": source, "files": files, "cost": dict(cost)},
                                                     sort_keys=True, indent=1))
        except Exception as problem:  # noqa: BLE001 - the probe is trained and saved in the run; the cache is extra
            log.warning("could not keep the probe in the cache %s (%s): later runs will train it again",
                        self.root, problem)
