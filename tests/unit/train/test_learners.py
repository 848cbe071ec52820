"""Learners: SFT trains on response tokens only, LanguageModeling is the loop's original objective, and the
factory and ledger know them."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from opmix.data.sampler import MixtureSampler
from opmix.errors import OpmixError
from opmix.instruct.examples import PAD_ID, ROLE, ROLE_RESPONSE, STUDENT
from opmix.model import builtin_model
from opmix.run.ledger import generation_flops, teacher_flops
from opmix.train.learners import SFT, LanguageModeling, make_learner, sft_inputs
from opmix.train.loop import Trainer, make_accelerator
from opmix.train.schedule import WSDSchedule
from opmix.train.sdft import SDFT

VOCAB, EOS, SEQ_LEN = 257, 256, 24  # the byte tokenizer's; the rows of conftest.instruction_rows


def test_sft_labels_only_the_response(make_rows):
    batch = torch.from_numpy(make_rows(4))  # (B, 3, T)
    input_ids, mask, labels = sft_inputs(batch, pad_id=7)
    student, roles = batch[:, STUDENT], batch[:, ROLE]
    response = roles == ROLE_RESPONSE
    assert torch.equal(labels == -100, ~response)  # -100 exactly on prompt and padding
    assert torch.equal(labels[response], student[response])
    assert torch.equal(mask.bool(), student != PAD_ID)
    assert torch.equal(input_ids[student == PAD_ID], torch.full_like(input_ids[student == PAD_ID], 7))
    assert (labels == EOS).sum() == 4  # every response ends with its EOS, which is trained


def test_sft_loss_is_the_response_cross_entropy(make_rows):
    model = builtin_model("llama-tiny", vocab_size=VOCAB, seed=0, max_positions=SEQ_LEN)
    batch = torch.from_numpy(make_rows(3))
    loss, tokens = SFT().loss(model, batch)
    assert tokens == int((batch[:, STUDENT] != PAD_ID).sum())

    input_ids, mask, _ = sft_inputs(batch, pad_id=0)
    log_probs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.double(), dim=-1)
    terms = []
    for i in range(len(batch)):
        for t in range(1, SEQ_LEN):
            if batch[i, ROLE, t] == ROLE_RESPONSE:  # token t is predicted at position t - 1
                terms.append(-log_probs[i, t - 1, batch[i, STUDENT, t]])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_sft_rejects_token_batches():
    with pytest.raises(OpmixError, match=r"\(B, 3, T\)"):
        SFT().loss(None, torch.zeros(2, 8, dtype=torch.long))


def test_sft_trainer_learns_and_counts_non_pad_tokens(instruct_tasks):
    model = builtin_model("llama-tiny", vocab_size=VOCAB, seed=0, max_positions=SEQ_LEN)
    sampler = MixtureSampler(instruct_tasks, {"sums": 0.5, "more": 0.5}, 8, seed=0)
    trainer = Trainer(model, sampler, WSDSchedule(12, 0, 2, 0.1), 1e-2, make_accelerator(), learner=SFT())
    counted = []
    original = sampler.next_batch

    def counting_batch(size=None):
        batch, counts = original(size)
        counted.append(int((batch[:, STUDENT] != PAD_ID).sum()))
        return batch, counts

    sampler.next_batch = counting_batch
    losses = []
    trainer.train_until(12, on_step=lambda t: losses.append(t.last_loss))
    assert trainer.tokens_trained == sum(counted)
    assert all(math.isfinite(x) for x in losses) and np.mean(losses[-3:]) < np.mean(losses[:3])


class _OriginalLoop(Trainer):
    """The loop's update as it was before learners existed, to pin the default to it bit for bit."""

    def _update(self) -> float:
        lr = self.peak_lr * self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(self.grad_accum):
            input_ids, _ = self.sampler.next_batch()
            last = micro == self.grad_accum - 1
            with nullcontext() if last else self.accelerator.no_sync(self.model):
                loss = self.model(input_ids=input_ids, labels=input_ids).loss
                self.accelerator.backward(loss / self.grad_accum)
            total += loss.detach().float().item() / self.grad_accum
            self.tokens_trained += input_ids.numel()
        self.accelerator.clip_grad_norm_(self._params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total


def test_language_modeling_default_is_the_original_loop():
    rng = np.random.default_rng(0)
    domains = {"a": rng.integers(0, 64, size=(32, 16)), "b": rng.integers(0, 64, size=(32, 16))}

    def run(cls, **kwargs):
        model = builtin_model("llama-tiny", vocab_size=64, seed=0, max_positions=16)
        sampler = MixtureSampler(domains, {"a": 0.5, "b": 0.5}, 4, seed=0)
        trainer = cls(model, sampler, WSDSchedule(6, 1, 2, 0.1), 1e-2, make_accelerator(), grad_accum=2, **kwargs)
        trainer.train_until(6)
        return trainer, [p.detach() for p in trainer.unwrapped_model().parameters()]

    original, reference = run(_OriginalLoop)
    default, weights = run(Trainer)
    explicit, explicit_weights = run(Trainer, learner=LanguageModeling())
    assert isinstance(default.learner, LanguageModeling)
    assert all(torch.equal(a, b) for a, b in zip(reference, weights))
    assert all(torch.equal(a, b) for a, b in zip(reference, explicit_weights))
    assert default.tokens_trained == original.tokens_trained == 6 * 4 * 2 * 16


def test_make_learner_builds_each_kind_and_names_bad_input():
    assert isinstance(make_learner("lm"), LanguageModeling)
    assert make_learner("sft", pad_id=3).pad_id == 3
    sdft = make_learner("sdft", max_new_tokens=5, ema_rate=0.05)
    assert isinstance(sdft, SDFT) and sdft.max_new_tokens == 5 and sdft.skip_tokens == 3
    with pytest.raises(OpmixError, match="unknown learner 'dpo'"):
        make_learner("dpo")
    with pytest.raises(OpmixError, match="learner 'sft'"):
        make_learner("sft", temperature=0.5)
    with pytest.raises(OpmixError, match="out of range"):
        make_learner("sdft", ema_rate=0.0)


def test_teacher_flops_are_a_forward_per_token():
    assert teacher_flops(1_000, 10) == 2.0 * 1_000 * 10 == generation_flops(1_000, 10)
