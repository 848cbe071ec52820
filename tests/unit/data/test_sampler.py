import json

import numpy as np
import pytest

from opmix.data.sampler import MixtureSampler
from opmix.errors import OpmixError


def make_domains(sizes, seq_len=4):
    # Every sequence is filled with a unique id: domain index * 1000 + row, so a row identifies its origin.
    return {
        name: np.repeat((k * 1000 + np.arange(n))[:, None], seq_len, axis=1)
        for k, (name, n) in enumerate(sizes.items())
    }


def test_frequencies_match_weights():
    domains = make_domains({"a": 50, "b": 50, "c": 50})
    sampler = MixtureSampler(domains, {"a": 0.5, "b": 0.3, "c": 0.2}, batch_size=100, seed=0)
    totals = {"a": 0, "b": 0, "c": 0}
    for _ in range(40):
        batch, counts = sampler.next_batch()
        assert tuple(batch.shape) == (100, 4) and sum(counts.values()) == 100
        for name, n in counts.items():
            totals[name] += n
    assert abs(totals["a"] / 4000 - 0.5) < 0.03
    assert abs(totals["b"] / 4000 - 0.3) < 0.03
    assert abs(totals["c"] / 4000 - 0.2) < 0.03


def test_rows_come_from_the_domains_the_counts_report():
    domains = make_domains({"a": 10, "b": 10})
    sampler = MixtureSampler(domains, {"a": 0.5, "b": 0.5}, batch_size=16, seed=1)
    batch, counts = sampler.next_batch()
    assert int((batch[:, 0] < 1000).sum()) == counts.get("a", 0)
    assert int((batch[:, 0] >= 1000).sum()) == counts.get("b", 0)


def test_same_seed_same_batches_other_seed_different():
    domains = make_domains({"a": 30, "b": 30})
    weights = {"a": 0.6, "b": 0.4}
    one, two, other = (MixtureSampler(domains, weights, 8, seed) for seed in (3, 3, 4))
    runs = [[s.next_batch()[0].tolist() for _ in range(5)] for s in (one, two, other)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_zero_weight_never_drawn_and_missing_means_zero():
    domains = make_domains({"a": 10, "b": 10, "c": 10})
    sampler = MixtureSampler(domains, {"a": 1.0, "b": 0.0}, batch_size=64, seed=0)
    for _ in range(20):
        _, counts = sampler.next_batch()
        assert set(counts) == {"a"}
    assert sampler.tokens_consumed["b"] == 0 and sampler.epochs()["c"] == 0.0


def test_state_dict_round_trip_continues_identically():
    domains = make_domains({"a": 7, "b": 5})
    weights = {"a": 0.5, "b": 0.5}
    reference = MixtureSampler(domains, weights, 6, seed=11)
    for _ in range(3):
        reference.next_batch()
    state = json.loads(json.dumps(reference.state_dict()))  # must survive JSON
    expected = [reference.next_batch()[0].tolist() for _ in range(6)]
    resumed = MixtureSampler(domains, weights, 6, seed=11)
    resumed.load_state_dict(state)
    assert [resumed.next_batch()[0].tolist() for _ in range(6)] == expected
    assert resumed.tokens_consumed == reference.tokens_consumed


def test_set_weights_mid_run_and_accounting():
    domains = make_domains({"a": 20, "b": 40}, seq_len=3)
    sampler = MixtureSampler(domains, {"a": 1.0}, batch_size=10, seed=0)
    sampler.next_batch()
    sampler.set_weights({"b": 1.0})
    sampler.next_batch()
    sampler.next_batch()
    assert sampler.tokens_consumed == {"a": 30, "b": 60}
    assert sampler.epochs() == {"a": 0.5, "b": 0.5}


def test_unknown_domain_is_named():
    domains = make_domains({"a": 5})
    with pytest.raises(OpmixError, match=r"\['zz'\].*known domains: \['a'\]"):
        MixtureSampler(domains, {"a": 0.5, "zz": 0.5}, 4, 0)


def test_epochs_without_repeats_and_reshuffled_on_wrap():
    domains = make_domains({"a": 12})
    sampler = MixtureSampler(domains, {"a": 1.0}, batch_size=4, seed=5)
    rows = [int(r) for _ in range(9) for r in sampler.next_batch()[0][:, 0]]
    epochs = [rows[0:12], rows[12:24], rows[24:36]]
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))  # each sequence exactly once per epoch
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert sampler.epochs() == {"a": 3.0}


def test_batch_straddling_an_epoch_boundary():
    domains = make_domains({"a": 5})
    sampler = MixtureSampler(domains, {"a": 1.0}, batch_size=3, seed=2)
    rows = [int(r) for _ in range(10) for r in sampler.next_batch()[0][:, 0]]
    for start in range(0, 30, 5):
        assert sorted(rows[start : start + 5]) == list(range(5))


def _rows(batch):
    return [int(v) for v in batch[:, 0]]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_shards_are_disjoint_and_make_the_global_batch(world):
    domains = make_domains({"a": 40, "b": 25, "c": 9})
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    single = MixtureSampler(domains, weights, batch_size=6 * world, seed=3)
    ranks = [MixtureSampler(domains, weights, batch_size=6, seed=3, rank=r, world_size=world) for r in range(world)]
    for _ in range(12):  # several epochs of the small domain
        whole = _rows(single.next_batch()[0])
        shards = [_rows(s.next_batch()[0]) for s in ranks]
        # disjoint and complete: the shards are the global batch's positions cut in rank order, each once
        assert all(len(shard) == 6 for shard in shards) and sum(shards, []) == whole
    assert all(s.tokens_consumed == single.tokens_consumed for s in ranks)  # every process counts the global batch
    assert all(s.epochs() == single.epochs() for s in ranks)


def test_a_resume_with_another_number_of_processes_continues_the_same_rows():
    domains = make_domains({"a": 30, "b": 30})
    weights = {"a": 0.6, "b": 0.4}
    reference = MixtureSampler(domains, weights, batch_size=8, seed=5)
    expected = [_rows(reference.next_batch()[0]) for _ in range(6)]
    two = [MixtureSampler(domains, weights, batch_size=4, seed=5, rank=r, world_size=2) for r in range(2)]
    got = [sum((_rows(s.next_batch()[0]) for s in two), []) for _ in range(3)]
    state = json.loads(json.dumps(two[0].state_dict()))  # through JSON, as a checkpoint holds it
    one = MixtureSampler(domains, weights, batch_size=8, seed=5)  # resumed on one process with the same global batch
    one.load_state_dict(state)
    got += [_rows(one.next_batch()[0]) for _ in range(3)]
    assert got == expected


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(OpmixError, match="rank 2 is not one of 2 process"):
        MixtureSampler(make_domains({"a": 4}), {"a": 1.0}, batch_size=2, seed=0, rank=2, world_size=2)
