"""A run directory: everything one opmix run writes, resumable after an interruption.

Layout::

    <root>/
      .lock              held (fcntl.flock) by the one opmix process using the directory; holds its pid
      config.yaml        the run's config; a resume with a config that differs in a way that matters is refused
      ledger.json        compute ledger (opmix.run.ledger), so a resumed run keeps earlier stages' FLOPs
      steps/<step>.json  completion marker of a finished step: its artifacts' sizes and sha256, info, timestamp
      ...                the artifacts themselves, wherever the caller puts them (``RunDir.path(...)``)

A step is done iff its marker exists and every artifact it lists still has the recorded size and sha256; a step
whose artifact is missing or altered is redone, never trusted. The pattern for a step::

    with run.lock():
        if not run.is_done("probe-old"):
            ...write artifacts with opmix.run.atomic...
            run.mark_done("probe-old", [adapter_dir], info={"loss": 2.1})

Markers are written after their artifacts, both atomically, so a crash at any point leaves either no marker
(the step is redone) or a marker whose artifacts are complete.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from opmix.errors import OpmixError, RunLockedError
from opmix.run import processes
from opmix.run.atomic import remove_leftovers, write_json, write_yaml
from opmix.run.faults import fault_point

log = logging.getLogger(__name__)

_MISSING = object()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class RunDir:
    """One run directory (layout in the module docstring). Creating it creates ``root``; nothing else is written."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()  # absolute: messages name it fully, a later chdir changes nothing
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OpmixError(f"cannot create run directory {self.root} ({exc.strerror})", "use another --out") from exc

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- exclusive use ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the directory for this process; a second holder (any process, or a second ``lock()``) is refused.

        The lock is an advisory ``flock`` on ``root/.lock``, released by the kernel when the process dies, so a
        killed run never leaves a stale lock. On acquiring it, temp files left by a killed writer are removed.
        Under a data-parallel launcher (``RANK`` set, as ``accelerate launch``/torchrun do) only rank 0 takes the
        lock: the other ranks are the same run, not a second invocation.
        """
        if int(os.environ.get("RANK", "0") or 0) != 0:
            yield self
            return
        lock_path = self.root / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise RunLockedError(
                    f"run directory {self.root} is in use by another opmix process (pid {holder})",
                    "wait for it to finish or use another --out",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            removed = remove_leftovers(self.root)
            if removed:
                log.info("removed %d temp file(s) left in %s by an interrupted run", removed, self.root)
            try:
                yield self
            finally:
                os.ftruncate(fd, 0)  # the lock file is kept (deleting it would race with a waiting process)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- paths -----------------------------------------------------------------------------------------------

    def path(self, *parts: str | os.PathLike) -> Path:
        """``root / parts``, with its parent folders created (the path itself is not)."""
        target = self.root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _marker(self, step: str) -> Path:
        if not step or step.startswith(".") or "/" in step or "\\" in step or "\0" in step:
            raise ValueError(f"step name {step!r} must be a plain file name")
        return self.root / "steps" / f"{step}.json"

    # -- steps -----------------------------------------------------------------------------------------------

    def mark_done(self, step: str, artifacts: Sequence[str | os.PathLike], info: dict | None = None) -> None:
        """Record ``step`` as finished, with the size and sha256 of each artifact.

        An artifact is a file or a folder (every file inside is recorded, by path relative to the folder).
        Artifacts inside ``root`` are recorded relative to it, so the run directory can be moved. ``info`` must
        be JSON-serializable. Call this only after every artifact is completely written.
        """
        marker = self._marker(step)
        if processes.writes_here():
            records = [self._record(Path(a)) for a in artifacts]
            fault_point(f"mark:{step}")
            finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_json(marker, {"step": step, "finished_at": finished_at, "info": info or {}, "artifacts": records})
        processes.barrier()  # every process of the run calls it: none reads the step's files before they exist

    def is_done(self, step: str) -> bool:
        """True iff ``step``'s marker exists and every artifact it lists verifies (size, then sha256).

        A marker whose artifact is missing or altered logs a warning and gives False: the caller redoes the step.
        In a multi-process run it is rank 0's answer on every process (all of them take the same branch).
        """
        return processes.from_main(lambda: self._verified(step))

    def _verified(self, step: str) -> bool:
        marker = self._read_marker(step)
        if marker is None:
            return False
        for record in marker.get("artifacts", []):
            problem = self._verify(record)
            if problem is not None:
                log.warning("step %r in %s will be redone: %s", step, self.root, problem)
                return False
        return True

    def has_progress(self) -> bool:
        """True once any step has finished or any training step has written a resumable checkpoint."""
        steps = self.root / "steps"
        if steps.is_dir() and any(steps.glob("*.json")):
            return True
        return any(self.root.glob("*/checkpoint/state.json"))

    def step_info(self, step: str) -> dict | None:
        """The ``info`` given to ``mark_done`` for ``step``, or None if there is no marker (not verified)."""
        marker = self._read_marker(step)
        return None if marker is None else marker.get("info", {})

    def invalidate(self, step: str) -> None:
        """Remove ``step``'s marker, so the step is redone. Its artifacts are left in place."""
        if processes.writes_here():
            self._marker(step).unlink(missing_ok=True)

    def _read_marker(self, step: str) -> dict | None:
        marker = self._marker(step)
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("step %r in %s will be redone: marker %s is unreadable (%s)", step, self.root, marker, exc)
            return None

    def _record(self, artifact: Path) -> dict[str, Any]:
        if not artifact.exists():
            raise FileNotFoundError(f"artifact {artifact} does not exist; write it before mark_done")
        try:
            stored = artifact.resolve().relative_to(self.root).as_posix()
        except ValueError:
            stored = str(artifact.resolve())  # outside the run directory: keep the absolute path
        if artifact.is_dir():
            files = sorted(p for p in artifact.rglob("*") if p.is_file())
            return {"path": stored, "files": [_file_record(p, p.relative_to(artifact).as_posix()) for p in files]}
        return _file_record(artifact, stored)

    def _verify(self, record: dict[str, Any]) -> str | None:
        """None if the recorded artifact is intact, else what is wrong with it."""
        path = Path(record["path"])
        path = path if path.is_absolute() else self.root / path
        if "files" in record:
            if not path.is_dir():
                return f"artifact folder {path} is missing"
            for entry in record["files"]:
                problem = _verify_file(path / entry["path"], entry)
                if problem is not None:
                    return problem
            return None
        return _verify_file(path, record)

    # -- config ----------------------------------------------------------------------------------------------

    def save_config(self, config: dict, ignore: Collection[str] = ()) -> None:
        """Write ``root/config.yaml``; refuse a resume whose config differs from the stored one.

        Keys are compared flattened (``train.lr``); a key in ``ignore`` (or under one: ``output`` covers
        ``output.plots``) may differ, e.g. output-only settings. When the configs agree the file is rewritten
        with the new values, so ignored keys show the latest invocation. ``config`` must hold plain YAML types.
        """
        path = self.root / "config.yaml"
        # a YAML round trip, so that e.g. a tuple compares equal to the list it is stored as
        new = yaml.safe_load(yaml.safe_dump(config))
        if path.exists():
            try:
                old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise OpmixError(
                    f"cannot read {path} ({exc})", "restore it, or start a new run with another --out"
                ) from exc
            key, old_value, new_value = _first_difference(old, new, ignore)
            if key == "train.steps" and (self.root / "summary.json").exists():
                raise OpmixError(
                    f"run directory {self.root} is a finished run of {old_value} steps; a finished run is not "
                    f"extended to {new_value} (its learning rate has already decayed, so more steps would not be "
                    "the run a longer budget gives)",
                    f"train further from its model in a new run (model.path={self.root / 'final' / 'model'}, e.g. "
                    "`opmix continual` to add data), or start a new run with the longer budget",
                )
            if key is not None:
                raise OpmixError(
                    f"run directory {self.root} was started with a different config: {key} is "
                    f"{_show(old_value)} there but {_show(new_value)} now",
                    "resume with the same config, or use a new --out",
                )
        write_yaml(path, new)


def _file_record(path: Path, stored: str) -> dict[str, Any]:
    return {"path": stored, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _verify_file(path: Path, record: dict[str, Any]) -> str | None:
    try:
        size = path.stat().st_size
    except OSError:
        return f"artifact {path} is missing"
    if size != record["size"]:
        return f"artifact {path} has {size} bytes, {record['size']} were recorded"
    if sha256_file(path) != record["sha256"]:
        return f"artifact {path} was modified (sha256 differs from the recorded one)"
    return None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and (tree or not prefix):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def _first_difference(old: Any, new: Any, ignore: Collection[str]) -> tuple[str | None, Any, Any]:
    flat_old, flat_new = _flatten(old), _flatten(new)
    for key in sorted(set(flat_old) | set(flat_new)):
        if any(key == skip or key.startswith(f"{skip}.") for skip in ignore):
            continue
        a, b = flat_old.get(key, _MISSING), flat_new.get(key, _MISSING)
        if a is _MISSING or b is _MISSING or a != b or (type(a) is bool) != (type(b) is bool):
            return key, a, b
    return None, None, None


def _show(value: Any) -> str:
    if value is _MISSING:
        return "absent"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
