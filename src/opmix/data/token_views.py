"""Pre-tokenized domains read in place: (n, seq_len) sequence views over the stream of their token files.

A pre-tokenized domain is never copied: its train and eval splits are ranges of the concatenated stream of its
files, and ``SequenceView`` serves them as a read-only ``(n_sequences, seq_len)`` integer array, reading only the
rows asked for, each by one positioned read (``os.preadv``) from the file the OS keeps in its page cache.
Whole-stream passes (the vocabulary check, the document boundaries, hashing the tokens) read the files in bounded
chunks. Neither maps the files into the process: on recent kernels a touched page of a mapped file brings its whole
page-cache folio (up to 2 MB) into the process's resident memory, so random rows of a mapped multi-GB file would
grow it without bound; read, they cost a few microseconds each and leave nothing behind.
(``TokenFile.memmap`` still gives a memory map, for ``read_token_arrays``.) The files and their stream:
``opmix.data.token_files``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from opmix.data.token_files import SCAN_TOKENS, TokenStream
from opmix.errors import OpmixError

MATERIALIZE_BYTES = 16 << 20  # a sliced view at most this big is handed out as an ndarray by as_array_if_small


class SequenceView:
    """A read-only ``(n, seq_len)`` array of sequences over ranges of a ``TokenStream``.

    The rows are cut from the *virtual stream*: the concatenation of ``ranges`` ([start, end) of the stream, in
    order). Row i starts at virtual offset ``first + i * stride`` (consecutive sequences: ``stride == seq_len``),
    or at ``offsets[i]`` when explicit offsets are given (the eval set's rows). Integer and index-array access
    return ndarrays; slices return views; ``np.asarray(view)`` reads every row (for small views only)."""

    ndim = 2

    def __init__(self, stream: TokenStream, ranges: Sequence[Sequence[int]], seq_len: int, *, first: int = 0,
                 stride: int | None = None, count: int | None = None, offsets: np.ndarray | None = None):
        self.stream = stream
        self.ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        self.seq_len = int(seq_len)
        lengths = self.ranges[:, 1] - self.ranges[:, 0]
        self._vstarts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # virtual start of each range
        self.virtual_size = int(self._vstarts[-1])
        self._offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        self._first = int(first)
        self._stride = self.seq_len if stride is None else int(stride)
        if self._offsets is not None:
            self._count = len(self._offsets)
        elif count is not None:
            self._count = int(count)
        else:
            self._count = max(0, (self.virtual_size - self._first) // self.seq_len)

    # -- array protocol ------------------------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.stream.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self._count, self.seq_len)

    @property
    def size(self) -> int:
        return self._count * self.seq_len

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"SequenceView(shape={self.shape}, dtype={self.dtype}, files={len(self.stream.files)})"

    def __array__(self, dtype=None, copy=None):
        rows = self._rows(np.arange(self._count, dtype=np.int64))
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def tolist(self) -> list:
        return np.asarray(self).tolist()

    def __iter__(self) -> Iterator[np.ndarray]:
        block = max(1, (1 << 20) // max(1, self.seq_len))
        for start in range(0, self._count, block):
            yield from self._rows(np.arange(start, min(self._count, start + block), dtype=np.int64))

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head, rest = (key[0], key[1:]) if key else (slice(None), ())
            picked = self[head]
            picked = np.asarray(picked) if isinstance(picked, SequenceView) else picked
            if isinstance(head, (int, np.integer)):
                return picked[rest] if rest else picked
            return picked[(slice(None), *rest)]
        if isinstance(key, slice):
            return self._slice(key)
        if isinstance(key, (int, np.integer)) or (hasattr(key, "__index__") and not hasattr(key, "__len__")):
            i = operator.index(key)
            if i < 0:
                i += self._count
            if not 0 <= i < self._count:
                raise IndexError(f"row {key} is out of range for {self._count} sequences")
            return self._rows(np.array([i], dtype=np.int64))[0]
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (self._count,):
                raise IndexError(f"boolean index of shape {index.shape} for {self._count} sequences")
            index = np.flatnonzero(index)
        if index.dtype.kind not in "iu":
            raise IndexError(f"sequences are indexed by integers, not {index.dtype}")
        flat = index.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + self._count, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= self._count):
            raise IndexError(f"index out of range for {self._count} sequences")
        return self._rows(flat).reshape(*index.shape, self.seq_len)

    def _slice(self, key: slice) -> SequenceView:
        picked = range(self._count)[key]
        if self._offsets is not None:
            return SequenceView(self.stream, self.ranges, self.seq_len, offsets=self._offsets[key])
        return SequenceView(self.stream, self.ranges, self.seq_len, first=self._first + picked.start * self._stride,
                            stride=self._stride * picked.step, count=len(picked))

    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if shape in ((-1,), (self.size,)):
            return FlatTokens(self)
        if shape in ((-1, self.seq_len), (self._count, self.seq_len), (self._count, -1)):
            return self
        return np.asarray(self).reshape(shape)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def as_array_if_small(self, limit: int = MATERIALIZE_BYTES):
        """An ndarray copy when it takes at most ``limit`` bytes, else the view itself."""
        return np.asarray(self) if self.nbytes <= limit else self

    # -- reading -------------------------------------------------------------------------------------------
    def row_offsets(self, rows: np.ndarray) -> np.ndarray:
        """Virtual-stream offsets where the given rows start."""
        if self._offsets is not None:
            return self._offsets[rows]
        return self._first + rows * self._stride

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        v = self.row_offsets(rows)
        r = np.searchsorted(self._vstarts, v, side="right") - 1
        r = np.minimum(r, len(self.ranges) - 1)
        inside = v + self.seq_len <= self._vstarts[r + 1]
        if inside.all():
            return self.stream.gather(self.ranges[r, 0] + (v - self._vstarts[r]), self.seq_len)
        out = np.empty((len(v), self.seq_len), dtype=self.dtype)
        if inside.any():
            out[inside] = self.stream.gather(self.ranges[r[inside], 0] + (v[inside] - self._vstarts[r[inside]]),
                                             self.seq_len)
        for i in np.flatnonzero(~inside):  # a row that joins two ranges (either side of an eval piece)
            out[i] = self.read_virtual(int(v[i]), int(v[i]) + self.seq_len)
        return out

    def read_virtual(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the virtual stream, by plain reads."""
        out = np.empty(max(0, stop - start), dtype=self.dtype)
        r = int(np.searchsorted(self._vstarts, start, side="right")) - 1
        written = 0
        while start < stop:
            a, b = int(self.ranges[r, 0]), int(self.ranges[r, 1])
            v0 = int(self._vstarts[r])
            take = min(stop, v0 + (b - a)) - start
            if take > 0:
                s = a + start - v0
                self.stream._copy(s, s + take, out[written:written + take])
                written += take
                start += take
            r += 1
        return out

    def iter_tokens(self, chunk: int = SCAN_TOKENS) -> Iterator[np.ndarray]:
        """Every token of the rows in order, ``chunk`` at a time, by plain reads (bounded memory)."""
        yield from FlatTokens(self).chunks(chunk)


class FlatTokens:
    """``view.reshape(-1)``: the rows' tokens as one 1-D read-only sequence, sliced without reading it whole."""

    ndim = 1

    def __init__(self, view: SequenceView):
        self.view = view

    @property
    def dtype(self) -> np.dtype:
        return self.view.dtype

    @property
    def size(self) -> int:
        return self.view.size

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def __array__(self, dtype=None, copy=None):
        out = self[0:self.size]
        return out if dtype is None else out.astype(dtype, copy=False)

    def tolist(self) -> list:
        return np.asarray(self).tolist()

    def chunks(self, chunk: int = SCAN_TOKENS) -> Iterator[np.ndarray]:
        for start in range(0, self.size, chunk):
            yield self[start:start + chunk]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.size if key < 0 else 0)
            if not 0 <= i < self.size:
                raise IndexError(f"token {key} is out of range for {self.size} tokens")
            return self[i:i + 1][0]
        if not isinstance(key, slice):
            return np.asarray(self)[key]
        start, stop, step = key.indices(self.size)
        if step != 1:
            return self[start:stop][::step] if stop > start else np.empty(0, self.dtype)
        stop = max(start, stop)
        view, L = self.view, self.view.seq_len
        if view._offsets is None and view._stride == L:  # consecutive rows: one range of the virtual stream
            return view.read_virtual(view._first + start, view._first + stop)
        out = np.empty(stop - start, dtype=self.dtype)
        written = 0
        for row in range(start // L, (stop - 1) // L + 1 if stop > start else start // L):
            a = max(start, row * L) - row * L
            b = min(stop, (row + 1) * L) - row * L
            v = int(view.row_offsets(np.array([row]))[0])
            out[written:written + b - a] = view.read_virtual(v + a, v + b)
            written += b - a
        return out


@dataclass
class Boundaries:
    """What one pass over a stream found about its document boundaries near some query positions.

    Boundaries B: 0, the stream's end n, every position after an EOS, every document start of a Megatron index;
    document starts D = B without n. For each query q: ``prev[q]`` = max B <= q, ``next[q]`` = min B >= q and
    ``count[q]`` = how many of D are <= q. That is all the eval split needs (where a cut moves, how many documents
    a piece touches) without keeping every boundary of a stream of any size."""

    n: int
    found: bool  # any EOS or Megatron index: the stream has document boundaries
    prev: dict[int, int]
    next: dict[int, int]
    count: dict[int, int]

    def snap(self, q: int) -> int:
        """The boundary nearest to the query q (the lower one on a tie), as ``cache._snap`` does."""
        low, high = self.prev[q], self.next[q]
        return low if q - low <= high - q else high

    def doc_counts(self) -> dict[int, int]:
        """#D <= x for every x the eval split may ask of: the queries and, for each, the boundaries around it and
        the position before each of those."""
        n, known = self.n, {}
        for q, c in self.count.items():
            known[q] = c
            low, high = self.prev[q], self.next[q]
            known[low] = c
            known[low - 1] = c - (1 if low < n else 0)
            if high == q:
                known[high - 1] = c - (1 if q < n else 0)
            else:
                known[high] = c + (1 if high < n else 0)
                known[high - 1] = c
        return known


def scan_stream(stream: TokenStream, eos: int | None, queries, limit: int, name: str,
                progress=None) -> Boundaries:
    """One pass over every token by plain reads in bounded chunks: each id is in [0, limit) (else a one-line
    error naming the file), and the document boundaries around ``queries`` (see ``Boundaries``)."""
    n = stream.size
    q = np.unique(np.asarray(list(queries), dtype=np.int64))
    prev = np.zeros(len(q), dtype=np.int64)  # 0 is a boundary
    nxt = np.full(len(q), -1, dtype=np.int64)
    nxt[q == 0] = 0
    count = np.ones(len(q), dtype=np.int64) if n else np.zeros(len(q), dtype=np.int64)  # 0 is a document start
    found = False
    last = 0  # the last boundary counted

    def add(bs: np.ndarray) -> None:
        nonlocal last
        bs = bs[(bs > last) & (bs < n)]
        if not len(bs):
            return
        last = int(bs[-1])
        below = np.searchsorted(bs, q, side="right")  # boundaries of bs <= q
        count[:] += below
        has = below > 0
        prev[has] = np.maximum(prev[has], bs[below[has] - 1])
        at = np.searchsorted(bs, q, side="left")
        todo = (nxt < 0) & (at < len(bs))
        nxt[todo] = bs[at[todo]]

    for k, tf in enumerate(stream.files):
        base = int(stream.starts[k])
        starts = tf.document_starts()
        if starts is not None:
            found = True
            add(base + np.unique(starts))
        for start, part in tf.chunks():
            if part.size:
                high = int(part.max())
                low = int(part.min()) if part.dtype.kind == "i" else 0
                if low < 0:
                    raise OpmixError(f"domain {name!r}: {tf.path} holds negative token ids", "store token ids >= 0")
                if high >= limit:
                    raise OpmixError(
                        f"domain {name!r}: {tf.path} holds token id {high} but the tokenizer's vocabulary has "
                        f"{limit} ids (vocabulary mismatch)",
                        "use the tokenizer the files were made with, or re-tokenize the text",
                    )
                if starts is None and eos is not None:
                    ends = np.flatnonzero(part == eos)
                    if len(ends):
                        found = True
                        add(base + start + ends + 1)
            if progress is not None:
                progress.update(int(part.nbytes))
    prev[q >= n] = n
    nxt[nxt < 0] = n
    keys = [int(x) for x in q]
    return Boundaries(n, found, dict(zip(keys, map(int, prev))), dict(zip(keys, map(int, nxt))),
                      dict(zip(keys, map(int, count))))


class ByteProgress:
    """A ``opmix.progress.Progress`` counted in MB, fed with byte counts."""

    def __init__(self, stage: str, total_bytes: int):
        from opmix.progress import Progress

        self.progress = Progress(stage, max(1, round(total_bytes / 1e6)), unit="MB")
        self.bytes = 0

    def update(self, nbytes: int) -> None:
        before = round(self.bytes / 1e6)
        self.bytes += int(nbytes)
        step = min(round(self.bytes / 1e6), self.progress.total) - before
        if step > 0:
            self.progress.update(step)

    def close(self) -> None:
        self.progress.close()

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
