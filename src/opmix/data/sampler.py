"""Draw training batches from several domains by mixture weights, reproducibly and resumably.

Each batch row picks its domain by a seeded categorical draw from the weights. Within a domain, sequences come
without replacement in a per-epoch permutation that is a pure function of (seed, domain, epoch), so the whole state
is the domain-choice RNG's state plus, per domain, a position counter; a domain that runs out starts its next
epoch with a fresh permutation. ``set_weights`` changes the mixture mid-run; the counters carry on.

With several data-parallel processes (``rank`` of ``world_size``), every process draws the same *global* batch
(``batch_size`` x ``world_size`` rows) and keeps its own contiguous slice of it, so the ranks' shards are disjoint
and together make the global batch, and the sequence of global batches depends on the seed and the global batch
size only, not on how many processes share it. The state is the same on every process; a run resumed with another
number of processes continues the same stream of rows (re-sharded: each global batch is then cut in as many
slices as there are processes now).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import torch

from opmix.errors import OpmixError

log = logging.getLogger(__name__)


def _domain_seed(name: str) -> int:
    # A stable integer per name (Python's hash() is salted per process, so it cannot be used).
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


class MixtureSampler:
    """Batches of shape (batch_size, seq_len) drawn from ``domains`` by ``weights``; see the module docstring."""

    def __init__(self, domains: Mapping[str, np.ndarray], weights: Mapping[str, float], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if not domains:
            raise OpmixError("the sampler got no domains", "give at least one domain's train sequences")
        if batch_size < 1:
            raise OpmixError(f"batch_size must be >= 1, got {batch_size}", "give a positive batch size")
        if not 0 <= rank < world_size:
            raise OpmixError(f"rank {rank} is not one of {world_size} process(es)", "give 0 <= rank < world_size")
        row_shapes = {name: tuple(arr.shape[1:]) for name, arr in domains.items() if arr.ndim >= 2}
        if len(row_shapes) != len(domains) or len(set(row_shapes.values())) != 1:
            raise OpmixError(
                f"domain arrays must all be (n_seqs, seq_len) (or (n, ..., seq_len) rows, as instruction examples) "
                f"with one row shape; got { {n: tuple(a.shape) for n, a in domains.items()} }",
                "tokenize every domain with the same seq_len",
            )
        for name, arr in domains.items():
            if len(arr) == 0:
                raise OpmixError(f"domain {name!r} has no sequences", "add data or use a smaller seq_len")
        self.domains = dict(domains)
        self.names = sorted(self.domains)  # fixed order: the categorical draw indexes into it
        self.batch_size = int(batch_size)  # this process's rows per batch
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.row_shape = next(iter(row_shapes.values()))
        self.seq_len = self.row_shape[-1]  # tokens per row: a (3, T) instruction example counts T
        self._rng = np.random.default_rng([self.seed, 0])
        self._position = {name: 0 for name in self.names}  # sequences taken so far, over all epochs
        self.tokens_consumed = {name: 0 for name in self.names}
        self._perm_cache: dict[str, tuple[int, np.ndarray]] = {}
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        unknown = sorted(set(weights) - set(self.domains))
        if unknown:
            raise OpmixError(
                f"mixture weights name unknown domain(s) {unknown}; known domains: {self.names}",
                "use the domain names the data was prepared under",
            )
        values = np.array([float(weights.get(name, 0.0)) for name in self.names])
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise OpmixError(f"mixture weights {dict(weights)} are not a valid mixture", "give weights >= 0, sum > 0")
        self._probs = values / values.sum()
        self.weights = {name: float(p) for name, p in zip(self.names, self._probs)}

    def _permutation(self, name: str, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(name)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, _domain_seed(name), epoch])
            cached = (epoch, rng.permutation(len(self.domains[name])))
            self._perm_cache[name] = cached
        return cached[1]

    def _take(self, name: str, count: int) -> np.ndarray:
        n = len(self.domains[name])
        start = self._position[name]
        self._position[name] += count
        epochs, offsets = np.divmod(np.arange(start, start + count), n)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):  # usually one epoch; two when this draw wraps the domain
            mask = epochs == epoch
            out[mask] = self._permutation(name, int(epoch))[offsets[mask]]
        return out

    def next_batch(self, size: int | None = None) -> tuple[torch.Tensor, dict[str, int]]:
        """This process's (batch_size, *row_shape) LongTensor (``size`` rows when given; row_shape is (seq_len,)
        for token sequences) and how many of its rows each domain supplied. The draws are sequential: two global
        batches of sizes a and b give the same rows as one of a + b. ``tokens_consumed`` counts the global batch."""
        size = self.batch_size if size is None else int(size)
        global_size = size * self.world_size
        choice = self._rng.choice(len(self.names), size=global_size, p=self._probs)
        indices = np.empty(global_size, dtype=np.int64)
        for k, name in enumerate(self.names):
            where = np.flatnonzero(choice == k)
            if len(where):
                indices[where] = self._take(name, len(where))
                self.tokens_consumed[name] += len(where) * self.seq_len
        mine = slice(self.rank * size, (self.rank + 1) * size)
        choice, indices = choice[mine], indices[mine]
        rows = np.empty((size, *self.row_shape), dtype=np.int64)
        counts: dict[str, int] = {}
        for k, name in enumerate(self.names):
            where = np.flatnonzero(choice == k)
            if len(where):
                rows[where] = self.domains[name][indices[where]]
                counts[name] = len(where)
        return torch.from_numpy(rows), counts

    def epochs(self) -> dict[str, float]:
        """Passes over each domain's train sequences so far (1.5 = one and a half epochs)."""
        return {name: self._position[name] / len(self.domains[name]) for name in self.names}

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "names": list(self.names),
            "weights": dict(self.weights),
            "position": dict(self._position),
            "tokens_consumed": dict(self.tokens_consumed),
            "rng": self._rng.bit_generator.state,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["names"]) != self.names or int(state["seed"]) != self.seed:
            raise OpmixError(
                f"sampler state is for domains {state['names']} with seed {state['seed']}, not {self.names} "
                f"with seed {self.seed}",
                "resume with the same domains and seed the run started with",
            )
        self.set_weights(state["weights"])
        self._position = {name: int(state["position"][name]) for name in self.names}
        self.tokens_consumed = {name: int(state["tokens_consumed"][name]) for name in self.names}
        self._rng.bit_generator.state = state["rng"]
        saved = int(state.get("world_size", 1))
        if saved != self.world_size:
            log.warning("resumed with %d process(es), the checkpoint was written by %d: the data continues from the "
                        "same position, each step now drawing %d x %d rows", self.world_size, saved,
                        self.batch_size, self.world_size)
