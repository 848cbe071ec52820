"""Read a domain's files into documents (text) or token arrays (pre-tokenized).

A path is a file or a folder; folders are walked recursively in sorted order so every run sees the same documents
in the same order. Formats are chosen by suffix:

- ``.jsonl`` / ``.json``: one JSON object per line, the document is its ``text_field``;
- ``.parquet``: the document is the ``text_field`` column of each row;
- ``.npy`` (1-D integer array; without a NumPy header, as OLMo/Dolma write them, raw integers) and ``.bin`` (raw
  integers, uint16 by default as in nanoGPT; a Megatron-LM indexed dataset when a ``.idx`` of the same prefix lies
  beside it, which is then part of it): pre-tokenized, read in place (``opmix.data.token_views``);
- anything else: a UTF-8 text file, one document per file.

Text and JSONL files may be compressed: ``.gz`` (gzip), ``.bz2``, ``.xz``, and ``.zst`` (Zstandard, with the
``zstandard`` module installed or Python's own ``compression.zstd``). They are decompressed while read, never
written out; the format is the suffix before the compression one (``docs.jsonl.gz`` is JSONL, ``notes.gz`` text).
Archives (``.zip``, ``.tar``, ``.tar.gz``...) and compressed Parquet / token arrays are refused with the command
that unpacks them.

A path may be a glob pattern (``data/*.txt``, ``data/**/*.jsonl``): it stands for the sorted files and folders it
matches, and matching nothing is an error naming the pattern.

Empty documents are skipped. Hidden files and folders (names starting with ``.``) are ignored in folder walks.
``inspect_sources`` checks files without reading them whole (kind, readable, a first look at the content, an
upper bound on their tokens): what a run checks before tokenizing anything.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import io
import json
import logging
import lzma
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from opmix.errors import OpmixError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
TOKEN_SUFFIXES = (".npy", ".bin")
# compression suffix -> (name, how to decompress it by hand)
COMPRESSIONS = {
    ".gz": ("gzip", "gunzip -k FILE"),
    ".bz2": ("bzip2", "bunzip2 -k FILE"),
    ".xz": ("xz", "unxz -k FILE"),
    ".zst": ("Zstandard", "zstd -d FILE"),
}
ARCHIVES = {  # name ending -> how to extract it
    ".zip": "unzip FILE", ".tar": "tar -xf FILE", ".tgz": "tar -xzf FILE", ".tar.gz": "tar -xzf FILE",
    ".tar.bz2": "tar -xjf FILE", ".tbz2": "tar -xjf FILE", ".tar.xz": "tar -xJf FILE", ".txz": "tar -xJf FILE",
    ".tar.zst": "tar --zstd -xf FILE", ".7z": "7z x FILE", ".rar": "unrar x FILE",
}
MAGIC = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "Zstandard": b"\x28\xb5\x2f\xfd"}
SNIFF_BYTES = 1 << 14  # what inspect_sources reads of each text file: its first 16 KiB
SNIFF_BUDGET = 1 << 25  # and of all a domain's files together (32 MiB); past it, files are only stat-checked


def _as_list(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def expand_pattern(path: str | Path) -> list[Path]:
    """A glob pattern's sorted matches (``**`` recursive; hidden names only where the pattern names them); a path
    that exists, or holds no pattern characters, is itself."""
    text = str(path)
    if not glob.has_magic(text) or Path(text).exists():
        return [Path(text)]
    matches = sorted(glob.glob(text, recursive=True))
    if not matches:
        raise OpmixError(
            f"the pattern {text} matches no file",
            "check the pattern (relative ones start at the config file's folder; ** spans folders), or list the files",
        )
    return [Path(m) for m in matches]


def list_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files, folders and glob patterns into the sorted list of files they name (folders recursively)."""
    paths = [match for path in _as_list(paths) for match in expand_pattern(path)]
    if not paths:
        raise OpmixError("no data paths given", "list at least one file or folder for the domain")
    files: list[Path] = []
    for path in paths:
        if not path.exists() and _megatron_prefix(path):
            path = Path(f"{path}.bin")  # a Megatron dataset named by its prefix, as Megatron-LM's data_path does
        if not path.exists():
            raise OpmixError(f"data path {path} does not exist", "check the path in the domain's file list")
        if path.is_file():
            files.append(path)
            continue
        found = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise OpmixError(f"data folder {path} holds no files", "put text/JSONL/Parquet/.npy/.bin files in it")
        files.extend(found)
    return _fold_megatron_indexes(files)


def _megatron_prefix(path: Path) -> bool:
    return Path(f"{path}.bin").is_file() and Path(f"{path}.idx").is_file()


def _fold_megatron_indexes(files: list[Path]) -> list[Path]:
    """A Megatron ``PREFIX.idx`` is part of its ``PREFIX.bin``: listed (or found in a folder) it stands for the
    ``.bin``, once."""
    out, seen = [], set()
    for path in files:
        if path.suffix.lower() == ".idx" and path.with_suffix(".bin").is_file():
            path = path.with_suffix(".bin")
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


@dataclass(frozen=True)
class FileKind:
    format: str  # "text", "jsonl", "parquet" or "tokens"
    compression: str | None = None  # a name of COMPRESSIONS ("gzip", ...), None for a plain file


def _zstd_open():
    """A function opening a .zst file as a binary stream, or None when no Zstandard module is importable."""
    try:
        from compression import zstd  # Python 3.14+

        return lambda path: zstd.open(path, "rb")
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None
    # read_across_frames: files written by pzstd or concatenated are several frames
    return lambda path: zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)


def file_kind(path: Path) -> FileKind:
    """How a file is read, from its name; archives and compressed files that cannot be read raise, naming the fix."""
    path = Path(path)
    name = path.name.lower()
    for ending, extract in ARCHIVES.items():
        if name.endswith(ending):
            raise OpmixError(
                f"{path} is an archive ({ending}); a domain lists files and folders, not archives",
                f"extract it ({extract.replace('FILE', str(path))}) and list the folder instead",
            )
    suffix, compression = path.suffix.lower(), None
    if suffix in COMPRESSIONS:
        compression, decompress = COMPRESSIONS[suffix]
        inner = Path(path.stem).suffix.lower()
        how = f"decompress it ({decompress.replace('FILE', str(path))})"
        if inner in TOKEN_SUFFIXES + PARQUET_SUFFIXES:
            what = "token array (read memory-mapped)" if inner in TOKEN_SUFFIXES else "Parquet file (compressed inside)"
            raise OpmixError(f"{path} is a {compression}-compressed {what}, which opmix reads uncompressed", how)
        if compression == "Zstandard" and _zstd_open() is None:
            raise OpmixError(
                f"{path} is Zstandard-compressed (.zst) and the zstandard module is not installed",
                f"pip install zstandard, or {how}",
            )
        suffix = inner
    if suffix in JSONL_SUFFIXES:
        return FileKind("jsonl", compression)
    if suffix in PARQUET_SUFFIXES:
        return FileKind("parquet", compression)
    if suffix in TOKEN_SUFFIXES:
        return FileKind("tokens", compression)
    return FileKind("text", compression)


@contextmanager
def open_binary(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    """The file's bytes as a stream, decompressed on the fly."""
    with ExitStack() as stack:
        if compression is None:
            handle = path.open("rb")
        elif compression == "gzip":
            handle = gzip.open(path, "rb")
        elif compression == "bzip2":
            handle = bz2.open(path, "rb")
        elif compression == "xz":
            handle = lzma.open(path, "rb")
        else:
            handle = _zstd_open()(path)
        yield stack.enter_context(handle)


def decompression_errors() -> tuple[type[BaseException], ...]:
    import zlib

    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _read_error(path: Path, kind: FileKind, exc: BaseException) -> OpmixError:
    """A read failure as a one-line error: the file cannot be opened, or its compressed data is damaged."""
    if kind.compression is None or (isinstance(exc, OSError) and exc.errno is not None):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return OpmixError(f"cannot read {path}: {reason}", "check that the file exists and is readable")
    decompress = COMPRESSIONS[path.suffix.lower()][1].replace("FILE", str(path))
    return OpmixError(
        f"cannot decompress {path} as {kind.compression} ({type(exc).__name__}: {exc})",
        f"check it is complete {kind.compression} data (try: {decompress}), or remove it from the domain",
    )


def _not_utf8(path: Path, kind: FileKind, offset: int) -> OpmixError:
    where = f"offset {offset}" if kind.compression is None else f"offset {offset} of its decompressed content"
    return OpmixError(f"{path} is not UTF-8 text (bad byte at {where})",
                      "convert it to UTF-8 or remove it from the domain")


def _check_token_text_mix(files: list[Path], kinds: list[FileKind]) -> bool:
    tokens = [f for f, k in zip(files, kinds) if k.format == "tokens"]
    if tokens and len(tokens) != len(files):
        text = next(f for f, k in zip(files, kinds) if k.format != "tokens")
        raise OpmixError(
            f"domain mixes token arrays ({tokens[0]}) and text files ({text})",
            "give a domain either only .npy/.bin token files or only text files",
        )
    return bool(tokens)


def is_pretokenized(paths: str | Path | Iterable[str | Path]) -> bool:
    """True when every file is a token array (.npy/.bin); False when none is; a mix is an error."""
    files = list_files(paths)
    return _check_token_text_mix(files, [file_kind(f) for f in files])


def _read_text_file(path: Path, kind: FileKind = FileKind("text")) -> Iterator[str]:
    try:
        with open_binary(path, kind.compression) as handle:
            raw = handle.read()  # a text file is one document: its decompressed bytes, once
    except decompression_errors() as exc:
        raise _read_error(path, kind, exc) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, kind, exc.start) from exc
    if text.strip():
        yield text


def _jsonl_text(path: Path, lineno: int, line: str, text_field: str) -> str:
    """The document of one JSONL line (not blank), or a one-line error naming file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise OpmixError(
            f"{path} line {lineno} is not valid JSON ({exc.msg})",
            "fix or remove that line; JSONL needs one JSON object per line",
        ) from exc
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise OpmixError(
            f"{path} line {lineno} has no text field {text_field!r} (it has: {keys})",
            "set the domain's text_field to the key that holds the text",
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise OpmixError(
            f"{path} line {lineno}: field {text_field!r} is {type(text).__name__}, not a string",
            "store the document text as a JSON string",
        )
    return text


def _read_jsonl(path: Path, text_field: str, kind: FileKind = FileKind("jsonl")) -> Iterator[str]:
    lineno = 0
    try:
        with open_binary(path, kind.compression) as raw:
            for lineno, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), start=1):  # streamed line by line
                if line.strip():
                    text = _jsonl_text(path, lineno, line, text_field)
                    if text.strip():
                        yield text
    except UnicodeDecodeError as exc:
        where = "" if kind.compression is None else " once decompressed"
        raise OpmixError(f"{path} is not UTF-8 text{where} (after line {lineno})", "convert it to UTF-8") from exc
    except decompression_errors() as exc:
        raise _read_error(path, kind, exc) from exc


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    for batch in _parquet_file(path, text_field).iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def _parquet_file(path: Path, text_field: str):
    import pyarrow.parquet as pq  # imported lazily: only Parquet domains pay for it

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise OpmixError(f"cannot read Parquet file {path}: {exc}", "check the file is valid Parquet") from exc
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise OpmixError(
            f"Parquet file {path} has no column {text_field!r} (it has: {columns})",
            "set the domain's text_field to the column that holds the text",
        )
    return parquet


def read_documents(paths: str | Path | Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of text sources in a deterministic order."""
    files = list_files(paths)
    yielded = 0
    for path in files:
        kind = file_kind(path)
        if kind.format == "tokens":
            raise OpmixError(f"{path} is a token array, not text", "read it with read_token_arrays")
        if kind.format == "jsonl":
            docs = _read_jsonl(path, text_field, kind)
        elif kind.format == "parquet":
            docs = _read_parquet(path, text_field)
        else:
            docs = _read_text_file(path, kind)
        for doc in docs:
            yielded += 1
            yield doc
    log.debug("read %d documents from %d files", yielded, len(files))


# Tokens a document can give beyond one per UTF-8 byte: the EOS the cache appends, and a word-start marker some
# tokenizers put first. Byte-level BPE, SentencePiece with byte fallback and the built-in byte tokenizer all emit
# at most one token per byte, so bytes + this bounds a document's tokens from above.
PER_DOCUMENT_TOKENS = 2


@dataclass
class SourceCheck:
    """What ``inspect_sources`` found: the files, whether they are token arrays, and how many tokens they hold at
    most (exact for token arrays; None when that is not known without reading them whole)."""

    files: list[Path]
    pretokenized: bool
    max_tokens: int | None
    unknown: list[Path] = field(default_factory=list)  # files whose size says nothing of their tokens


def inspect_sources(
    paths: str | Path | Iterable[str | Path], text_field: str = "text", bin_dtype: str | None = "uint16"
) -> SourceCheck:
    """Check a domain's files without reading them whole: each exists and is readable, its kind is supported,
    the first ``SNIFF_BYTES`` of text are UTF-8 (and JSONL lines there have the text field; up to
    ``SNIFF_BUDGET`` bytes in all, the files past it are only checked readable), Parquet has the column, token
    arrays are 1-D integers. ``bin_dtype`` None skips the ``.bin`` size checks (dtype not known)."""
    files = list_files(paths)
    kinds = [file_kind(f) for f in files]
    pretokenized = _check_token_text_mix(files, kinds)
    total: int | None = 0
    unknown = []
    budget = SNIFF_BUDGET
    for path, kind in zip(files, kinds):
        if kind.format == "tokens":
            count = _inspect_tokens(path, bin_dtype)
        elif kind.format == "parquet":
            _parquet_file(path, text_field)
            count = None
        elif budget > 0:
            count, read = _inspect_text(path, kind, text_field)
            budget -= read
        else:
            count = _text_size_bound(path, kind)
        if count is None:
            unknown.append(path)
        else:
            total += count
    return SourceCheck(files, pretokenized, None if unknown else total, unknown)


def _inspect_tokens(path: Path, bin_dtype: str | None) -> int | None:
    """Tokens in a token file, from its header (``.npy``), its index (Megatron ``.bin`` + ``.idx``) or its size
    (raw files; None when ``bin_dtype`` is None: not known)."""
    from opmix.data.megatron import has_index
    from opmix.data.token_files import open_token_file

    raw = not (path.suffix.lower() == ".bin" and has_index(path)) and not _has_npy_header(path)
    if raw and bin_dtype is None:
        try:
            with path.open("rb"):  # readable
                pass
        except OSError as exc:
            raise OpmixError(f"cannot read token file {path}: {exc}", "check the file is a valid array") from exc
        return None
    return open_token_file(path, bin_dtype or "uint16").size


def _has_npy_header(path: Path) -> bool:
    from opmix.data.token_files import NPY_MAGIC

    if path.suffix.lower() != ".npy":
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return True  # open_token_file names the problem


def _text_size_bound(path: Path, kind: FileKind) -> int | None:
    """At most how many tokens a text/JSONL file gives, from its size alone (None when compressed)."""
    try:
        with path.open("rb"):  # readable
            size = path.stat().st_size
    except OSError as exc:
        raise _read_error(path, kind, exc) from exc
    if kind.compression is not None:
        return None
    return size if kind.format == "jsonl" else size + PER_DOCUMENT_TOKENS  # a line's JSON outweighs its tokens


def _inspect_text(path: Path, kind: FileKind, text_field: str) -> tuple[int | None, int]:
    """Check the start of a text/JSONL file: (at most how many tokens it gives or None, bytes read)."""
    try:
        with open_binary(path, kind.compression) as handle:
            head = handle.read(SNIFF_BYTES)
            whole = len(head) < SNIFF_BYTES or not handle.read(1)
    except decompression_errors() as exc:
        raise _read_error(path, kind, exc) from exc
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as exc:
        for name, magic in MAGIC.items():  # compressed data under a plain name: say so, not "not UTF-8"
            if kind.compression is None and head.startswith(magic):
                suffix = next(s for s, (n, _) in COMPRESSIONS.items() if n == name)
                raise OpmixError(
                    f"{path} holds {name}-compressed data but its name does not end in {suffix}",
                    f"rename it to {path.name}{suffix} (then it is read decompressed), or decompress it",
                ) from exc
        raise _not_utf8(path, kind, exc.start) from exc
    if kind.format == "jsonl":
        lines = text.splitlines(keepends=True)
        if not whole and lines:
            lines = lines[:-1]  # the last line may be cut off
        docs = [_jsonl_text(path, i, line, text_field) for i, line in enumerate(lines, 1) if line.strip()]
        if whole:
            return sum(len(d.encode("utf-8")) + PER_DOCUMENT_TOKENS for d in docs if d.strip()), len(head)
    elif whole:
        return (len(head) + PER_DOCUMENT_TOKENS if text.strip() else 0), len(head)
    return _text_size_bound(path, kind), len(head)


def read_token_arrays(paths: str | Path | Sequence[str | Path], bin_dtype: str = "uint16") -> list[np.ndarray]:
    """Memory-map pre-tokenized files: ``.npy`` 1-D integer arrays (a ``.npy`` without NumPy header, as OLMo
    writes them, is raw ``bin_dtype``), ``.bin`` raw ``bin_dtype`` integers, or a Megatron ``.bin`` (an ``.idx``
    beside it gives the dtype). Negative ids are refused; the files are checked in bounded chunks."""
    from opmix.data.token_files import open_token_file

    arrays = []
    for path in list_files(paths):
        file_kind(path)  # a compressed token array or an archive: the error names how to unpack it
        token_file = open_token_file(path, bin_dtype)
        if token_file.dtype.kind == "i" and any(int(part.min()) < 0 for _, part in token_file.chunks() if part.size):
            raise OpmixError(f"{path} holds negative token ids", "store token ids >= 0")
        arrays.append(token_file.memmap())
    return arrays
