"""Token files read in place, and their concatenated stream.

Token files:

- ``.npy`` with a NumPy header: a 1-D integer array;
- ``.npy`` without one (OLMo/Dolma's token files are raw arrays under that name) and ``.bin`` without an ``.idx``
  beside it: raw integers of ``data.bin_dtype`` (nanoGPT's ``.bin`` files are uint16);
- ``.bin`` with an ``.idx`` beside it: a Megatron-LM indexed dataset (``opmix.data.megatron``), dtype and
  document boundaries from the index.

Rows are read by positioned reads (``os.preadv``), whole-stream passes in bounded chunks; ``opmix.data.token_views``
says why not through memory maps.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opmix.data import megatron
from opmix.errors import OpmixError

NPY_MAGIC = b"\x93NUMPY"
SCAN_TOKENS = 1 << 23  # tokens per plain read of a whole-stream pass: 16 MiB of uint16


@dataclass
class TokenFile:
    """One token file: where its tokens start (``offset`` bytes in), their dtype and count, how it was read."""

    path: Path
    dtype: np.dtype
    offset: int
    size: int  # tokens
    kind: str  # "npy", "raw" or "megatron"
    index: megatron.MegatronIndex | None = None
    _memmap: np.ndarray | None = field(default=None, repr=False, compare=False)
    _fd: int | None = field(default=None, repr=False, compare=False)

    def read_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (this file's dtype, contiguous) with tokens from ``start``: one positioned read on a file
        descriptor kept open."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        raw = memoryview(out.view(np.uint8))
        at = self.offset + start * self.dtype.itemsize
        if hasattr(os, "preadv"):
            got = os.preadv(self._fd, [raw], at)
        else:  # no preadv (Windows): read, then copy
            data = os.pread(self._fd, raw.nbytes, at) if hasattr(os, "pread") else self.read(start, out.size).tobytes()
            got = len(data)
            raw[:got] = data
        if got != raw.nbytes:
            raise OpmixError(f"{self.path} ended early (read {got} of {raw.nbytes} bytes at token {start})",
                             "the file changed or was truncated since it was checked; restore it")
        return out

    def __del__(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def memmap(self) -> np.ndarray:
        """The tokens as a read-only memory map (opened once; not pickled)."""
        if self._memmap is None:
            if self.size == 0:
                self._memmap = np.zeros(0, dtype=self.dtype)
            else:
                self._memmap = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.size,))
                _advise_random(self._memmap)
        return self._memmap

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tokens [start, start + count) by a plain file read (no memory map: nothing stays in the process)."""
        count = max(0, min(count, self.size - start))
        if out is None:
            out = np.empty(count, dtype=self.dtype)
        buffer = out[:count].view(np.uint8)
        with self.path.open("rb") as handle:
            handle.seek(self.offset + start * self.dtype.itemsize)
            got = handle.readinto(buffer)
        if got != buffer.nbytes:
            raise OpmixError(f"{self.path} ended early (read {got} of {buffer.nbytes} bytes at token {start})",
                             "the file changed or was truncated since it was checked; restore it")
        return out[:count]

    def chunks(self, tokens: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, tokens) in order, ``tokens`` (default ``SCAN_TOKENS``) at a time, through one reused buffer."""
        tokens = tokens or SCAN_TOKENS
        buffer = np.empty(min(tokens, self.size), dtype=self.dtype)
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            for start in range(0, self.size, tokens):
                part = buffer[: min(tokens, self.size - start)]
                raw = part.view(np.uint8)
                if handle.readinto(raw) != raw.nbytes:
                    raise OpmixError(f"{self.path} ended early (at token {start})",
                                     "the file changed or was truncated since it was checked; restore it")
                yield start, part

    def document_starts(self) -> np.ndarray | None:
        """Token offsets where documents start, from a Megatron index; None for other files (EOS-separated)."""
        return self.index.document_starts() if self.index is not None else None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_memmap"] = None  # a memmap pickles as a full copy of its data; reopen it where unpickled
        state["_fd"] = None
        return state


def _advise_random(array: np.memmap) -> None:
    """Rows are read at random places: without this hint the kernel reads (and maps into the process) hundreds
    of KB around every row touched, so a few hundred rows would grow the resident memory by a hundred MB."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        try:
            handle.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):
            pass


def _read_header(handle, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    return np.lib.format._read_array_header(handle, version)  # 3.0 (utf-8 field names) has no public reader


def _check_dtype(path: Path, dtype: np.dtype, ndim: int = 1) -> None:
    if ndim != 1 or dtype.kind not in "iu":
        raise OpmixError(f"{path} holds a {ndim}-D {dtype} array", "store token ids as a 1-D integer array")


def open_token_file(path: Path, bin_dtype: str = "uint16") -> TokenFile:
    """Read a token file's header (never its tokens): kind, dtype, count; bad files raise one-line errors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin" and megatron.has_index(path):
        index = megatron.read_index(path)
        return TokenFile(path, index.dtype.newbyteorder("<"), 0, index.n_tokens, "megatron", index)
    if suffix not in (".npy", ".bin"):
        raise OpmixError(f"{path} is not a token array (.npy/.bin)", "read it with read_documents")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
            if suffix == ".npy" and magic == NPY_MAGIC:
                handle.seek(0)
                version = np.lib.format.read_magic(handle)
                shape, fortran, dtype = _read_header(handle, version)
                offset = handle.tell()
                _check_dtype(path, dtype, len(shape))
                if dtype.hasobject:
                    raise OpmixError(f"{path} holds Python objects", "store token ids as a 1-D integer array")
                size = int(shape[0])
                if offset + size * dtype.itemsize > path.stat().st_size:
                    raise OpmixError(f"{path} is shorter than its header says (truncated?)",
                                     "write the file again")
                return TokenFile(path, dtype, offset, size, "npy")
        nbytes = path.stat().st_size
    except (OSError, ValueError) as exc:
        if isinstance(exc, OpmixError):
            raise
        raise OpmixError(f"cannot read token file {path}: {exc}", "check the file is a valid array") from exc
    dtype = np.dtype(bin_dtype)
    _check_dtype(path, dtype)
    if nbytes % dtype.itemsize:
        what = "a raw token file (no NumPy header, as OLMo writes them)" if suffix == ".npy" else "a raw .bin"
        raise OpmixError(
            f"{path} has {nbytes} bytes, not a multiple of {dtype} ({dtype.itemsize} bytes); read as {what}",
            "set bin_dtype to the dtype the file was written with",
        )
    return TokenFile(path, dtype, 0, nbytes // dtype.itemsize, "raw")


class TokenStream:
    """The concatenation of token files, in order, as one stream of ``dtype`` tokens (ids that fit it: the
    vocabulary check makes sure of that before a stream is used)."""

    def __init__(self, files: Sequence[TokenFile], dtype):
        self.files = list(files)
        self.dtype = np.dtype(dtype)
        self.starts = np.cumsum([0] + [f.size for f in self.files]).astype(np.int64)  # file k: [starts[k], [k+1])
        self.size = int(self.starts[-1])

    def __len__(self) -> int:
        return self.size

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) by plain reads."""
        out = np.empty(max(0, stop - start), dtype=self.dtype)
        self._copy(start, stop, out)
        return out

    def _copy(self, start: int, stop: int, out: np.ndarray) -> None:
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        written = 0
        while start < stop:
            tf, base = self.files[k], int(self.starts[k])
            take = min(stop, base + tf.size) - start
            if take > 0:
                out[written:written + take] = tf.read(start - base, take)
                written += take
                start += take
            k += 1

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows ``[s, s + length)`` for each stream offset s: (len(starts), length), each row one positioned read.

        Plain reads, not the memory maps: on kernels that cache files in large folios, touching one row of a
        mapped file maps (and counts in the process's resident memory) up to 2 MB around it, so a few hundred
        random rows would grow the RSS by hundreds of MB; a read costs a few microseconds and leaves nothing."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), length), dtype=self.dtype)
        if not len(starts):
            return out
        k = np.searchsorted(self.starts, starts, side="right") - 1
        inside = starts + length <= self.starts[np.minimum(k + 1, len(self.files))]
        for f in np.unique(k[inside]):
            rows = np.flatnonzero(inside & (k == f))
            tf = self.files[f]
            local = starts[rows] - self.starts[f]
            order = np.argsort(local, kind="stable")  # ascending offsets: the file is read front to back
            if tf.dtype == self.dtype:
                for row, at in zip(rows[order], local[order]):
                    tf.read_into(int(at), out[row])
            else:
                buffer = np.empty(length, dtype=tf.dtype)
                for row, at in zip(rows[order], local[order]):
                    out[row] = tf.read_into(int(at), buffer)
        for row in np.flatnonzero(~inside):  # a row across two files
            self._copy(int(starts[row]), int(starts[row]) + length, out[row])
        return out
