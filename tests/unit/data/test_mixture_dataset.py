"""MixtureDataset: MixtureSampler's draws as an IterableDataset; live weights, shards, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from opmix.data.mixture_dataset import MixtureDataset
from opmix.data.sampler import MixtureSampler
from opmix.errors import OpmixError

SEQ = 4


def domains(sizes=(60, 40, 30)) -> dict[str, np.ndarray]:
    """Domain k's row i is [k, i, i, i]: every row says where it came from."""
    out = {}
    for k, n in enumerate(sizes):
        rows = np.repeat(np.arange(n)[:, None], SEQ, axis=1)
        rows[:, 0] = k
        out["abc"[k]] = rows
    return out


def ids(batch: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(r[0]), int(r[1])) for r in batch.reshape(-1, SEQ)]


def first(dataset, n: int) -> torch.Tensor:
    iterator = iter(dataset)
    return torch.stack([next(iterator)["input_ids"] for _ in range(n)])


def test_one_shard_yields_exactly_the_samplers_rows_whatever_the_chunk():
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    sampler = MixtureSampler(domains(), weights, batch_size=7, seed=3)
    expected = torch.cat([sampler.next_batch()[0] for _ in range(30)])  # 210 rows, several epochs of b and c
    for chunk in (1, 16, 256):
        got = first(MixtureDataset(domains(), weights, seed=3, chunk_size=chunk), len(expected))
        assert torch.equal(got, expected)


def test_items_are_what_the_hf_trainer_takes():
    item = next(iter(MixtureDataset(domains(), seed=0)))
    assert set(item) == {"input_ids", "labels"}
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (SEQ,)
    assert torch.equal(item["labels"], item["input_ids"])
    batch = next(iter(DataLoader(MixtureDataset(domains(), seed=0), batch_size=5)))
    assert batch["input_ids"].shape == (5, SEQ)
    batched = next(iter(DataLoader(MixtureDataset(domains(), seed=0, batch_size=5), batch_size=None)))
    assert torch.equal(batched["input_ids"], batch["input_ids"])


def test_weights_take_effect_and_can_change_live():
    dataset = MixtureDataset(domains(), {"a": 0.7, "b": 0.3}, seed=1)
    iterator = iter(dataset)
    rows = [next(iterator)["input_ids"] for _ in range(2000)]
    share = np.bincount([int(r[0]) for r in rows], minlength=3) / len(rows)
    assert share == pytest.approx([0.7, 0.3, 0.0], abs=0.04)
    dataset.set_weights({"c": 1.0})  # from the very next sequence
    after = [int(next(iterator)["input_ids"][0]) for _ in range(50)]
    assert after == [2] * 50
    assert dataset.weights == pytest.approx({"a": 0.0, "b": 0.0, "c": 1.0})


def test_bad_weights_raise_with_the_fix():
    dataset = MixtureDataset(domains(), seed=0)
    for bad in ({"zzz": 1.0}, {"a": -1.0}, {"a": 0.0}, {"a": float("nan")}):
        with pytest.raises(OpmixError) as caught:
            dataset.set_weights(bad)
        assert caught.value.fix
    with pytest.raises(OpmixError, match="unknown domain"):
        MixtureDataset(domains(), {"a": 1.0, "d": 1.0})


@pytest.mark.parametrize("world", [1, 2])
def test_worker_and_rank_shards_are_disjoint_and_complete(world):
    data = {"a": domains((40,))["a"]}
    workers = 2
    seen = []
    for rank in range(world):
        dataset = MixtureDataset(data, seed=5, rank=rank, world_size=world)
        loader = DataLoader(dataset, batch_size=1, num_workers=workers)
        iterator = iter(loader)  # workers alternate: each of this rank's shards gives len(shard) rows
        per_rank = 40 // world
        seen += ids(torch.cat([next(iterator)["input_ids"] for _ in range(per_rank)]))
    assert sorted(seen) == [(0, i) for i in range(40)]  # every sequence once: disjoint and complete


def test_rank_shards_without_workers_split_each_domain():
    data = domains()
    shards = [ids(MixtureDataset(data, seed=2, rank=r, world_size=3).take(300)) for r in range(3)]
    for r, rows in enumerate(shards):
        assert all(i % 3 == r for _, i in rows)
    assert shards[0] != shards[1]


def test_resumed_dataset_continues_the_exact_sequence_through_weight_changes():
    data = domains()
    original = MixtureDataset(data, {"a": 0.5, "b": 0.5}, seed=4, chunk_size=16)
    it = iter(original)
    head = [next(it)["input_ids"] for _ in range(37)]
    original.set_weights({"b": 0.2, "c": 0.8})
    head += [next(it)["input_ids"] for _ in range(5)]
    state = json.loads(json.dumps(original.state_dict()))  # JSON-safe
    tail = torch.stack([next(it)["input_ids"] for _ in range(100)])

    resumed = MixtureDataset(data, seed=4, chunk_size=16)
    resumed.load_state_dict(state)
    assert resumed.weights == pytest.approx(original.weights)
    assert torch.equal(first(resumed, 100), tail)


def test_state_in_the_past_replays_the_later_weight_change():
    """The HF Trainer's loader fetches a batch ahead: the state is taken at the rows trained, and a weight change
    made after more rows were fetched must be replayed at the same place."""
    data = domains()
    original = MixtureDataset(data, seed=6, chunk_size=8)
    original.take(20)
    original.set_weights({"a": 1.0})  # applies from row 20
    original.take(3)
    state = original.state_dict(consumed=15)
    reference = MixtureDataset(data, seed=6, chunk_size=8)
    reference.take(20)
    reference.set_weights({"a": 1.0})
    rows = reference.take(40)  # rows 20..59
    resumed = MixtureDataset(data, seed=6, chunk_size=8)
    resumed.load_state_dict(state)
    again = resumed.take(45)  # rows 15..59
    assert torch.equal(again[5:], rows)
    assert all(int(r[0]) == 0 for r in again[5:])


def test_state_after_worker_iteration_cannot_be_exact():
    dataset = MixtureDataset(domains(), seed=0)
    next(iter(DataLoader(dataset, batch_size=2, num_workers=1)))
    with pytest.raises(OpmixError, match="num_workers=0"):
        dataset.state_dict()


def test_live_weights_reach_worker_processes():
    dataset = MixtureDataset(domains(), {"a": 1.0}, seed=0)
    loader = iter(DataLoader(dataset, batch_size=4, num_workers=1, prefetch_factor=1))
    assert {int(v) for v in next(loader)["input_ids"][:, 0]} == {0}
    dataset.set_weights({"b": 1.0})
    later = [int(v) for _ in range(4) for v in next(loader)["input_ids"][:, 0]]
    assert later[-4:] == [1, 1, 1, 1]  # after the prefetched batches


def test_collate_stacks_once_and_matches_the_default():
    dataset = MixtureDataset(domains(), seed=0)
    fast = next(iter(DataLoader(dataset, batch_size=6, collate_fn=MixtureDataset.collate)))
    default = next(iter(DataLoader(MixtureDataset(domains(), seed=0), batch_size=6)))
    assert torch.equal(fast["input_ids"], default["input_ids"]) and fast["labels"] is fast["input_ids"]
