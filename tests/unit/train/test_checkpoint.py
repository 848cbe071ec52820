"""Trainer checkpoints: verified before a resume, and the trainer's randomness is its own."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from opmix.data.sampler import MixtureSampler
from opmix.model import builtin_model
from opmix.train.checkpoint import OPTIMIZER, STATE, checkpoint_problem, resumable
from opmix.train.loop import Trainer, make_accelerator
from opmix.train.schedule import WSDSchedule


def _trainer(seed=0, dropout=0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = np.random.default_rng(0)
    domains = {"a": rng.integers(0, 64, size=(32, 16)), "b": rng.integers(0, 64, size=(32, 16))}
    if dropout:  # attention dropout draws from torch's global generator, as a LoRA probe's dropout does
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                             attention_dropout=dropout, attn_implementation="eager")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    else:
        model = builtin_model("llama-tiny", vocab_size=64, seed=0, max_positions=16)
    sampler = MixtureSampler(domains, {"a": 0.5, "b": 0.5}, 4, seed=0)
    return Trainer(model, sampler, WSDSchedule(6, 1, 2, 0.1), 1e-2, make_accelerator(), stage="t", seed=seed)


def _weights(trainer):
    return [p.detach().clone() for p in trainer.unwrapped_model().parameters()]


def test_saved_checkpoint_verifies_and_damage_is_detected(tmp_path, caplog):
    trainer = _trainer()
    trainer.train_until(2)
    trainer.save(tmp_path / "ckpt")
    assert checkpoint_problem(tmp_path / "ckpt") is None and resumable(tmp_path / "ckpt")

    data = bytearray((tmp_path / "ckpt" / OPTIMIZER).read_bytes())
    data[-1] ^= 1
    (tmp_path / "ckpt" / OPTIMIZER).write_bytes(bytes(data))
    assert "does not match" in checkpoint_problem(tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING):
        assert not resumable(tmp_path / "ckpt")
    assert "restarts from its beginning" in caplog.text

    (tmp_path / "ckpt" / OPTIMIZER).unlink()
    assert "missing" in checkpoint_problem(tmp_path / "ckpt")
    (tmp_path / "ckpt" / STATE).write_text("{not json")
    assert "unreadable" in checkpoint_problem(tmp_path / "ckpt")
    assert not resumable(tmp_path / "nothing-here")


def test_randomness_does_not_depend_on_what_ran_before(tmp_path):
    torch.manual_seed(1)
    a = _trainer(dropout=0.5)
    a.train_until(6)
    torch.manual_seed(2)
    torch.rand(100)  # other work drew from the global generator first
    b = _trainer(dropout=0.5)
    b.train_until(6)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    c = _trainer(seed=1, dropout=0.5)
    c.train_until(6)
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c)))  # the seed does matter


def test_resume_with_dropout_is_bit_identical(tmp_path):
    straight = _trainer(dropout=0.5)
    straight.train_until(6)
    first = _trainer(dropout=0.5)
    first.train_until(3)
    first.save(tmp_path / "ckpt")
    torch.rand(7)  # a fresh process would be elsewhere in the global stream
    resumed = _trainer(dropout=0.5)
    resumed.load(tmp_path / "ckpt")
    resumed.train_until(6)
    assert all(torch.equal(x, y) for x, y in zip(_weights(straight), _weights(resumed)))


def test_global_generator_is_left_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _trainer(dropout=0.5).train_until(2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("spec, hits, killed_at", [("x:2", 3, 2), ("step:final:3", 3, 3), ("y:1", 3, None)])
def test_fault_point_counts_hits_per_point(monkeypatch, spec, hits, killed_at):
    from opmix.run import faults

    kills = []
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append(faults._hits.copy()))
    monkeypatch.setenv(faults.ENV, spec)
    name = spec.rpartition(":")[0] if killed_at else "x"
    for _ in range(hits):
        faults.fault_point(name)
    assert len(kills) == (1 if killed_at else 0)
    monkeypatch.delenv(faults.ENV)
    faults.fault_point(name)  # unset: a no-op
