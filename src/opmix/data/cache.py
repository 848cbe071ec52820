"""Tokenize a domain once, cache its token streams on disk as ``.npy``, and serve fixed-length sequences (memmap).

Layout: ``cache_dir/<domain>-<key>/{train.npy, eval.npy, meta.json}``. Every file is written atomically
(``opmix.run.atomic``); ``meta.json`` is written last, records the byte size of each ``.npy`` and marks the entry
complete, so an interrupted tokenization never leaves an entry that looks done, and an entry whose arrays were
truncated or removed since is rebuilt rather than trusted.

The key hashes the input files (absolute path, size, mtime), the tokenizer's identity (vocabulary size, EOS id and
a hash of its full definition), the split settings, the seed, ``text_field`` and ``bin_dtype``. ``seq_len`` and
``max_eval_sequences`` are *not* in the key: the cache holds whole token streams and sequences are views cut on
load, so changing them never re-tokenizes.

The eval split is meant to represent the whole domain, not one spot of it:

- Text sources: documents are shuffled at document level (seeded), encoded, each followed by EOS, concatenated.
  Without ``eval_files`` the eval split is the tail of that shuffled stream: whole documents from the end until
  they hold at least ``eval_fraction`` of the tokens (at least one document stays in train), a random sample of the
  documents. When whole documents cannot give a sensible split (a single document, or a last document so large
  that the eval split would exceed twice the fraction), the split is *interleaved* (below).
- Pre-tokenized sources (``.npy``/``.bin``) are taken as they are: concatenated in file order, not shuffled, no EOS
  added (they carry their own separators, as nanoGPT's ``.bin`` files do). Their order may mean something (files
  by source, by date), so a tail would be one region of it: without ``eval_files`` the split is always interleaved.
- Interleaved split: the stream is cut into B equal blocks and the last ``eval_fraction`` of each block is held
  out; train is the rest, in order. B grows with the eval split (each held-out piece at least
  ``MIN_PIECE_TOKENS``, a few sequences at common lengths; at most ``MAX_PIECES``), so a small stream keeps one
  tail piece. When the stream has document boundaries (EOS tokens of a pre-tokenized stream, document ends of
  text), every cut moves to the nearest boundary, so no document straddles the split, unless that leaves the
  eval split under half or over twice the fraction (documents too few or too big), then the cuts stay exact.
- ``meta.json`` records the held-out pieces (``eval_pieces``: offset in the source stream and length) and how many
  documents have tokens in the eval split (``eval_documents``; null for a stream without EOS separators).

On load, eval sequences are cut inside each piece (never joining two distant places; a piece's remainder shorter
than a sequence is left out, and only when no piece holds a whole sequence is the eval stream cut as one), and
when there are more than ``max_eval_sequences`` of them, that many are taken at evenly spaced indices (the first
and the last included), so the eval set spreads over every piece and document of the split at a bounded cost.
An eval split of a single document, or one contiguous slice of a stream without separators, gets a warning
(``TokenizedDomain.warnings``): its loss describes that one place, not the domain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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

CACHE_FORMAT = 4  # bump when the stream layout changes, so old entries are not reused
ENCODE_BATCH_DOCS = 512  # documents per batch encode call: large enough for the Rust side's parallelism
MIN_PIECE_TOKENS = 2048  # an interleaved eval piece holds at least this many tokens: 8 sequences of 256
MAX_PIECES = 64  # beyond this, more places in the stream add little to an eval set of a few hundred sequences


@dataclass
class TokenizedDomain:
    name: str
    train: np.ndarray  # (n_train_seqs, seq_len) memmap of token ids
    eval: np.ndarray  # (n_eval_seqs, seq_len) memmap of token ids
    train_tokens: int  # tokens in the train sequences (= train.size; the cut remainder is not counted)
    eval_tokens: int  # tokens in the eval sequences (= eval.size)
    path: Path | None = None  # the cache entry folder
    warnings: list[str] = field(default_factory=list)  # the eval split cannot represent the domain (one document...)


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


Pieces = list[tuple[int, int]]  # held-out [start, end) ranges of a stream, sorted and disjoint


def _snap(position: int, boundaries: np.ndarray) -> int:
    """The boundary nearest to ``position`` (the lower one on a tie); ``boundaries`` is sorted and holds 0 and n."""
    i = int(np.searchsorted(boundaries, position))
    if i == 0:
        return int(boundaries[0])
    if i == len(boundaries):
        return int(boundaries[-1])
    low, high = int(boundaries[i - 1]), int(boundaries[i])
    return low if position - low <= high - position else high


def _interleaved_pieces(n: int, eval_fraction: float, doc_starts: np.ndarray | None) -> Pieces:
    """The last ``eval_fraction`` of each of B equal blocks of an n-token stream (see the module docstring)."""
    target = math.ceil(eval_fraction * n)
    blocks = max(1, min(MAX_PIECES, target // MIN_PIECE_TOKENS))
    edges = [k * n // blocks for k in range(blocks + 1)]
    exact = [(end - math.ceil(eval_fraction * (end - start)), end) for start, end in zip(edges[:-1], edges[1:])]
    if doc_starts is None:
        return exact
    boundaries = np.append(doc_starts, n)
    # Snapping is monotone, so the pieces stay sorted and disjoint; pieces that shrink to nothing are dropped.
    snapped = [(s, e) for s, e in ((_snap(a, boundaries), _snap(b, boundaries)) for a, b in exact) if e > s]
    held_out = sum(e - s for s, e in snapped)
    if target / 2 <= held_out <= 2 * target and held_out < n:
        return snapped
    return exact  # documents too few or too big for whole-document pieces


def max_eval_tokens(tokens: int, eval_fraction: float) -> int:
    """At most how many tokens the held-out eval split of a ``tokens``-token domain (no eval_files) holds.

    A tail of whole documents is taken only up to twice the fraction; snapped interleaved pieces too; exact ones
    hold ``ceil(f * block)`` of each of B <= ceil(f * n) blocks. So never more than ``2 * ceil(f * n)``, which
    grows with n: an upper bound on n gives one on the eval split, before anything is tokenized."""
    return 2 * math.ceil(eval_fraction * tokens)


def _split(stream: np.ndarray, pieces: Pieces) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval): the stream without the pieces, in order, and the pieces concatenated."""
    keep = np.ones(len(stream), dtype=bool)
    for start, end in pieces:
        keep[start:end] = False
    return stream[keep], stream[~keep]


def _eos_doc_starts(stream: np.ndarray, eos: int | None) -> np.ndarray | None:
    """Start offsets of the documents of a pre-tokenized stream (each EOS ends one); None without any EOS."""
    if eos is None:
        return None
    ends = np.flatnonzero(stream == eos) + 1
    if not len(ends):
        return None
    return np.concatenate([[0], ends[ends < len(stream)]])


def _documents_touched(pieces: Pieces, doc_starts: np.ndarray | None) -> int | None:
    """How many documents have tokens in the pieces; None when the stream has no known document boundaries."""
    if doc_starts is None:
        return None
    count, last_counted = 0, -1
    for start, end in pieces:
        first = max(int(np.searchsorted(doc_starts, start, side="right")) - 1, last_counted + 1)
        last = int(np.searchsorted(doc_starts, end - 1, side="right")) - 1
        count += max(0, last - first + 1)
        last_counted = max(last_counted, last)
    return count


@dataclass
class _Streams:
    train: np.ndarray
    eval: np.ndarray
    eval_pieces: Pieces  # where the eval tokens came from: [start, end) in the source stream
    eval_documents: int | None  # documents with tokens in the eval split (None: no separators to count by)


def _build_streams(name, files, eval_files, tokenizer, eval_fraction, text_field, seed, bin_dtype) -> _Streams:
    dtype = token_dtype(tokenizer)
    rng = np.random.default_rng(seed)
    eos = tokenizer.eos_token_id
    if is_pretokenized(files):
        stream = _token_stream(name, files, bin_dtype, tokenizer, dtype)
        doc_starts = _eos_doc_starts(stream, eos)
        pieces = _interleaved_pieces(len(stream), eval_fraction, doc_starts) if eval_files is None else []
    else:
        docs = _encode_documents(name, files, tokenizer, text_field, rng, dtype)
        stream = np.concatenate(docs)
        lengths = np.array([len(d) for d in docs])
        doc_starts = np.cumsum(lengths) - lengths
        pieces = []
        if eval_files is None:
            eval_tokens = int(lengths[_tail_split(lengths, eval_fraction):].sum())
            if 0 < eval_tokens <= 2 * math.ceil(eval_fraction * len(stream)):
                pieces = [(len(stream) - eval_tokens, len(stream))]  # whole shuffled documents: a random sample
            else:
                pieces = _interleaved_pieces(len(stream), eval_fraction, doc_starts)
    if eval_files is None:
        train, evals = _split(stream, pieces)
        return _Streams(train, evals, pieces, _documents_touched(pieces, doc_starts))
    eval_rng = np.random.default_rng([seed, 1])  # its own stream: the train order does not depend on it
    if is_pretokenized(eval_files):
        evals = _token_stream(name, eval_files, bin_dtype, tokenizer, dtype)
        eval_doc_starts = _eos_doc_starts(evals, eos)
    else:
        eval_docs = _encode_documents(name, eval_files, tokenizer, text_field, eval_rng, dtype)
        evals = np.concatenate(eval_docs)
        eval_doc_starts = np.cumsum([len(d) for d in eval_docs]) - np.array([len(d) for d in eval_docs])
    whole = [(0, len(evals))] if len(evals) else []
    return _Streams(stream, evals, whole, _documents_touched(whole, eval_doc_starts))


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
        if sum(length for _, length in meta["eval_pieces"]) != meta["eval_stream_tokens"]:
            raise ValueError("eval_pieces do not add up to the eval split")
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


def _as_sequences(path: Path, seq_len: int) -> np.ndarray:
    stream = np.load(path, mmap_mode="r", allow_pickle=False)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def spread_indices(available: int, count: int) -> np.ndarray:
    """``count`` evenly spaced indices into ``range(available)``, the first and the last included (integer
    arithmetic: exact, so every platform picks the same sequences)."""
    if count >= available:
        return np.arange(available)
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    return np.arange(count, dtype=np.int64) * (available - 1) // (count - 1)


def _eval_sequences(path: Path, piece_lengths: list[int], seq_len: int, limit: int | None) -> np.ndarray:
    """The eval set: sequences cut inside each held-out piece, evenly spread over all of them when capped."""
    stream = np.load(path, mmap_mode="r", allow_pickle=False)
    offsets = np.cumsum([0, *piece_lengths[:-1]])
    starts = np.concatenate(
        [np.arange(o, o + (n // seq_len) * seq_len, seq_len) for o, n in zip(offsets, piece_lengths)] or [[]]
    ).astype(np.int64)
    if not len(starts):  # every piece is shorter than a sequence: cut across them rather than have no eval set
        starts = np.arange(0, (len(stream) // seq_len) * seq_len, seq_len)
    if limit is not None:
        starts = starts[spread_indices(len(starts), limit)]
    if len(starts) and starts[0] == 0 and starts[-1] == (len(starts) - 1) * seq_len:
        return stream[: len(starts) * seq_len].reshape(-1, seq_len)  # one contiguous run: stays a memmap view
    return np.asarray(stream[starts[:, None] + np.arange(seq_len)])  # (n_seqs, seq_len); at most limit rows


def _eval_warnings(name: str, meta: dict) -> list[str]:
    """Why the domain's eval loss could not represent the domain, if it cannot."""
    documents, pieces = meta["eval_documents"], meta["eval_pieces"]
    if documents is not None and documents < 2:
        return [
            f"domain {name!r}: its eval split holds a single document, so its eval loss (and its mixing law) "
            "measure that one document, not the domain; give it more documents or eval_files"
        ]
    if documents is None and len(pieces) < 2:
        return [
            f"domain {name!r}: its eval split is one contiguous slice of a token stream without EOS separators, "
            "so its eval loss measures that one place; give eval_files of EOS-separated documents, or more data so "
            "the held-out split is interleaved over the stream"
        ]
    return []


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
        streams = _build_streams(name, train_files, eval_list, tokenizer, eval_fraction, text_field, seed, bin_dtype)
        _check_sizes(name, len(streams.train), len(streams.eval), seq_len, eval_list is not None)
        sizes = {"train": _save_atomic(entry / "train.npy", streams.train)}
        fault_point("tokenize")
        sizes["eval"] = _save_atomic(entry / "eval.npy", streams.eval)
        meta = {
            "name": name, "train_stream_tokens": len(streams.train), "eval_stream_tokens": len(streams.eval),
            "eval_pieces": [[start, end - start] for start, end in streams.eval_pieces],
            "eval_documents": streams.eval_documents, "key": key_source, "bytes": sizes,
        }
        write_json(entry / "meta.json", meta)  # written last: its presence means the entry is complete
        log.info(
            "domain %r: tokenized %d train + %d eval tokens (eval split in %d piece%s) in %.1fs",
            name, len(streams.train), len(streams.eval), len(streams.eval_pieces),
            "" if len(streams.eval_pieces) == 1 else "s", time.perf_counter() - started,
        )
    _check_sizes(name, meta["train_stream_tokens"], meta["eval_stream_tokens"], seq_len, eval_list is not None)
    train_seqs = _as_sequences(entry / "train.npy", seq_len)
    piece_lengths = [length for _, length in meta["eval_pieces"]]
    eval_seqs = _eval_sequences(entry / "eval.npy", piece_lengths, seq_len, max_eval_sequences)
    return TokenizedDomain(name, train_seqs, eval_seqs, int(train_seqs.size), int(eval_seqs.size), entry,
                           warnings=_eval_warnings(name, meta))


def load_domains(
    domains,
    tokenizer,
    seq_len: int,
    cache_dir,
    eval_fraction: float = 0.05,
    eval_files=None,
    text_field="text",
    seed: int = 0,
    bin_dtype: str = "uint16",
    max_eval_sequences: int | None = 256,
) -> dict[str, TokenizedDomain]:
    """Every domain of ``domains`` (name -> file, folder or list of them) tokenized and cached with its eval split:
    ``prepare_domain`` for each, in order. ``tokenizer`` is a tokenizer or a spec for
    ``opmix.data.tokenizer.load_tokenizer`` (``"builtin:bytes"``, a local directory). ``eval_files`` optionally
    maps a domain name to its own held-out files (the others hold out ``eval_fraction`` of their data);
    ``text_field`` (JSONL key / Parquet column) is one name for all, or a mapping domain -> name."""
    from opmix.data.tokenizer import load_tokenizer

    if not domains:
        raise OpmixError("no domains given", "pass a mapping of domain name -> files, e.g. {'code': 'data/code'}")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    eval_files = dict(eval_files or {})
    fields = dict(text_field) if isinstance(text_field, dict) else {name: text_field for name in domains}
    for what, given in (("eval_files", eval_files), ("text_field", fields)):
        unknown = sorted(set(given) - set(domains))
        if unknown:
            raise OpmixError(f"{what} name unknown domain(s) {unknown}; domains: {list(domains)}",
                             f"key {what} by the domain names given")
    return {
        name: prepare_domain(
            name, files, tokenizer, seq_len, cache_dir, eval_files=eval_files.get(name) or None,
            eval_fraction=eval_fraction, text_field=fields.get(name, "text"), seed=seed, bin_dtype=bin_dtype,
            max_eval_sequences=max_eval_sequences,
        )
        for name, files in domains.items()
    }


def train_sets(domains: Mapping) -> dict[str, np.ndarray]:
    """name -> (n, seq_len) train sequences, from ``TokenizedDomain``s or arrays (taken as they are)."""
    return {name: getattr(d, "train", d) for name, d in domains.items()}


def eval_sets(domains: Mapping) -> dict[str, np.ndarray]:
    """name -> (n, seq_len) eval sequences, from ``TokenizedDomain``s or arrays (taken as they are)."""
    return {name: getattr(d, "eval", d) for name, d in domains.items()}
