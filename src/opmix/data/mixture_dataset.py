"""``MixtureDataset``: token domains mixed by live-settable weights, as a ``torch.utils.data.IterableDataset``.

It yields ``{"input_ids": LongTensor (seq_len,), "labels": the same}`` forever (give the HF ``Trainer`` a
``max_steps``), or whole batches ``(batch_size, seq_len)`` with ``batch_size=`` (then use ``DataLoader(ds,
batch_size=None)``, or iterate it directly in a plain loop).

Draws. Every process (data-parallel rank) and every ``DataLoader`` worker iterates its own *shard*: shard
``rank * workers + worker`` of ``world_size * workers`` owns the sequences ``i`` of each domain with
``i % n_shards == shard``, so shards never overlap and together hold every sequence. Within a shard, sequences are
drawn by ``opmix.data.sampler.MixtureSampler`` (a seeded categorical draw of the domain per sequence, a seeded
permutation per domain and epoch). Those draws are sequential (batches of a and b rows equal one of a + b), so the
sequence a shard yields depends only on the seed and on *when* (after how many yielded sequences) the weights were
changed; with one shard it is exactly ``MixtureSampler(domains, weights, seed).next_batch()``'s rows.

Weights. ``set_weights`` applies from the next sequence the dataset yields. The weights live in a small
shared-memory tensor, so ``DataLoader`` worker processes see a change too (each from the next sequence it draws,
which, with prefetching, is a little later than in the main process).

Resuming. ``state_dict()`` records, for the shard of this process, the sampler's state at a recent chunk start,
how many sequences were yielded, and every weight change since; ``load_state_dict`` replays from there, so the
resumed dataset continues the exact sequence, weight changes included. ``state_dict(consumed=n)`` gives the state
as of n yielded sequences (the Hugging Face ``Trainer``'s data loader fetches a batch ahead: the callback asks for
the state at the sequences actually trained). Exact resume needs the shard to live in this process:
``num_workers=0`` (the ``Trainer`` default); with workers, ``state_dict`` raises ``OpmixError``.
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from opmix.data.sampler import MixtureSampler
from opmix.errors import OpmixError

STATE_VERSION = 1
_CHECKPOINTS = 256  # chunk starts remembered, for state_dict(consumed=n) a little in the past
_VERSION, _IN_WORKERS, _WEIGHTS = 0, 1, 2  # layout of the shared control tensor


def _shard_seed(seed: int, shard: int, n_shards: int) -> int:
    if n_shards == 1:
        return int(seed)  # one shard: the very stream MixtureSampler(seed) draws
    digest = hashlib.sha256(f"opmix-shard/{seed}/{shard}/{n_shards}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Shard:
    """One shard's stream: a MixtureSampler over its sequences, a buffer of drawn rows, the weight schedule."""

    def __init__(self, arrays: Mapping[str, np.ndarray], weights: dict[str, float], seed: int, chunk: int):
        self.sampler = MixtureSampler(arrays, weights, batch_size=chunk, seed=seed)
        self.chunk = chunk
        self.consumed = 0  # sequences yielded
        self.schedule: list[tuple[int, dict[str, float]]] = []  # (from sequence index, weights), after the start
        self.buffer = torch.empty(0, self.sampler.seq_len, dtype=torch.long)
        self.position = 0  # next row of the buffer
        self.buffer_start = 0  # sequence index of the buffer's first row
        self.buffer_state: dict | None = None  # sampler state before the buffer was drawn
        self.checkpoints: deque[tuple[int, dict]] = deque(maxlen=_CHECKPOINTS)
        self.version = 0.0  # of the shared weights last applied

    def set_weights(self, weights: dict[str, float]) -> None:
        """From the next sequence on: rows drawn ahead with the old weights are given back (the sampler is put
        back to where it stood after the rows already yielded)."""
        if self.position < len(self.buffer):
            self.sampler.load_state_dict(self.buffer_state)
            self.sampler.next_batch(self.consumed - self.buffer_start)  # redraw exactly what was yielded
            self.buffer = self.buffer[:0]
            self.position = 0
        # a live change overrides changes still ahead in a replayed schedule
        self.schedule = [(count, w) for count, w in self.schedule if count < self.consumed]
        self.schedule.append((self.consumed, dict(weights)))
        self.sampler.set_weights(weights)

    def _next_change(self) -> int | None:
        later = [count for count, _ in self.schedule if count > self.consumed]
        return min(later) if later else None

    def refill(self) -> None:
        for count, weights in self.schedule:  # changes due now (a replayed schedule after load_state_dict)
            if count == self.consumed:
                self.sampler.set_weights(weights)
        size = self.chunk
        change = self._next_change()
        if change is not None:
            size = min(size, change - self.consumed)  # a chunk never spans a weight change
        state = self.sampler.state_dict()
        self.checkpoints.append((self.consumed, state))
        self.buffer_state, self.buffer_start = state, self.consumed
        self.buffer, _ = self.sampler.next_batch(size)
        self.position = 0

    def take(self, n: int) -> torch.Tensor:
        """The next n rows, (n, seq_len)."""
        parts = []
        while n > 0:
            if self.position >= len(self.buffer):
                self.refill()
            part = self.buffer[self.position : self.position + n]
            self.position += len(part)
            self.consumed += len(part)
            n -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self, consumed: int | None = None) -> dict:
        at = self.consumed if consumed is None else int(consumed)
        if at > self.consumed:
            raise OpmixError(f"asked for the dataset state after {at} sequences, but only {self.consumed} were "
                             "drawn", "ask for a number of sequences this process has drawn")
        if at == self.consumed and self.position >= len(self.buffer):
            base = (self.consumed, self.sampler.state_dict())  # nothing drawn ahead: the sampler is at `at`
        else:
            known = [c for c in self.checkpoints if c[0] <= at]
            if not known:
                raise OpmixError(f"the dataset no longer remembers its state after {at} sequences (it keeps the "
                                 f"last {_CHECKPOINTS} chunks)", "save the state closer to where training is")
            base = known[-1]
        return {
            "consumed": at,
            "base_consumed": base[0],
            "base": copy.deepcopy(base[1]),
            "schedule": [[count, dict(w)] for count, w in self.schedule if count > base[0]],
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(state["base"])
        self.consumed = int(state["base_consumed"])
        self.schedule = [(int(count), dict(w)) for count, w in state["schedule"]]
        self.buffer = self.buffer[:0]
        self.position = 0
        self.checkpoints.clear()
        self.take(int(state["consumed"]) - self.consumed)  # replay up to where the state was taken


class MixtureDataset(torch.utils.data.IterableDataset):
    """Sequences from ``domains`` (name -> (n, seq_len) token array or ``TokenizedDomain``) mixed by ``weights``
    (default uniform); see the module docstring. ``rank``/``world_size`` default to torch.distributed's when it
    is initialised. ``batch_size``: yield (batch_size, seq_len) batches instead of single sequences."""

    def __init__(
        self,
        domains: Mapping,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
        chunk_size: int = 256,
    ):
        super().__init__()
        if not domains:
            raise OpmixError("MixtureDataset got no domains", "pass {name: (n, seq_len) token array}")
        self.arrays = {name: getattr(d, "train", d) for name, d in domains.items()}
        evals = {name: getattr(d, "eval", None) for name, d in domains.items()}
        self.eval_sets = evals if all(e is not None for e in evals.values()) else None
        MixtureSampler(self.arrays, {n: 1.0 for n in self.arrays}, 1, seed)  # checks the arrays' shapes
        self.names = sorted(self.arrays)
        self.seed = int(seed)
        self.seq_len = next(iter(self.arrays.values())).shape[1]
        if (rank is None) != (world_size is None):
            raise OpmixError("give both rank and world_size, or neither", "pass rank=..., world_size=...")
        if world_size is not None and not 0 <= rank < world_size:
            raise OpmixError(f"rank {rank} is not in [0, world_size={world_size})", "pass a rank below world_size")
        self.rank, self.world_size = rank, world_size
        if batch_size is not None and batch_size < 1:
            raise OpmixError(f"batch_size must be >= 1, got {batch_size}", "give a positive batch size or None")
        if chunk_size < 1:
            raise OpmixError(f"chunk_size must be >= 1, got {chunk_size}", "give a positive chunk size")
        self.batch_size, self.chunk_size = batch_size, int(chunk_size)
        self._control = torch.zeros(_WEIGHTS + len(self.names), dtype=torch.float64).share_memory_()
        self._shard: _Shard | None = None
        self._shard_key: tuple[int, int] | None = None
        self._pending: dict | None = None  # a loaded shard state, applied when the shard is made
        self.set_weights(weights if weights is not None else {n: 1.0 for n in self.names})

    # -- weights -------------------------------------------------------------------------------------------
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New mixture weights (normalised; domains left out get 0), from the next sequence yielded."""
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise OpmixError(f"mixture weights name unknown domain(s) {unknown}; the dataset's domains: {self.names}",
                             "use the domain names the dataset was built with")
        values = np.array([weights.get(n, 0.0) for n in self.names], dtype=float)
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise OpmixError(f"mixture weights {dict(weights)} are not a mixture", "give weights >= 0 with a positive sum")
        values = values / values.sum()
        self._control[_WEIGHTS:] = torch.from_numpy(values)
        self._control[_VERSION] += 1

    @property
    def weights(self) -> dict[str, float]:
        """The weights last set (those the next sequences are drawn with)."""
        return {n: float(w) for n, w in zip(self.names, self._control[_WEIGHTS:].tolist())}

    # -- shards ---------------------------------------------------------------------------------------------
    def shard_info(self) -> tuple[int, int]:
        """(this shard, number of shards) for the calling process and DataLoader worker."""
        rank, world = (self.rank, self.world_size) if self.world_size is not None else _distributed()
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    def _current_shard(self) -> _Shard:
        key = self.shard_info()
        if self._shard is None or self._shard_key != key:
            shard, n_shards = key
            arrays = {}
            for name, arr in self.arrays.items():
                arrays[name] = arr[shard::n_shards]
                if len(arrays[name]) == 0:
                    raise OpmixError(f"domain {name!r} has {len(arr)} sequences, fewer than the {n_shards} shards "
                                     "(data-parallel ranks x DataLoader workers)", "use fewer workers, or add data")
            self._shard = _Shard(arrays, self.weights, _shard_seed(self.seed, shard, n_shards), self.chunk_size)
            self._shard.version = float(self._control[_VERSION])
            self._shard_key = key
            if self._pending is not None:
                if tuple(self._pending["shard"]) != key:
                    raise OpmixError(f"the loaded dataset state is for shard {tuple(self._pending['shard'])} (shard, "
                                     f"shards), this process is {key}", "resume with the same ranks and workers")
                self._shard.load_state_dict(self._pending)
                self._pending = None
        if torch.utils.data.get_worker_info() is not None:
            self._control[_IN_WORKERS] = 1.0  # shared: the main process learns its state_dict cannot be exact
        return self._shard

    def _poll(self, shard: _Shard) -> None:
        version = float(self._control[_VERSION])
        if version != shard.version:
            shard.version = version
            shard.set_weights(self.weights)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._current_shard()
        control = self._control.numpy()  # a view: reading it costs no tensor op per sequence
        if self.batch_size is not None:
            while True:
                if control[_VERSION] != shard.version:
                    self._poll(shard)
                batch = shard.take(self.batch_size)
                yield {"input_ids": batch, "labels": batch}
        rows: tuple[torch.Tensor, ...] = ()
        buffer = None
        while True:
            if control[_VERSION] != shard.version:
                self._poll(shard)
            if shard.position >= len(shard.buffer):
                shard.refill()
            if shard.buffer is not buffer:  # one unbind per chunk: cheaper than indexing the tensor per row
                buffer, rows = shard.buffer, shard.buffer.unbind(0)
            row = rows[shard.position]
            shard.position += 1
            shard.consumed += 1
            yield {"input_ids": row, "labels": row}

    @staticmethod
    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stack sequences into a batch whose ``labels`` is its ``input_ids`` (one copy, not two): a faster
        ``collate_fn`` / ``data_collator`` for this dataset's items (causal LMs shift the labels themselves)."""
        batch = torch.stack([item["input_ids"] for item in items])
        return {"input_ids": batch, "labels": batch}

    def take(self, n: int) -> torch.Tensor:
        """The next n sequences (n, seq_len) of this process's shard, as iteration would yield them."""
        shard = self._current_shard()
        self._poll(shard)
        return shard.take(n)

    @property
    def consumed(self) -> int:
        """Sequences this process's shard has yielded."""
        return 0 if self._shard is None else self._shard.consumed

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self, consumed: int | None = None) -> dict:
        """JSON-safe state of this process's shard, as of ``consumed`` sequences yielded (default: all so far)."""
        if float(self._control[_IN_WORKERS]):
            raise OpmixError("the dataset was iterated by DataLoader worker processes, whose positions this process "
                             "cannot see, so its state would not resume the same sequence",
                             "use num_workers=0 to save and resume the dataset exactly")
        state = {"version": STATE_VERSION, "seed": self.seed, "names": list(self.names), "weights": self.weights}
        if self._pending is not None:
            return {**state, **self._pending}
        shard = self._current_shard()
        self._poll(shard)
        return {**state, "shard": list(self._shard_key), **shard.state_dict(consumed)}

    def load_state_dict(self, state: Mapping) -> None:
        if list(state.get("names", [])) != self.names or int(state.get("seed", -1)) != self.seed:
            raise OpmixError(f"dataset state is for domains {state.get('names')} with seed {state.get('seed')}, not "
                             f"{self.names} with seed {self.seed}", "resume with the same domains and seed")
        pending = {k: copy.deepcopy(state[k]) for k in ("shard", "consumed", "base_consumed", "base", "schedule")}
        self._shard, self._shard_key, self._pending = None, None, pending
        self.set_weights(state["weights"])
        self._current_shard()  # applies it now when this process's shard is the saved one (else at iteration)
