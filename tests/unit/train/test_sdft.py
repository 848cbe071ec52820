"""SDFT: the reverse KL, the EMA teacher, training on the tiny Llama, and resuming to the same weights and teacher
(full training and a LoRA probe)."""

from __future__ import annotations

import math

import pytest
import torch

from opmix.data.sampler import MixtureSampler
from opmix.instruct.examples import PAD_ID, TEACHER
from opmix.model import builtin_model
from opmix.probes.training import probe_trainer
from opmix.train.checkpoint import LEARNER, checkpoint_problem
from opmix.train.loop import Trainer, make_accelerator
from opmix.train.schedule import WSDSchedule
from opmix.train.sdft import SDFT, _left_pad, _positions, reverse_kl

VOCAB, EOS, MAX_NEW = 257, 256, 6  # the byte tokenizer's vocabulary and EOS


def _model():
    return builtin_model("llama-tiny", vocab_size=VOCAB, seed=0, max_positions=64)


def _learner(**settings):
    return SDFT(**{"max_new_tokens": MAX_NEW, "eos_id": EOS, "generations": 2, "ema_rate": 0.1, **settings})


def test_reverse_kl_matches_a_direct_sum():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 7, generator=gen, requires_grad=True)  # (N, L, V)
    teacher = torch.randn(3, 5, 7, generator=gen)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)  # sampled, not pad
    skip = 2
    counted = valid & (torch.arange(5) >= skip)
    teacher[2, 3] = float("nan")  # padding may hold anything; it must not leak into the mean

    expected, n = 0.0, 0
    for i in range(3):
        for t in range(skip, 5):
            if not valid[i, t]:
                continue
            p = torch.softmax(student[i, t].detach().double(), -1)
            q = torch.softmax(teacher[i, t].double(), -1)
            expected += float((p * (p.log() - q.log())).sum())
            n += 1
    loss = reverse_kl(student, teacher.requires_grad_(), counted)
    assert n == 5 and loss.item() == pytest.approx(expected / n, rel=1e-6)
    loss.backward()
    assert teacher.grad is None  # the teacher is a target, never trained through
    assert student.grad[:, :skip].abs().sum() == 0 and student.grad[1, 4].abs().sum() == 0
    assert student.grad[0, skip:].abs().sum() > 0


def test_reverse_kl_with_nothing_counted_is_a_connected_zero():
    student = torch.randn(2, 3, 5, requires_grad=True)
    loss = reverse_kl(student, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and student.grad is not None


def test_ema_teacher_moves_by_its_rate_after_a_step():
    module = torch.nn.Linear(3, 2)
    module.bias.requires_grad_(False)  # frozen weights are not part of the teacher (a LoRA probe's base)
    learner = SDFT(ema_rate=0.25)
    learner._ensure_teacher(module)
    old = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    learner.after_step(module)
    assert set(learner.teacher_) == {"weight"}
    assert torch.allclose(learner.teacher_["weight"], 0.75 * old + 0.25 * module.weight.detach(), atol=1e-6)


def test_the_student_scores_what_generate_sampled(make_rows):
    """Left padding and position ids: the loss's forward reproduces generate's own logits for the samples."""
    from transformers import GenerationConfig

    model = _model().eval()
    prompts = [[49, 43, 50, 61], [52, 53, 43, 54, 55, 61]]  # two lengths, so one is left-padded
    ids, mask = _left_pad(prompts, 0, "cpu")
    config = GenerationConfig(do_sample=True, top_k=0, max_new_tokens=4, pad_token_id=0, eos_token_id=EOS)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                         return_dict_in_generate=True, output_logits=True)
    full_mask = torch.cat([mask, torch.ones_like(out.sequences[:, ids.shape[1]:])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=out.sequences, attention_mask=full_mask, position_ids=_positions(full_mask)).logits
    expected = torch.stack(out.logits, dim=1)  # (N, L, V)
    assert torch.allclose(logits[:, ids.shape[1] - 1 : -1], expected, atol=1e-4)


def _sdft_trainer(tasks, steps=6, seed=0, **settings):
    sampler = MixtureSampler(tasks, {"sums": 0.5, "more": 0.5}, 2, seed=0)
    return Trainer(_model(), sampler, WSDSchedule(steps, 1, 2, 0.1), 3e-3, make_accelerator(), stage="sdft",
                   seed=seed, learner=_learner(**settings))


def test_sdft_trains_with_finite_loss_and_counts_its_tokens(instruct_tasks):
    trainer = _sdft_trainer(instruct_tasks, steps=3)
    batches = []
    original = trainer.sampler.next_batch
    trainer.sampler.next_batch = lambda size=None: batches.append(original(size)) or batches[-1]
    before = {n: p.detach().clone() for n, p in trainer.unwrapped_model().named_parameters()}
    losses = []
    trainer.train_until(3, on_step=lambda t: losses.append(t.last_loss))

    learner = trainer.learner
    assert all(math.isfinite(x) and x >= 0 for x in losses)
    rows = 3 * 2 * 2  # steps x batch x generations
    assert rows <= learner.generated_tokens <= rows * MAX_NEW
    contexts = sum(int((b[:, TEACHER] != PAD_ID).sum()) for b, _ in batches) * 2
    assert learner.teacher_tokens == contexts + learner.generated_tokens
    assert trainer.tokens_trained > learner.generated_tokens  # prompts + samples
    after = trainer.unwrapped_model().state_dict()
    for name, old in before.items():  # the teacher lags the student: between its start and the new weights
        teacher = learner.teacher_[name]
        assert not torch.equal(after[name], old)
        assert (teacher - old).norm() < (after[name] - old).norm()


def _state(trainer):
    weights = {n: p.detach().clone() for n, p in trainer.unwrapped_model().named_parameters() if p.requires_grad}
    teacher = {n: t.clone() for n, t in trainer.learner.teacher_.items()}
    return weights, teacher, (trainer.learner.generated_tokens, trainer.learner.teacher_tokens)


def _assert_same(a, b):
    assert a[2] == b[2]
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x)


def test_an_interrupted_sdft_run_resumes_to_the_same_weights_and_teacher(instruct_tasks, tmp_path):
    straight = _sdft_trainer(instruct_tasks)
    straight.train_until(6)

    first = _sdft_trainer(instruct_tasks)
    first.train_until(3)
    first.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / LEARNER).is_file() and checkpoint_problem(tmp_path / "ckpt") is None
    torch.manual_seed(1234)  # a fresh process's RNG: sampling must depend on the trainer's state only
    resumed = _sdft_trainer(instruct_tasks)
    resumed.load(tmp_path / "ckpt")
    assert resumed.learner.generated_tokens == first.learner.generated_tokens
    resumed.train_until(6)
    _assert_same(_state(straight), _state(resumed))


def _sdft_probe(tasks, seed=0):
    return probe_trainer(_model(), tasks, {"sums": 0.5, "more": 0.5}, steps=4, lr=6e-3, batch_size=2,
                         accelerator=make_accelerator(), lora={"r": 2, "alpha": 4, "dropout": 0.1}, seed=seed,
                         learner=_learner(generations=1))


def test_an_interrupted_sdft_probe_resumes_to_the_same_adapter_and_teacher(instruct_tasks, tmp_path):
    straight = _sdft_probe(instruct_tasks)
    straight.train_until(4)
    teacher = straight.learner.teacher_
    assert teacher and all(".lora_" in n for n in teacher)  # only the adapter is EMA'd; the base is shared

    first = _sdft_probe(instruct_tasks)
    first.train_until(2)
    first.save(tmp_path / "probe")
    torch.manual_seed(99)
    resumed = _sdft_probe(instruct_tasks)
    resumed.load(tmp_path / "probe")
    resumed.train_until(4)
    _assert_same(_state(straight), _state(resumed))


def test_resuming_with_another_learner_is_refused(instruct_tasks, tmp_path):
    from opmix.errors import OpmixError
    from opmix.train.learners import SFT

    trainer = _sdft_trainer(instruct_tasks, steps=4)
    trainer.train_until(1)
    trainer.save(tmp_path / "ckpt")
    sft = Trainer(_model(), MixtureSampler(instruct_tasks, {"sums": 1.0}, 2, seed=0), WSDSchedule(2, 0, 1, 0.1),
                  1e-3, make_accelerator(), learner=SFT())
    with pytest.raises(OpmixError, match="learner 'sdft'"):
        sft.load(tmp_path / "ckpt")


def test_a_sample_ends_at_its_first_eos_which_is_kept():
    class Scripted(torch.nn.Module):  # generate returns fixed continuations after a 2-token prompt
        def generate(self, input_ids, attention_mask, generation_config):
            tail = torch.tensor([[5, EOS, 7, EOS], [EOS, 9, 9, 9], [4, 4, 4, 4]])
            return torch.cat([input_ids, tail], dim=1)

    learner = SDFT(eos_id=EOS, pad_id=0)
    sampled, valid = learner._sample(Scripted(), torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2))
    assert valid.tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]
    assert sampled.tolist() == [[5, EOS, 0, 0], [EOS, 0, 0, 0], [4, 4, 4, 4]]


def test_a_checkpoint_before_the_first_step_resumes_with_a_fresh_teacher(instruct_tasks, tmp_path):
    trainer = _sdft_trainer(instruct_tasks, steps=4)
    trainer.save(tmp_path / "ckpt")  # no step yet: no teacher, counters at zero
    resumed = _sdft_trainer(instruct_tasks, steps=4)
    resumed.load(tmp_path / "ckpt")
    assert resumed.learner.teacher_ is None and resumed.learner.generated_tokens == 0
    trainer.train_until(2)
    resumed.train_until(2)
    _assert_same(_state(trainer), _state(resumed))
