"""Tokenize a text domain in batches, streaming: documents are read, encoded and written to disk a batch at a time.

``encode_to_file`` reads documents in file order (decompressed on the fly, never all of them in memory), encodes
each batch with the tokenizer's Rust batch call (parallel over the batch's documents) in a background thread
while the next batch is read, appends every document's ids and an EOS to a raw token file, and keeps only the
documents' lengths. ``write_shuffled`` then writes the documents in a seeded order, split into train and eval,
reading each from that file: the same tokens as encoding all documents in that order at once (a document's ids
do not depend on the batch it was encoded in), so the cache is deterministic for given files and seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BATCH_BYTES = 4 << 20  # text per encode call: big enough for the Rust side's parallelism, small enough to stream
BATCH_DOCS = 1 << 16  # and at most this many documents
WRITE_BUFFER_TOKENS = 1 << 22  # tokens gathered before each write of the shuffled output


def _batches(docs: Iterable[str], batch_bytes: int, batch_docs: int) -> Iterable[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= batch_bytes or len(batch) >= batch_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _to_tokens(ids: list[list[int]], dtype: np.dtype, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """One flat array of every document's ids each followed by EOS, and the documents' lengths (EOS included)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    ends = np.cumsum(lengths)
    flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=dtype)
    body = np.ones(len(flat), dtype=bool)
    body[ends - 1] = False
    flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=len(flat) - len(ids))
    flat[ends - 1] = eos
    return flat, lengths


def encode_to_file(docs: Iterable[str], tokenizer, encode: Callable, dtype, eos: int, out: Path, progress=None,
                   batch_bytes: int | None = None, batch_docs: int | None = None) -> np.ndarray:
    """Encode ``docs`` into ``out`` (raw ``dtype`` ids, an EOS after each document); returns their lengths.
    ``encode(tokenizer, texts)`` gives the ids of each text; ``progress.update(nbytes)`` after each batch."""
    dtype = np.dtype(dtype)
    batch_bytes, batch_docs = batch_bytes or BATCH_BYTES, batch_docs or BATCH_DOCS
    lengths: list[np.ndarray] = []

    def work(batch: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        flat, lens = _to_tokens(encode(tokenizer, batch), dtype, eos)
        return flat, lens, sum(map(len, batch))

    with open(out, "wb") as handle, ThreadPoolExecutor(max_workers=1) as pool:
        pending = None

        def finish(future) -> None:
            flat, lens, nbytes = future.result()
            handle.write(flat.data)
            lengths.append(lens)
            if progress is not None:
                progress.update(nbytes)

        # The encode call releases the GIL: the next batch is read (and the last one written) meanwhile.
        for batch in _batches(docs, batch_bytes, batch_docs):
            future = pool.submit(work, batch)
            if pending is not None:
                finish(pending)
            pending = future
        if pending is not None:
            finish(pending)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


class SplitWriter:
    """Routes a stream written in order to two outputs: the tokens inside ``pieces`` ([start, end), sorted) to
    ``eval``, the rest to ``train``."""

    def __init__(self, train, evals, pieces):
        self.train, self.eval = train, evals
        self.pieces = [tuple(p) for p in pieces]
        self.k = 0  # the first piece not wholly behind
        self.position = 0

    def write(self, tokens: np.ndarray) -> None:
        start, end = self.position, self.position + len(tokens)
        at = start
        while at < end:
            while self.k < len(self.pieces) and self.pieces[self.k][1] <= at:
                self.k += 1
            if self.k < len(self.pieces) and self.pieces[self.k][0] <= at:
                stop, target = min(end, self.pieces[self.k][1]), self.eval
            else:
                stop = min(end, self.pieces[self.k][0]) if self.k < len(self.pieces) else end
                target = self.train
            target.write(tokens[at - start:stop - start].data)
            at = stop
        self.position = end


def write_npy_header(handle, dtype, length: int) -> None:
    np.lib.format.write_array_header_1_0(
        handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (length,)}
    )


def write_shuffled(tokens: Path, lengths: np.ndarray, order: np.ndarray, dtype, writer: SplitWriter) -> None:
    """Write the documents of ``tokens`` (raw ids, documents of ``lengths`` back to back) in ``order`` through
    ``writer``, gathering them into a bounded buffer by plain reads."""
    dtype = np.dtype(dtype)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) * dtype.itemsize
    buffer = np.empty(max(WRITE_BUFFER_TOKENS, int(lengths.max()) if len(lengths) else 0), dtype=dtype)
    raw = buffer.view(np.uint8)
    filled = 0
    with open(tokens, "rb") as handle:
        for doc in order:
            n = int(lengths[doc])
            if filled + n > len(buffer):
                writer.write(buffer[:filled])
                filled = 0
            handle.seek(int(starts[doc]))
            handle.readinto(raw[filled * dtype.itemsize:(filled + n) * dtype.itemsize])
            filled += n
    writer.write(buffer[:filled])
