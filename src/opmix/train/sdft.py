"""On-policy self-distillation (SDFT, SPEC section 3): the student learns from itself shown a demonstration.

For each example of a ``(B, 3, T)`` batch, one step:

1. the student samples ``generations`` responses to the prompt with the model's own ``generate`` (left padding,
   KV cache, plain sampling at ``temperature``). Sampling draws from torch's global generator, which the Trainer
   swaps for its own during a step, so a step's samples depend only on the trainer's seed and step;
2. the teacher, the same network with an EMA of the student's trainable weights, reads the teacher context (the
   prompt with a gold demonstration) followed by the sampled tokens, without grad;
3. loss = per-token reverse KL(student || teacher) over the full vocabulary at the sampled positions, averaged
   over the sampled tokens after skipping the first ``skip_tokens`` of each response (the opening tokens are where
   the demonstration-conditioned teacher differs most for reasons of format, not content);
4. after the optimizer step, ``after_step`` moves the teacher toward the student: ``teacher <- (1 - rate) teacher +
   rate student``.

The teacher pass calls the student's own module with the EMA tensors substituted for its trainable parameters
(``torch.func.functional_call``). That holds exactly one extra copy of the trainable weights (which an EMA needs
anyway): for a LoRA probe only the adapter, on the same frozen base; for full training a copy of the weights, but
no second module, no second set of buffers and no weight copying in and out around each teacher pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from opmix.errors import OpmixError
from opmix.instruct.examples import prompts, teacher_prompts

TEACHER_PREFIX = "teacher."  # names of the EMA tensors in the learner's state_dict


class SDFT:
    """Self-distillation learner; counters ``generated_tokens`` (2 N FLOPs each, ``generation_flops``) and
    ``teacher_tokens`` (teacher forward positions, 2 N each, ``teacher_flops``) are this process's totals.

    One learner per Trainer: it holds that run's teacher, so two probes must not share an instance.
    ``temperature`` only shapes the sampling; the KL compares the model's untempered distributions."""

    kind = "sdft"

    def __init__(
        self,
        max_new_tokens: int = 128,
        generations: int = 1,
        temperature: float = 1.0,
        ema_rate: float = 0.01,
        skip_tokens: int = 3,
        pad_id: int = 0,
        eos_id: int | list[int] | None = None,
    ):
        if max_new_tokens < 1 or generations < 1 or temperature <= 0 or not 0 < ema_rate <= 1 or skip_tokens < 0:
            raise OpmixError(
                f"SDFT settings out of range: max_new_tokens={max_new_tokens}, generations={generations}, "
                f"temperature={temperature}, ema_rate={ema_rate}, skip_tokens={skip_tokens}",
                "use max_new_tokens >= 1, generations >= 1, temperature > 0, 0 < ema_rate <= 1, skip_tokens >= 0",
            )
        self.max_new_tokens = max_new_tokens
        self.generations = generations
        self.temperature = temperature
        self.ema_rate = ema_rate  # per optimizer step
        self.skip_tokens = skip_tokens
        self.pad_id = pad_id
        self.eos_id = eos_id  # None: the model's generation_config.eos_token_id
        self.generated_tokens = 0
        self.teacher_tokens = 0
        self.teacher_: dict[str, torch.Tensor] | None = None  # EMA of the trainable weights, set on first use

    # -- the step ------------------------------------------------------------------------------------------
    def loss(self, model, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        if batch.ndim != 3 or batch.shape[1] != 3:
            raise OpmixError(f"SDFT needs (B, 3, T) instruction examples, got a batch of shape {tuple(batch.shape)}",
                             "train instruction tasks (opmix.instruct) with learner sdft, token domains with lm")
        net = _unwrap(model)
        self._ensure_teacher(net)
        device = batch.device
        rows = batch.cpu()
        repeat = self.generations
        student_prompts = [p for p in prompts(rows) for _ in range(repeat)]
        contexts = [c for c in teacher_prompts(rows) for _ in range(repeat)]
        if any(not p for p in student_prompts) or any(not c for c in contexts):
            raise OpmixError("an instruction example has an empty prompt or teacher context",
                             "SDFT samples from the prompt and conditions the teacher on its context: give both")

        prompt_ids, prompt_mask = _left_pad(student_prompts, self.pad_id, device)  # (N, P), N = B * generations
        sampled, valid = self._sample(net, prompt_ids, prompt_mask)  # (N, L), (N, L)
        context_ids, context_mask = _left_pad(contexts, self.pad_id, device)  # (N, C)
        teacher_logits = self._teacher_logits(net, context_ids, context_mask, sampled, valid)  # (N, L, V)

        student_ids = torch.cat([prompt_ids, sampled], dim=1)  # (N, P + L)
        student_mask = torch.cat([prompt_mask, valid.long()], dim=1)
        out = model(input_ids=student_ids, attention_mask=student_mask, position_ids=_positions(student_mask))
        first = prompt_ids.shape[1] - 1  # the logits at the last prompt position predict the first sampled token
        student_logits = out.logits[:, first : first + sampled.shape[1]]  # (N, L, V)

        counted = valid & (torch.arange(sampled.shape[1], device=device) >= self.skip_tokens)  # (N, L)
        self.generated_tokens += int(valid.sum())
        self.teacher_tokens += int(context_mask.sum()) + int(valid.sum())
        return reverse_kl(student_logits, teacher_logits, counted), int(student_mask.sum())

    def _sample(self, net, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """The sampled tokens ``(N, L)`` (``pad_id`` after a response's end) and which are real ``(N, L)``: every
        token up to and including the first EOS."""
        from transformers import GenerationConfig

        eos = self._eos_ids(net)
        config = GenerationConfig(
            do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,  # the model's own distribution
            max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=eos, use_cache=True,
        )
        with torch.no_grad(), _eval_mode(net):
            sequences = net.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
        sampled = sequences[:, prompt_ids.shape[1]:]  # (N, L), L <= max_new_tokens
        ended = torch.isin(sampled, torch.tensor(eos, device=sampled.device))  # (N, L)
        valid = (ended.long().cumsum(dim=1) - ended.long()) == 0  # no EOS strictly before
        return sampled.masked_fill(~valid, self.pad_id), valid

    def _teacher_logits(self, net, context_ids, context_mask, sampled, valid) -> torch.Tensor:
        ids = torch.cat([context_ids, sampled], dim=1)  # (N, C + L)
        mask = torch.cat([context_mask, valid.long()], dim=1)
        with torch.no_grad(), _eval_mode(net):
            logits = torch.func.functional_call(
                net, self.teacher_, args=(), kwargs=dict(input_ids=ids, attention_mask=mask,
                                                         position_ids=_positions(mask))).logits
        first = context_ids.shape[1] - 1
        return logits[:, first : first + sampled.shape[1]]  # (N, L, V)

    def _eos_ids(self, net) -> list[int]:
        eos = self.eos_id if self.eos_id is not None else getattr(net.generation_config, "eos_token_id", None)
        if eos is None:
            raise OpmixError("SDFT needs an end-of-sequence token id and the model declares none",
                             "pass eos_id (the tokenizer's eos_token_id) in the learner's settings")
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    # -- the EMA teacher -----------------------------------------------------------------------------------
    def after_step(self, model) -> None:
        """``teacher <- (1 - rate) teacher + rate student`` over the trainable weights."""
        trainable = _trainable(model)
        self._ensure_teacher(model)
        names = sorted(trainable)
        with torch.no_grad():
            torch._foreach_lerp_([self.teacher_[n] for n in names], [trainable[n].detach() for n in names],
                                 self.ema_rate)

    def _ensure_teacher(self, net) -> None:
        trainable = _trainable(net)
        if self.teacher_ is None:  # the teacher starts as the student
            self.teacher_ = {n: p.detach().clone() for n, p in trainable.items()}
            return
        if set(self.teacher_) != set(trainable):
            missing = sorted(set(trainable) ^ set(self.teacher_))[:3]
            raise OpmixError(f"the SDFT teacher's weights do not match the model's trainable weights ({missing})",
                             "resume with the model (and LoRA settings) the run started with")
        for name, p in trainable.items():  # a restored teacher arrives on the CPU
            if self.teacher_[name].device != p.device or self.teacher_[name].dtype != p.dtype:
                self.teacher_[name] = self.teacher_[name].to(device=p.device, dtype=p.dtype)

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        tensors = {TEACHER_PREFIX + n: t.detach().cpu().contiguous() for n, t in (self.teacher_ or {}).items()}
        info = {"generated_tokens": self.generated_tokens, "teacher_tokens": self.teacher_tokens}
        return {"tensors": tensors, "info": info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        teacher = {n.removeprefix(TEACHER_PREFIX): t for n, t in state["tensors"].items()
                   if n.startswith(TEACHER_PREFIX)}
        self.teacher_ = {n: t.clone() for n, t in teacher.items()} or None
        self.generated_tokens = int(state["info"].get("generated_tokens", 0))
        self.teacher_tokens = int(state["info"].get("teacher_tokens", 0))


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the ``mask``ed positions of ``KL(p_s || p_t) = sum_v p_s(v) (log p_s(v) - log p_t(v))``.

    Logits are ``(N, L, V)``, ``mask`` ``(N, L)``; the gradient flows through the student only. With no position
    masked in, the result is a zero that still depends on the student (so every rank's backward runs)."""
    log_p = torch.log_softmax(student_logits.float(), dim=-1)  # (N, L, V)
    log_q = torch.log_softmax(teacher_logits.detach().float(), dim=-1)  # (N, L, V)
    per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (N, L)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))  # a masked NaN must not leak in
    return per_token.sum() / mask.sum().clamp(min=1)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as ``(N, max_len)`` ids padded on the left (so every row ends at the same column, where
    generation continues) and the matching attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` uses them, so a forward scores what was sampled."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _unwrap(model):
    """The module under a DDP wrapper (generation and the teacher pass run outside DDP: no gradient to sync)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


@contextmanager
def _eval_mode(module) -> Iterator[None]:
    """No dropout while sampling and in the teacher pass; the module's previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
