"""Tokenize a domain once, cache its token streams on disk as ``.npy``, and serve fixed-length sequences (memmap).

Layout: ``cache_dir/<domain>-<key>/{train.npy, eval.npy, meta.json}``. Every file is written atomically
(``opmix.run.atomic``); ``meta.json`` is written last, records the byte size of each ``.npy`` and marks the entry
complete, so an interrupted tokenization never leaves an entry that looks done, and an entry whose arrays were
truncated or removed since is rebuilt rather than trusted.

The key hashes the input files (absolute path, size, mtime), the tokenizer's identity (vocabulary size, EOS id and
a hash of its full definition), the split settings, the seed, ``text_field`` and ``bin_dtype``. ``seq_len`` and
``max_eval_sequences`` are *not* in the key: the cache holds whole token streams and sequences are views cut on
load, so changing them never re-tokenizes.

Text sources: documents are shuffled at document level (seeded), encoded, each followed by EOS, concatenated.
Without ``eval_files`` the eval split is the tail of that shuffled stream: whole documents from the end until they
hold at least ``eval_fraction`` of the tokens (at least one document stays in train). When whole documents cannot
give a sensible split (a single document, or a last document so large that the eval split would exceed twice the
fraction), the stream itself is cut at ``eval_fraction`` and one document straddles the split.

Pre-tokenized sources (``.npy``/``.bin``) are taken as they are: concatenated in file order, not shuffled, no EOS
added (they carry their own separators, as nanoGPT's ``.bin`` files do). Without ``eval_files`` the eval split is
the last ``eval_fraction`` of tokens, moved back to just after an EOS token when one precedes the cut, so no
document straddles the split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opmix.data.readers import (
    is_pretokenized,
    list_files,
    read_documents,
    read_token_arrays,
)
from opmix.errors import OpmixError
from opmix.run.atomic import atomic_file, write_json
from opmix.run.faults import fault_point

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when the stream layout changes, so old entries are not reused
ENCODE_BATCH_DOCS = 512  # documents per batch encode call: large enough for the Rust side's parallelism


@dataclass
class TokenizedDomain:
    name: str
    train: np.ndarray  # (n_train_seqs, seq_len) memmap of token ids
    eval: np.ndarray  # (n_eval_seqs, seq_len) memmap of token ids
    train_tokens: int  # tokens in the train sequences (= train.size; the cut remainder is not counted)
    eval_tokens: int  # tokens in the eval sequences (= eval.size)
    path: Path | None = None  # the cache entry folder


def vocab_size(tokenizer) -> int:
    """Ids a tokenizer can emit, added tokens included (``tokenizer.vocab_size`` leaves them out)."""
    return len(tokenizer)


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size(tokenizer) <= 1 << 16 else np.dtype(np.uint32)


def tokenizer_identity(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()  # vocab, merges, normalizer, pre-tokenizer: everything that changes ids
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items())) + str(getattr(tokenizer, "name_or_path", ""))
    return {
        "vocab_size": vocab_size(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "definition_sha256": hashlib.sha256(definition.encode("utf-8")).hexdigest(),
    }


def _file_identity(files: list[Path]) -> list[list]:
    out = []
    for f in files:
        stat = f.stat()
        out.append([str(f.resolve()), stat.st_size, stat.st_mtime_ns])
    return out


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added; the fast tokenizer's Rust batch call when possible."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast skips offsets: ~2x quicker
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]


def _encode_documents(name, files, tokenizer, text_field, rng, dtype) -> list[np.ndarray]:
    """Per-document token arrays (each ending in EOS) in a seeded shuffled order."""
    docs = list(read_documents(files, text_field=text_field))
    if not docs:
        raise OpmixError(f"domain {name!r}: its files hold no non-empty documents", "add text to the domain's files")
    order = rng.permutation(len(docs))
    eos = tokenizer.eos_token_id
    if eos is None:
        raise OpmixError("the tokenizer has no EOS token", "use a tokenizer with eos_token set")
    out: list[np.ndarray] = []
    for start in range(0, len(docs), ENCODE_BATCH_DOCS):
        batch = [docs[i] for i in order[start : start + ENCODE_BATCH_DOCS]]
        for ids in encode_batch(tokenizer, batch):
            arr = np.empty(len(ids) + 1, dtype=dtype)
            arr[:-1] = ids
            arr[-1] = eos
            out.append(arr)
    return out


def _token_stream(name, files, bin_dtype, tokenizer, dtype) -> np.ndarray:
    """Concatenate pre-tokenized files, checking every id fits the tokenizer's vocabulary."""
    limit = vocab_size(tokenizer)
    arrays = read_token_arrays(files, bin_dtype=bin_dtype)
    for path, arr in zip(list_files(files), arrays):
        if arr.size and int(arr.max()) >= limit:
            raise OpmixError(
                f"domain {name!r}: {path} holds token id {int(arr.max())} but the tokenizer's vocabulary has "
                f"{limit} ids (vocabulary mismatch)",
                "use the tokenizer the files were made with, or re-tokenize the text",
            )
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays])


def _tail_split(lengths: np.ndarray, eval_fraction: float) -> int:
    """Index of the first eval document: whole documents from the end until they hold >= eval_fraction of tokens."""
    if len(lengths) < 2:
        return len(lengths)  # one document cannot be split; the size check names the problem
    target = eval_fraction * float(lengths.sum())
    from_end = np.cumsum(lengths[::-1])
    n_eval = int(np.searchsorted(from_end, target, side="left")) + 1
    return len(lengths) - min(n_eval, len(lengths) - 1)


def _build_streams(name, files, eval_files, tokenizer, eval_fraction, text_field, seed, bin_dtype):
    dtype = token_dtype(tokenizer)
    rng = np.random.default_rng(seed)
    if is_pretokenized(files):
        train = _token_stream(name, files, bin_dtype, tokenizer, dtype)
        if eval_files is None:
            cut = len(train) - math.ceil(eval_fraction * len(train))
            eos_positions = np.flatnonzero(train[:cut] == tokenizer.eos_token_id)
            if len(eos_positions) and eos_positions[-1] + 1 < cut:
                cut = int(eos_positions[-1]) + 1
            train, evals = train[:cut], train[cut:]
    else:
        docs = _encode_documents(name, files, tokenizer, text_field, rng, dtype)
        train = np.concatenate(docs)
        if eval_files is None:
            lengths = np.array([len(d) for d in docs])
            eval_tokens = int(lengths[_tail_split(lengths, eval_fraction):].sum())
            target = math.ceil(eval_fraction * len(train))
            if eval_tokens == 0 or eval_tokens > 2 * target:  # documents too few or too big to split between
                eval_tokens = target
            train, evals = train[: len(train) - eval_tokens], train[len(train) - eval_tokens :]
    if eval_files is not None:
        eval_rng = np.random.default_rng([seed, 1])  # its own stream: the train order does not depend on it
        if is_pretokenized(eval_files):
            evals = _token_stream(name, eval_files, bin_dtype, tokenizer, dtype)
        else:
            evals = np.concatenate(_encode_documents(name, eval_files, tokenizer, text_field, eval_rng, dtype))
    return train, evals


def _save_atomic(path: Path, array: np.ndarray) -> int:
    """Write ``array`` as ``.npy`` atomically; returns the file's size in bytes."""
    with atomic_file(path) as handle:
        np.save(handle, array, allow_pickle=False)
    return path.stat().st_size


def _cached_meta(entry: Path) -> dict | None:
    """The entry's metadata if the entry is complete and its arrays have their recorded sizes, else None."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        for split, size in meta["bytes"].items():
            if (entry / f"{split}.npy").stat().st_size != size:
                raise ValueError(f"{split}.npy has changed size")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cache entry %s is damaged (%s); tokenizing again", entry, exc)
        return None
    return meta


def _check_sizes(name, train_len, eval_len, seq_len, from_eval_files) -> None:
    if train_len + eval_len == 0:
        raise OpmixError(f"domain {name!r} has no tokens", "add data to the domain")
    if train_len < seq_len:
        raise OpmixError(
            f"domain {name!r} has {train_len} train tokens, fewer than one sequence of seq_len={seq_len}",
            "add more data to the domain or use a smaller seq_len",
        )
    if eval_len < seq_len:
        more = "add more eval files" if from_eval_files else "raise eval_fraction"
        raise OpmixError(
            f"domain {name!r} has {eval_len} eval tokens, fewer than one sequence of seq_len={seq_len}",
            f"add more data to the domain, {more}, or use a smaller seq_len",
        )


def _as_sequences(path: Path, seq_len: int, limit: int | None) -> np.ndarray:
    stream = np.load(path, mmap_mode="r", allow_pickle=False)
    n = len(stream) // seq_len
    if limit is not None:
        n = min(n, limit)
    return stream[: n * seq_len].reshape(n, seq_len)


def prepare_domain(
    name: str,
    files,
    tokenizer,
    seq_len: int,
    cache_dir,
    eval_files=None,
    eval_fraction: float = 0.05,
    text_field: str = "text",
    seed: int = 0,
    bin_dtype: str = "uint16",
    max_eval_sequences: int | None = None,
) -> TokenizedDomain:
    """Tokenize (or reuse the cached tokens of) one domain and return its train/eval sequences as memmaps."""
    if seq_len < 1:
        raise OpmixError(f"seq_len must be >= 1, got {seq_len}", "give a positive sequence length")
    if eval_files is None and not 0.0 < eval_fraction < 1.0:
        raise OpmixError(
            f"domain {name!r}: eval_fraction must be in (0, 1), got {eval_fraction}",
            "give eval_fraction such as 0.05, or eval_files",
        )
    if max_eval_sequences is not None and max_eval_sequences < 1:
        raise OpmixError(f"max_eval_sequences must be >= 1, got {max_eval_sequences}", "give a positive cap or none")
    train_files = list_files(files)
    eval_list = list_files(eval_files) if eval_files is not None else None
    key_source = {
        "format": CACHE_FORMAT,
        "files": _file_identity(train_files),
        "eval_files": _file_identity(eval_list) if eval_list is not None else None,
        "eval_fraction": None if eval_list is not None else float(eval_fraction),
        "tokenizer": tokenizer_identity(tokenizer),
        "text_field": text_field,
        "bin_dtype": bin_dtype,
        "seed": int(seed),
    }
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    entry = Path(cache_dir) / f"{safe_name}-{key}"
    meta = _cached_meta(entry)
    if meta is not None:
        log.info("domain %r: reusing cached tokens in %s", name, entry)
    else:
        started = time.perf_counter()
        train, evals = _build_streams(
            name, train_files, eval_list, tokenizer, eval_fraction, text_field, seed, bin_dtype
        )
        _check_sizes(name, len(train), len(evals), seq_len, eval_list is not None)
        sizes = {"train": _save_atomic(entry / "train.npy", train)}
        fault_point("tokenize")
        sizes["eval"] = _save_atomic(entry / "eval.npy", evals)
        meta = {"name": name, "train_stream_tokens": len(train), "eval_stream_tokens": len(evals), "key": key_source,
                "bytes": sizes}
        write_json(entry / "meta.json", meta)  # written last: its presence means the entry is complete
        log.info(
            "domain %r: tokenized %d train + %d eval tokens in %.1fs",
            name, len(train), len(evals), time.perf_counter() - started,
        )
    _check_sizes(name, meta["train_stream_tokens"], meta["eval_stream_tokens"], seq_len, eval_list is not None)
    train_seqs = _as_sequences(entry / "train.npy", seq_len, None)
    eval_seqs = _as_sequences(entry / "eval.npy", seq_len, max_eval_sequences)
    return TokenizedDomain(name, train_seqs, eval_seqs, int(train_seqs.size), int(eval_seqs.size), entry)
