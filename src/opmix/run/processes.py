"""The processes of one run (``accelerate launch`` / ``torchrun``): who this is, who writes, how they meet.

Every process of a data-parallel run executes the same recipe. Only rank 0 writes to the run directory (the
atomic writers of ``opmix.run.atomic`` do nothing elsewhere), except inside ``own_writes()``, where a process
writes files no other process touches (a probe trained on its own rank). Decisions taken from files, such as
"is this step done", are rank 0's, broadcast, so every process takes the same branch and meets the others at the
same collectives. With one process every function here is a no-op or the obvious answer.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_local = threading.local()


def _distributed():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def rank() -> int:
    dist = _distributed()
    return dist.get_rank() if dist is not None else int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    dist = _distributed()
    return dist.get_world_size() if dist is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    return rank() == 0


def writes_here() -> bool:
    """Whether this process writes run files: rank 0 always, another rank only inside ``own_writes()``."""
    return is_main() or getattr(_local, "own_writes", False)


@contextlib.contextmanager
def own_writes() -> Iterator[None]:
    """Let this process write, whatever its rank: for files only it produces (its own probe's checkpoint)."""
    before = getattr(_local, "own_writes", False)
    _local.own_writes = True
    try:
        yield
    finally:
        _local.own_writes = before


def barrier() -> None:
    dist = _distributed()
    if dist is not None:
        dist.barrier()


def gather(obj: T) -> list[T]:
    """Every process's ``obj``, in rank order, on every process (picklable objects; tensors go by value)."""
    dist = _distributed()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result on every process."""
    dist = _distributed()
    if dist is None:
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling a cache), then the others (finding it filled). Before the
    launcher's processes have met (no process group yet: a library user's script, before its Trainer starts
    ``torch.distributed``), they cannot wait for each other: each runs the block and writes its own results (atomic
    writes of the same content)."""
    if _distributed() is None:
        with own_writes():
            yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
