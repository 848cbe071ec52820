"""Atomic writes: a file (or folder) is either the complete old version or the complete new one, never half.

Every writer serializes in memory first, writes to a temp file next to the target (same directory, so the final
``os.replace`` is a rename within one filesystem), flushes and fsyncs it, then renames it over the target. On any
failure the temp file is removed and the previous target is left untouched. An ``OSError`` (disk full, read-only
filesystem, permissions) becomes an ``OpmixError`` naming the path and the fix; any other exception (a value the
serializer cannot handle) is re-raised as is, because it is a bug, not something the user can fix.

Temp names contain ``TEMP_MARK`` so that a run directory's owner can sweep leftovers of a killed process.

In a multi-process run only rank 0 writes (``opmix.run.processes.writes_here``): elsewhere the writers do nothing,
and ``atomic_file`` / ``atomic_dir`` hand out a throwaway temp file / folder outside the target's directory.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from opmix.errors import OpmixError
from opmix.run.processes import writes_here

TEMP_MARK = ".opmix-tmp-"  # in the name of every temp file/folder this module creates
OLD_MARK = ".opmix-old-"  # a replaced folder, briefly, while atomic_dir swaps it out


def dumps_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, 2-space indent, floats as Python writes them, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    path = Path(path)
    _write_atomic(path, lambda fd: _write_all(fd, data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as deterministic JSON (equal input gives equal bytes)."""
    write_text(path, dumps_json(obj))


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as block-style YAML with sorted keys (safe dumper: plain types only)."""
    write_text(path, yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True))


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    """Atomically write ``rows`` as CSV with a header; a row key not in ``fieldnames`` raises ValueError."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically write ``tensors`` (name -> torch.Tensor) as a safetensors file.

    Serialized in memory (one extra copy of the data) rather than with ``safetensors.torch.save_file``, because
    save_file can silently drop a write error such as a full disk.
    """
    from safetensors.torch import (
        save,  # deferred: keeps `import opmix.run` free of torch
    )

    data = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    write_bytes(path, data)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[io.BufferedWriter]:
    """Yield a binary file handle whose content replaces ``path`` on success; on failure ``path`` is untouched.

    For outputs too large to build in memory first (token caches): the caller streams into the handle.
    """
    if not writes_here():
        with tempfile.TemporaryFile() as discarded:
            yield discarded
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            raise _user_error(path, exc) from exc
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder next to ``path``; on success it replaces ``path``, on failure it is removed.

    Every file inside is fsynced before the rename. An existing ``path`` is first renamed aside and deleted only
    after the new folder is in place; a crash between the two renames leaves ``path`` missing (and an
    ``OLD_MARK`` folder behind), which a run directory treats as "step not done".
    """
    if not writes_here():
        with tempfile.TemporaryDirectory() as discarded:
            yield Path(discarded)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}"
    old = None
    try:
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = path.parent / f".{path.name}{OLD_MARK}{secrets.token_hex(4)}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old, path)  # put the previous folder back
        # only storage problems become user errors: an OSError from the caller's own code may be a bug
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            raise _user_error(path, exc) from exc
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """For files written outside these writers (a scratch file): a full disk, a read-only or unwritable folder
    becomes the same one-line error naming ``path`` and the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _STORAGE_ERRNOS:
            raise _user_error(Path(path), exc) from exc
        raise


def remove_leftovers(root: str | os.PathLike) -> int:
    """Delete temp files/folders under ``root`` left by killed writers; returns how many were removed.

    Only safe while no other process writes under ``root`` (a run directory calls it while holding its lock).
    """
    removed = 0
    for leftover in sorted(Path(root).rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if TEMP_MARK in leftover.name or OLD_MARK in leftover.name:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_atomic(path: Path, write: Callable[[int], None]) -> None:
    if not writes_here():
        return
    tmp = path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}"
    fd = -1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide permissions (mkstemp would force 0o600 on a shared machine)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        write(fd)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _user_error(path, exc) from exc
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable; some filesystems refuse fsync on a directory, which is harmless here
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO})


def _user_error(path: Path, exc: OSError) -> OpmixError:
    where = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OpmixError(f"out of disk space writing {path}", f"free disk space on {where} or use another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OpmixError(f"cannot write {path} ({exc.strerror})", f"make {where} writable or use another --out")
    return OpmixError(
        f"writing {path} failed ({exc.strerror or exc})", f"check that {where} is writable and has free space"
    )
