"""Read a domain's files into documents (text) or token arrays (pre-tokenized).

A path is a file or a folder; folders are walked recursively in sorted order so every run sees the same documents
in the same order. Formats are chosen by suffix:

- ``.jsonl`` / ``.json``: one JSON object per line, the document is its ``text_field``;
- ``.parquet``: the document is the ``text_field`` column of each row;
- ``.npy`` (1-D integer array) and ``.bin`` (raw integers, uint16 by default as in nanoGPT): pre-tokenized;
- anything else: a UTF-8 text file, one document per file.

Empty documents are skipped. Hidden files and folders (names starting with ``.``) are ignored in folder walks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from opmix.errors import OpmixError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
TOKEN_SUFFIXES = (".npy", ".bin")


def _as_list(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def list_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the sorted list of files they name (folders recursively)."""
    paths = _as_list(paths)
    if not paths:
        raise OpmixError("no data paths given", "list at least one file or folder for the domain")
    files: list[Path] = []
    for path in paths:
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
    return files


def is_pretokenized(paths: str | Path | Iterable[str | Path]) -> bool:
    """True when every file is a token array (.npy/.bin); False when none is; a mix is an error."""
    files = list_files(paths)
    tokens = [f for f in files if f.suffix.lower() in TOKEN_SUFFIXES]
    if tokens and len(tokens) != len(files):
        text = next(f for f in files if f.suffix.lower() not in TOKEN_SUFFIXES)
        raise OpmixError(
            f"domain mixes token arrays ({tokens[0]}) and text files ({text})",
            "give a domain either only .npy/.bin token files or only text files",
        )
    return bool(tokens)


def _read_text_file(path: Path) -> Iterator[str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise OpmixError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OpmixError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start})",
            "convert it to UTF-8 or remove it from the domain",
        ) from exc
    if text.strip():
        yield text


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise OpmixError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from exc
    with handle:
        lineno = 0
        try:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
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
                if text.strip():
                    yield text
        except UnicodeDecodeError as exc:
            raise OpmixError(
                f"{path} is not UTF-8 text (after line {lineno})", "convert it to UTF-8"
            ) from exc


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
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
    for batch in parquet.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def read_documents(paths: str | Path | Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of text sources in a deterministic order."""
    files = list_files(paths)
    yielded = 0
    for path in files:
        suffix = path.suffix.lower()
        if suffix in TOKEN_SUFFIXES:
            raise OpmixError(f"{path} is a token array, not text", "read it with read_token_arrays")
        if suffix in JSONL_SUFFIXES:
            docs = _read_jsonl(path, text_field)
        elif suffix in PARQUET_SUFFIXES:
            docs = _read_parquet(path, text_field)
        else:
            docs = _read_text_file(path)
        for doc in docs:
            yielded += 1
            yield doc
    log.debug("read %d documents from %d files", yielded, len(files))


def read_token_arrays(paths: str | Path | Sequence[str | Path], bin_dtype: str = "uint16") -> list[np.ndarray]:
    """Load pre-tokenized files: ``.npy`` 1-D integer arrays, ``.bin`` raw ``bin_dtype`` integers (memory-mapped)."""
    arrays = []
    for path in list_files(paths):
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            elif suffix == ".bin":
                dtype = np.dtype(bin_dtype)
                if path.stat().st_size % dtype.itemsize:
                    raise OpmixError(
                        f"{path} has {path.stat().st_size} bytes, not a multiple of {dtype} ({dtype.itemsize} bytes)",
                        "set bin_dtype to the dtype the file was written with",
                    )
                array = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
            else:
                raise OpmixError(f"{path} is not a token array (.npy/.bin)", "read it with read_documents")
        except (OSError, ValueError) as exc:
            raise OpmixError(f"cannot read token file {path}: {exc}", "check the file is a valid array") from exc
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise OpmixError(
                f"{path} holds a {array.ndim}-D {array.dtype} array",
                "store token ids as a 1-D integer array",
            )
        if array.dtype.kind == "i" and array.size and int(array.min()) < 0:
            raise OpmixError(f"{path} holds negative token ids", "store token ids >= 0")
        arrays.append(array)
    return arrays
