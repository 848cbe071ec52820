"""The training loop: it learns, accumulates gradients exactly, and resumes bit-identically from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opmix.data.sampler import MixtureSampler
from opmix.errors import OpmixError
from opmix.model import builtin_model
from opmix.train.loop import Trainer, make_accelerator
from opmix.train.schedule import WSDSchedule


@pytest.fixture
def domains():
    rng = np.random.default_rng(0)
    # a learnable pattern: every sequence counts up from a random start
    starts = rng.integers(0, 40, size=(64, 1))
    return {"a": (starts + np.arange(16)) % 64, "b": rng.integers(0, 64, size=(64, 16))}


def _trainer(domains, batch=8, accum=1, steps=12, lr=1e-2):
    model = builtin_model("llama-tiny", vocab_size=64, seed=0, max_positions=16)
    sampler = MixtureSampler(domains, {"a": 0.7, "b": 0.3}, batch // accum, seed=0)
    schedule = WSDSchedule(steps, 2, 4, 0.1)
    return Trainer(model, sampler, schedule, lr, make_accelerator(), grad_accum=accum, stage="test")


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.unwrapped_model().named_parameters()}


def test_loss_falls_on_learnable_data(domains):
    trainer = _trainer(domains, steps=40)
    losses = []
    trainer.train_until(40, on_step=lambda t: losses.append(t.last_loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_resume_from_checkpoint_equals_uninterrupted(domains, tmp_path):
    straight = _trainer(domains)
    straight.train_until(12)

    first = _trainer(domains)
    first.train_until(5)
    first.save(tmp_path / "ckpt")
    torch.manual_seed(1234)  # a fresh process has other RNG state: the checkpoint must restore it
    resumed = _trainer(domains)
    resumed.load(tmp_path / "ckpt")
    assert resumed.step == 5 and resumed.tokens_trained == first.tokens_trained
    resumed.train_until(12)

    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.sampler.tokens_consumed == straight.sampler.tokens_consumed


def test_gradient_accumulation_matches_one_big_batch(domains):
    big = _trainer(domains, batch=8, accum=1)
    split = _trainer(domains, batch=8, accum=2)
    # the same 8 sequences either way: feed both from one fixed batch
    batch = torch.as_tensor(domains["a"][:8])
    big.sampler.next_batch = lambda: (batch, {})
    halves = iter([batch[:4], batch[4:]] * 3)
    split.sampler.next_batch = lambda: (next(halves), {})
    big.train_until(3)
    split.train_until(3)
    a, b = _weights(big), _weights(split)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


def test_nan_loss_aborts_with_a_hint(domains):
    trainer = _trainer(domains, lr=1e-2)
    with torch.no_grad():
        trainer.unwrapped_model().get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(OpmixError, match="loss became nan.*lower train.lr"):
        trainer.train_until(2)


def test_a_checkpoint_of_per_process_streams_is_refused(domains, tmp_path):
    import json

    trainer = _trainer(domains)
    trainer.train_until(2)
    trainer.save(tmp_path / "ckpt")
    state_file = tmp_path / "ckpt" / "state.json"
    state = json.loads(state_file.read_text())
    state["loop"]["rank_samplers"] = [state["loop"]["sampler"]] * 2  # as an older version wrote with 2 processes
    state_file.write_text(json.dumps(state))
    with pytest.raises(OpmixError, match=r"processes drew their own batches.*fix: finish the run with the opmix "
                                         r"version that started it"):
        _trainer(domains).load(tmp_path / "ckpt")
    _trainer(domains).load(tmp_path / "ckpt", weights_only=True)  # a new branch from the weights is fine


def test_a_checkpoint_records_the_number_of_processes_and_one_sampler_state(domains, tmp_path):
    import json

    trainer = _trainer(domains)
    trainer.train_until(2)
    trainer.save(tmp_path / "ckpt")
    loop = json.loads((tmp_path / "ckpt" / "state.json").read_text())["loop"]
    assert loop["world_size"] == 1 and "rank_samplers" not in loop and loop["sampler"]["world_size"] == 1
