"""Throughput of ``MixtureDataset`` against the sampler it is built on (``MixtureSampler.next_batch``).

    python benchmarks/bench_mixture_dataset.py [--batch 32] [--seq-len 512] [--batches 400] [--runs 7]

Both draw the same rows (one shard: the dataset's stream is the sampler's) from three memory-mapped domains of
token arrays, ``--batches`` batches of ``--batch`` sequences; each figure is the median of ``--runs`` runs. Three
ways to use the dataset are timed: through a ``DataLoader(batch_size=B)`` (per-sequence items collated: what the
Hugging Face Trainer does), the same with the dataset's ``collate`` (labels = input_ids, one stack), through ``DataLoader(batch_size=None)`` over ``MixtureDataset(batch_size=B)``, and
iterated directly with ``batch_size=B``. Printed: batches per second and the ratio to the sampler (target >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from opmix.data.mixture_dataset import MixtureDataset
from opmix.data.sampler import MixtureSampler


def make_domains(folder: Path, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, n in (("code", 6000), ("math", 3000), ("web", 9000)):
        path = folder / f"{name}.npy"
        np.save(path, rng.integers(0, 50_000, size=(n, seq_len), dtype=np.uint16))
        out[name] = np.load(path, mmap_mode="r")
    return out


def timed(make_iterator, batches: int) -> float:
    iterator = make_iterator()
    next(iterator)  # warm-up: first chunk, worker-free loader set-up
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    elapsed = time.perf_counter() - started
    assert batch is not None
    return batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    weights = {"code": 0.3, "math": 0.2, "web": 0.5}
    with tempfile.TemporaryDirectory() as tmp:
        domains = make_domains(Path(tmp), args.seq_len)

        def sampler():
            s = MixtureSampler(domains, weights, args.batch, seed=0)
            while True:
                yield s.next_batch()[0]

        def per_sequence():
            return iter(DataLoader(MixtureDataset(domains, weights, seed=0), batch_size=args.batch))

        def per_sequence_collate():
            return iter(DataLoader(MixtureDataset(domains, weights, seed=0), batch_size=args.batch,
                                   collate_fn=MixtureDataset.collate))

        def batched_loader():
            return iter(DataLoader(MixtureDataset(domains, weights, seed=0, batch_size=args.batch), batch_size=None))

        def batched_direct():
            return iter(MixtureDataset(domains, weights, seed=0, batch_size=args.batch))

        ways = {"MixtureSampler.next_batch": sampler, "MixtureDataset via DataLoader(batch_size=B)": per_sequence,
                "MixtureDataset via DataLoader(batch_size=B, collate_fn=.collate)": per_sequence_collate,
                "MixtureDataset(batch_size=B) via DataLoader(batch_size=None)": batched_loader,
                "MixtureDataset(batch_size=B), iterated": batched_direct}
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.runs):  # interleaved, so load changes on a shared machine hit every way alike
            for name, make in ways.items():
                rates[name].append(timed(make, args.batches))
    base = statistics.median(rates["MixtureSampler.next_batch"])
    print(f"{args.batches} batches of {args.batch} x {args.seq_len} tokens, median of {args.runs} runs")
    print(f"{'way':<66} {'batches/s':>10} {'ratio':>7}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<66} {median:>10.1f} {median / base:>7.3f}")


if __name__ == "__main__":
    main()
