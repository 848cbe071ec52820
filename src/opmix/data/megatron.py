"""Megatron-LM indexed datasets: ``PREFIX.bin`` (the tokens) described by ``PREFIX.idx`` (the ``MMIDIDX`` index).

The index, little-endian: the 9-byte magic ``MMIDIDX\\x00\\x00``, ``<Q`` version (1), ``<B`` dtype code of the
tokens (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16), ``<Q`` number of sequences,
``<Q`` number of document indices, then ``int32 sizes[sequences]`` (tokens of each sequence), ``int64
pointers[sequences]`` (byte offset of each sequence in the ``.bin``) and ``int64 document_indices[...]``: the
index of the first sequence of each document, from 0, closed by the number of sequences (a document is one
sequence, or several when the corpus was split into sentences).

opmix reads the ``.bin`` as one token stream (its sequences are contiguous, as Megatron's builder writes them)
and takes its document boundaries from the index. ``read_index`` checks the index against the ``.bin`` without
loading either whole (the arrays are read in chunks) and names the problem in one line when they disagree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opmix.errors import OpmixError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, document indices: 34 bytes
DTYPES = {
    1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16), 4: np.dtype(np.int32),
    5: np.dtype(np.int64), 6: np.dtype(np.float64), 7: np.dtype(np.float32), 8: np.dtype(np.uint16),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
_CHUNK = 1 << 20  # index entries read at a time while checking


def index_path(bin_path: Path) -> Path:
    """``PREFIX.idx`` beside ``PREFIX.bin``."""
    return Path(bin_path).with_suffix(".idx")


def has_index(bin_path: Path) -> bool:
    """True when a ``.bin`` is a Megatron dataset: an ``.idx`` of the same prefix lies beside it."""
    path = Path(bin_path)
    return path.suffix.lower() == ".bin" and index_path(path).is_file()


@dataclass(frozen=True)
class MegatronIndex:
    bin_path: Path
    idx_path: Path
    dtype: np.dtype
    n_sequences: int
    n_doc_indices: int
    n_tokens: int

    @property
    def _sizes_offset(self) -> int:
        return HEADER.size

    @property
    def _pointers_offset(self) -> int:
        return HEADER.size + 4 * self.n_sequences

    @property
    def _documents_offset(self) -> int:
        return HEADER.size + 12 * self.n_sequences

    def _read(self, offset: int, dtype, start: int, count: int) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        return np.fromfile(self.idx_path, dtype=dtype, count=count, offset=offset + start * dtype.itemsize)

    def document_starts(self) -> np.ndarray:
        """Token offset (in the ``.bin``) where each document starts, sorted, without duplicates (empty documents
        share their start with the next one); always holds 0 when there are tokens."""
        doc_seqs = self._read(self._documents_offset, np.int64, 0, self.n_doc_indices)
        doc_seqs = np.unique(doc_seqs[doc_seqs < self.n_sequences])
        starts = np.empty(len(doc_seqs), dtype=np.int64)
        for i in range(0, len(doc_seqs), _CHUNK):  # pointers of the first sequence of each document
            part = doc_seqs[i:i + _CHUNK]
            lo, hi = int(part[0]), int(part[-1]) + 1
            pointers = self._read(self._pointers_offset, np.int64, lo, hi - lo)
            starts[i:i + len(part)] = pointers[part - lo] // self.dtype.itemsize
        if self.n_tokens and (not len(starts) or starts[0] != 0):
            starts = np.concatenate([[0], starts])  # tokens before the first listed document are one too
        return starts


def _bad(path: Path, problem: str) -> OpmixError:
    return OpmixError(
        f"{path} is not a valid Megatron index: {problem}",
        "rebuild the .idx with Megatron-LM's preprocess_data.py, or remove the .idx to read the .bin as raw "
        "tokens (data.bin_dtype)",
    )


def read_index(bin_path: Path) -> MegatronIndex:
    """The index of ``PREFIX.bin``, checked: magic, version, dtype, the index's length, the sizes against the
    ``.bin``'s length, contiguous pointers and ordered document indices."""
    bin_path = Path(bin_path)
    idx = index_path(bin_path)
    try:
        idx_bytes = idx.stat().st_size
        bin_bytes = bin_path.stat().st_size
        with idx.open("rb") as handle:
            head = handle.read(HEADER.size)
    except OSError as exc:
        raise OpmixError(f"cannot read Megatron dataset {bin_path}: {exc.strerror or exc}",
                         "check that the .bin and .idx exist and are readable") from exc
    if len(head) < HEADER.size:
        raise _bad(idx, f"{len(head)} bytes, shorter than its {HEADER.size}-byte header (truncated?)")
    magic, version, code, n_seq, n_doc = HEADER.unpack(head)
    if magic != MAGIC:
        raise _bad(idx, f"it starts with {magic!r}, not the magic {MAGIC!r}")
    if version != VERSION:
        raise _bad(idx, f"version {version}; opmix reads version {VERSION}")
    if code not in DTYPES:
        raise _bad(idx, f"unknown dtype code {code} (known: {sorted(DTYPES)})")
    dtype = DTYPES[code]
    if dtype.kind == "f":
        raise OpmixError(f"{idx} says its tokens are {dtype}, not integers",
                         "store token ids as integers (Megatron's preprocess_data.py writes uint16 or int32)")
    expected = HEADER.size + 12 * n_seq + 8 * n_doc
    if idx_bytes != expected:
        raise _bad(idx, f"{idx_bytes} bytes where its header ({n_seq} sequences, {n_doc} document indices) needs "
                        f"{expected} (truncated or damaged?)")
    index = MegatronIndex(bin_path, idx, dtype, int(n_seq), int(n_doc), 0)
    total, expected_pointer = 0, 0
    for start in range(0, n_seq, _CHUNK):
        count = min(_CHUNK, n_seq - start)
        sizes = index._read(index._sizes_offset, np.int32, start, count).astype(np.int64)
        pointers = index._read(index._pointers_offset, np.int64, start, count)
        if sizes.size and sizes.min() < 0:
            raise _bad(idx, "it holds a negative sequence size")
        ends = expected_pointer + np.cumsum(sizes * dtype.itemsize)
        starts = np.concatenate([[expected_pointer], ends[:-1]])
        if not np.array_equal(pointers, starts):
            bad = int(np.flatnonzero(pointers != starts)[0])
            raise _bad(idx, f"sequence {start + bad} starts at byte {int(pointers[bad])} of the .bin, not "
                            f"{int(starts[bad])} where the previous one ends (sequences must be contiguous)")
        total += int(sizes.sum())
        expected_pointer = int(ends[-1]) if len(ends) else expected_pointer
    if total * dtype.itemsize != bin_bytes:
        raise _bad(idx, f"its sizes add up to {total} {dtype} tokens ({total * dtype.itemsize} bytes) but "
                        f"{bin_path} has {bin_bytes} bytes (the .bin and .idx do not belong together?)")
    previous = 0
    for start in range(0, n_doc, _CHUNK):
        docs = index._read(index._documents_offset, np.int64, start, min(_CHUNK, n_doc - start))
        if (start == 0 and docs[0] != 0) or docs.min() < previous or np.any(np.diff(docs) < 0) or docs.max() > n_seq:
            raise _bad(idx, f"its document indices are not sequence numbers rising from 0 to {n_seq}")
        previous = int(docs[-1])
    return MegatronIndex(bin_path, idx, dtype, int(n_seq), int(n_doc), total)
