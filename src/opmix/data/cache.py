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
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opmix.data.readers import is_pretokenized, list_files, read_documents
from opmix.data.token_files import TokenFile, TokenStream, open_token_file
from opmix.data.token_views import Boundaries, ByteProgress, SequenceView, scan_stream
from opmix.data.tokenize_parallel import (
    SplitWriter,
    encode_to_file,
    write_npy_header,
    write_shuffled,
)
from opmix.errors import OpmixError
from opmix.run import processes
from opmix.run.atomic import TEMP_MARK, atomic_file, storage_errors, write_json
from opmix.run.faults import fault_point
from opmix.run.processes import writes_here

log = logging.getLogger(__name__)

CACHE_FORMAT = 5  # bump when the stream layout changes, so old entries are not reused
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


def _read_text_documents(name, files, text_field):
    """The documents of text files, streamed; an error when there are none."""
    found = False
    for doc in read_documents(files, text_field=text_field):
        found = True
        yield doc
    if not found:
        raise OpmixError(f"domain {name!r}: its files hold no non-empty documents", "add text to the domain's files")


def _encode_text(name, files, tokenizer, text_field, dtype, scratch: Path, label: str) -> np.ndarray:
    """Encode a text domain's documents into ``scratch`` (raw ids, EOS after each); returns their lengths."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise OpmixError("the tokenizer has no EOS token", "use a tokenizer with eos_token set")
    total = sum(f.stat().st_size for f in files)
    with ByteProgress(f"tokenize {label}", total) as progress, storage_errors(scratch):
        return encode_to_file(
            _read_text_documents(name, files, text_field), tokenizer, lambda t, texts: encode_batch(t, texts),
            dtype, eos, scratch, progress,
        )


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


def _interleaved_pieces(n: int, eval_fraction: float, snap: Callable[[int], int] | None) -> Pieces:
    """The last ``eval_fraction`` of each of B equal blocks of an n-token stream (see the module docstring);
    ``snap`` moves a cut to the nearest document boundary (None: no known boundaries)."""
    target = math.ceil(eval_fraction * n)
    blocks = max(1, min(MAX_PIECES, target // MIN_PIECE_TOKENS))
    edges = [k * n // blocks for k in range(blocks + 1)]
    exact = [(end - math.ceil(eval_fraction * (end - start)), end) for start, end in zip(edges[:-1], edges[1:])]
    if snap is None:
        return exact
    # Snapping is monotone, so the pieces stay sorted and disjoint; pieces that shrink to nothing are dropped.
    snapped = [(s, e) for s, e in ((snap(a), snap(b)) for a, b in exact) if e > s]
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


def _complement(pieces: Pieces, n: int) -> Pieces:
    """[0, n) without the pieces: the train ranges, in order."""
    out, at = [], 0
    for start, end in pieces:
        if start > at:
            out.append((at, start))
        at = max(at, end)
    if at < n:
        out.append((at, n))
    return out


def _documents_touched(pieces: Pieces, doc_index: Callable[[int], int] | None) -> int | None:
    """How many documents have tokens in the pieces; None when the stream has no known document boundaries.
    ``doc_index(x)``: the index of the document holding token x."""
    if doc_index is None:
        return None
    count, last_counted = 0, -1
    for start, end in pieces:
        first = max(doc_index(start), last_counted + 1)
        last = doc_index(end - 1)
        count += max(0, last - first + 1)
        last_counted = max(last_counted, last)
    return count


def _starts_index(doc_starts: np.ndarray) -> Callable[[int], int]:
    return lambda x: int(np.searchsorted(doc_starts, x, side="right")) - 1


@dataclass
class _Split:
    """One split of an entry as built: where its tokens live (``cache``: an array of the entry; ``files``: ranges
    of the domain's files; ``eval_files``: of its eval files), and how many."""

    source: str
    tokens: int
    ranges: Pieces = field(default_factory=list)  # for "files"/"eval_files": [start, end) of that stream


def _token_files(paths, bin_dtype) -> list[TokenFile]:
    return [open_token_file(p, bin_dtype) for p in list_files(paths)]


def _scan(name, stream: TokenStream, tokenizer, queries, label) -> Boundaries:
    with ByteProgress(f"check {label}", sum(f.size * f.dtype.itemsize for f in stream.files)) as progress:
        return scan_stream(stream, tokenizer.eos_token_id, queries, vocab_size(tokenizer), name, progress)


def _pretokenized_split(name, files, tokenizer, eval_fraction, bin_dtype, held_out: bool):
    """(train split, eval split or None, eval pieces, eval documents) of pre-tokenized files, read in place:
    one bounded pass checks every id and finds the document boundaries around the interleaved cuts."""
    stream = TokenStream(_token_files(files, bin_dtype), token_dtype(tokenizer))
    n = stream.size
    if not held_out:
        bounds = _scan(name, stream, tokenizer, [0, n - 1] if n else [], name)
        pieces = [(0, n)] if n else []
        touched = _documents_touched(pieces, _counted(bounds))
        return _Split("files", n, pieces), pieces, touched
    exact = _interleaved_pieces(n, eval_fraction, None)
    queries = {x for s, e in exact for x in (s, e, max(s, e - 1))}
    bounds = _scan(name, stream, tokenizer, queries if n else [], name)
    pieces = _interleaved_pieces(n, eval_fraction, bounds.snap) if bounds.found and n else exact
    pieces = [(s, e) for s, e in pieces if e > s]
    train = _Split("files", n - sum(e - s for s, e in pieces), _complement(pieces, n))
    return train, pieces, _documents_touched(pieces, _counted(bounds))


def _counted(bounds: Boundaries) -> Callable[[int], int] | None:
    if not bounds.found:
        return None
    known = bounds.doc_counts()
    return lambda x: known[x] - 1


def _scratch(entry: Path) -> Path:
    folder = entry if writes_here() else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".tokens{TEMP_MARK}{secrets.token_hex(4)}"


def _write_text(entry: Path, scratch: Path, lengths: np.ndarray, order: np.ndarray, pieces: Pieces, dtype,
                outputs: tuple[str, ...]) -> dict[str, int]:
    """Write the documents of ``scratch`` in ``order``: the tokens in ``pieces`` to eval.npy, the rest to
    train.npy (only the ``outputs`` named); returns the written files' sizes."""
    n = int(lengths.sum())
    held = sum(e - s for s, e in pieces)
    counts = {"train": n - held, "eval": held}
    with ExitStack() as stack:
        handles = {}
        for split in ("train", "eval"):
            if split in outputs:
                handles[split] = stack.enter_context(atomic_file(entry / f"{split}.npy"))
                write_npy_header(handles[split], dtype, counts[split])
            else:
                handles[split] = None
        write_shuffled(scratch, lengths, order, dtype, SplitWriter(handles["train"], handles["eval"], pieces))
    return {split: (entry / f"{split}.npy").stat().st_size if writes_here() else 0 for split in outputs}


def _build_entry(name, entry, files, eval_files, tokenizer, eval_fraction, text_field, seed, bin_dtype,
                 seq_len) -> dict:
    """Build a cache entry; returns its meta (not yet written)."""
    dtype = token_dtype(tokenizer)
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    held_out = eval_files is None
    scratch_files: list[Path] = []
    try:
        if is_pretokenized(files):
            train, pieces, touched = _pretokenized_split(name, files, tokenizer, eval_fraction, bin_dtype, held_out)
            evals = _Split("files", sum(e - s for s, e in pieces), pieces) if held_out else None
            if held_out:
                _check_sizes(name, train.tokens, evals.tokens, seq_len, False)
        else:
            scratch = _scratch(entry)
            scratch_files.append(scratch)
            lengths = _encode_text(name, files, tokenizer, text_field, dtype, scratch, name)
            order = rng.permutation(len(lengths))
            shuffled = lengths[order]
            n = int(shuffled.sum())
            doc_starts = np.cumsum(shuffled) - shuffled
            pieces = []
            if held_out:
                eval_tokens = int(shuffled[_tail_split(shuffled, eval_fraction):].sum())
                if 0 < eval_tokens <= 2 * math.ceil(eval_fraction * n):
                    pieces = [(n - eval_tokens, n)]  # whole shuffled documents: a random sample
                else:
                    boundaries = np.append(doc_starts, n)
                    pieces = _interleaved_pieces(n, eval_fraction, lambda p: _snap(p, boundaries))
                held = sum(e - s for s, e in pieces)
                _check_sizes(name, n - held, held, seq_len, False)
                touched = _documents_touched(pieces, _starts_index(doc_starts))
            train = _Split("cache", n - sum(e - s for s, e in pieces))
            evals = _Split("cache", n - train.tokens) if held_out else None
            sizes.update(_write_text(entry, scratch, lengths, order, pieces, dtype,
                                     ("train", "eval") if held_out else ("train",)))
        if not held_out:
            eval_rng = np.random.default_rng([seed, 1])  # its own stream: the train order does not depend on it
            if is_pretokenized(eval_files):
                evals, pieces, touched = _pretokenized_split(name, eval_files, tokenizer, eval_fraction, bin_dtype,
                                                             False)
                evals.source = "eval_files"
                _check_sizes(name, train.tokens, evals.tokens, seq_len, True)
            else:
                _check_sizes(name, train.tokens, seq_len, seq_len, True)  # the train split, before encoding more
                scratch = _scratch(entry)
                scratch_files.append(scratch)
                lengths = _encode_text(name, eval_files, tokenizer, text_field, dtype, scratch, f"{name} (eval)")
                order = eval_rng.permutation(len(lengths))
                n = int(lengths.sum())
                pieces = [(0, n)] if n else []
                touched = len(lengths)
                evals = _Split("cache", n)
                _check_sizes(name, train.tokens, evals.tokens, seq_len, True)
                sizes.update(_write_text(entry, scratch, lengths, order, [(0, n)], dtype, ("eval",)))
    finally:
        for path in scratch_files:
            path.unlink(missing_ok=True)
    meta = {
        "name": name, "train_stream_tokens": train.tokens, "eval_stream_tokens": evals.tokens,
        "eval_pieces": [[start, end - start] for start, end in pieces],
        "eval_documents": touched, "bytes": sizes,
        "train_source": train.source, "eval_source": evals.source,
    }
    if train.source == "files":
        meta["train_ranges"] = [[s, e] for s, e in train.ranges]
        meta["vocab_checked"] = vocab_size(tokenizer)  # every id of the files is below it
    return meta


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
        if meta["train_source"] == "files" and sum(e - s for s, e in meta["train_ranges"]) != meta[
                "train_stream_tokens"]:
            raise ValueError("train_ranges do not add up to the train split")
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


def _eval_starts(piece_lengths: list[int], total: int, seq_len: int, limit: int | None) -> np.ndarray:
    """Where the eval sequences start in the eval stream (the pieces back to back): cut inside each held-out
    piece, evenly spread over all of them when capped."""
    offsets = np.cumsum([0, *piece_lengths[:-1]])
    starts = np.concatenate(
        [np.arange(o, o + (n // seq_len) * seq_len, seq_len) for o, n in zip(offsets, piece_lengths)] or [[]]
    ).astype(np.int64)
    if not len(starts):  # every piece is shorter than a sequence: cut across them rather than have no eval set
        starts = np.arange(0, (total // seq_len) * seq_len, seq_len, dtype=np.int64)
    if limit is not None:
        starts = starts[spread_indices(len(starts), limit)]
    return starts


def _eval_sequences(path: Path, piece_lengths: list[int], seq_len: int, limit: int | None) -> np.ndarray:
    """The eval set of an entry's eval.npy."""
    stream = np.load(path, mmap_mode="r", allow_pickle=False)
    starts = _eval_starts(piece_lengths, len(stream), seq_len, limit)
    if len(starts) and starts[0] == 0 and starts[-1] == (len(starts) - 1) * seq_len:
        return stream[: len(starts) * seq_len].reshape(-1, seq_len)  # one contiguous run: stays a memmap view
    return np.asarray(stream[starts[:, None] + np.arange(seq_len)])  # (n_seqs, seq_len); at most limit rows


def _load_splits(meta: dict, entry: Path, train_files, eval_list, tokenizer, bin_dtype, seq_len, limit):
    """The (train, eval) sequences of a complete entry: arrays of the entry, or views of the domain's files."""
    dtype = token_dtype(tokenizer)
    streams: dict[str, TokenStream] = {}

    def stream(source: str) -> TokenStream:
        if source not in streams:
            files = train_files if source == "files" else eval_list
            streams[source] = TokenStream(_token_files(files, bin_dtype), dtype)
        return streams[source]

    if meta["train_source"] == "cache":
        train = _as_sequences(entry / "train.npy", seq_len)
    else:
        train = SequenceView(stream("files"), meta["train_ranges"], seq_len)
    piece_lengths = [length for _, length in meta["eval_pieces"]]
    if meta["eval_source"] == "cache":
        evals = _eval_sequences(entry / "eval.npy", piece_lengths, seq_len, limit)
    else:
        starts = _eval_starts(piece_lengths, meta["eval_stream_tokens"], seq_len, limit)
        ranges = [(start, start + length) for start, length in meta["eval_pieces"]]
        evals = SequenceView(stream(meta["eval_source"]), ranges, seq_len, offsets=starts).as_array_if_small()
    return train, evals


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
        meta = _build_entry(name, entry, train_files, eval_list, tokenizer, eval_fraction, text_field, seed,
                            bin_dtype, seq_len)
        meta["key"] = key_source
        fault_point("tokenize")
        write_json(entry / "meta.json", meta)  # written last: its presence means the entry is complete
        pieces = len(meta["eval_pieces"])
        log.info(
            "domain %r: %s %d train + %d eval tokens (eval split in %d piece%s) in %.1fs", name,
            "tokenized" if meta["train_source"] == "cache" else "checked", meta["train_stream_tokens"],
            meta["eval_stream_tokens"], pieces, "" if pieces == 1 else "s", time.perf_counter() - started,
        )
    _check_sizes(name, meta["train_stream_tokens"], meta["eval_stream_tokens"], seq_len, eval_list is not None)
    train_seqs, eval_seqs = _load_splits(meta, entry, train_files, eval_list, tokenizer, bin_dtype, seq_len,
                                         max_eval_sequences)
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
    with processes.main_first():  # rank 0 of a multi-process run fills the cache, then the others read it
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
