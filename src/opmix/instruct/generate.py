"""Batched generation with the model's own ``generate`` (KV cache), and scoring a task's eval split with it.

Prompts are grouped by length (less padding), left-padded (so every row's next token comes at the same position)
with an attention mask, and generated in batches. Each output is cut at the first EOS (the tokenizer's, or one of
the model's ``generation_config.eos_token_id``) and at the first stop string: the tokens from the one where the
stop string starts are removed. Generation also stops early, per row, when a stop string appears.

Sampling is pure (temperature only: no top-k, top-p or repetition penalty from the model's generation config),
which on-policy self-distillation needs, and reproducible: with a ``seed`` it draws from its own seeded RNG and
leaves the global one as it was. The same seed, prompts and ``batch_size`` give the same samples.

Cost: ``Generations.prompt_tokens`` and ``.generated_tokens`` count the tokens the model ran a forward pass on
(padding excluded from the prompts; every row of a batch counted until the batch's last row finishes), so a
caller adds about ``2 * N * (prompt_tokens + generated_tokens)`` FLOPs for a model of N parameters.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from opmix.errors import OpmixError
from opmix.instruct.examples import prompts as row_prompts


class Generations(list):
    """The new token ids of each prompt (a ``list[list[int]]``), with the tokens their generation processed."""

    def __init__(self, ids: list[list[int]], prompt_tokens: int = 0, generated_tokens: int = 0):
        super().__init__(ids)
        self.prompt_tokens = prompt_tokens
        self.generated_tokens = generated_tokens


def pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS, else 0 (masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's (chat models often list several)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return {int(i) for i in ids if i is not None}


def _left_pad(batch: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p) for p in batch)
    ids = torch.full((len(batch), length), pad, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(batch), length), dtype=torch.long)  # (B, L): 1 on real tokens
    for row, prompt in enumerate(batch):
        ids[row, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _stop_criteria(tokenizer, stop_strings, prompt_length: int):
    """Stop a row once its new tokens hold a stop string (only the last few tokens are decoded each step)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    # a token holds at least one byte and a character at most 4, so a stop string spans at most 4 * len tokens
    window = 4 * max(len(s) for s in stop_strings) + 4

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            tails = input_ids[:, max(prompt_length, input_ids.shape[1] - window):].tolist()  # (B, <= window)
            texts = tokenizer.batch_decode(tails)
            return torch.tensor([any(s in t for s in stop_strings) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


def cut_at_stop(ids: list[int], tokenizer, stop_strings) -> list[int]:
    """``ids`` without the tokens from the one where the first stop string starts."""
    text = tokenizer.decode(ids)
    starts = [text.find(s) for s in stop_strings if s in text]
    if not starts:
        return ids
    stop = min(starts)
    for end in range(len(ids), -1, -1):  # the longest prefix whose text ends before the stop string
        prefix = tokenizer.decode(ids[:end])
        if len(prefix) <= stop and text.startswith(prefix):
            return ids[:end]
    return []


def cut_text(text: str, stop_strings) -> str:
    """``text`` up to its first stop string."""
    starts = [text.find(s) for s in stop_strings if s in text]
    return text[: min(starts)] if starts else text


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Draw from an RNG seeded with ``seed`` inside, the global RNG restored after; nothing changes when None."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
             stop_strings=(), do_sample: bool = False, temperature: float = 1.0,
             seed: int | None = None) -> Generations:
    """The new token ids for each prompt (greedy, or sampled at ``temperature``), in the prompts' order."""
    from transformers import GenerationConfig

    if any(len(p) == 0 for p in prompts):
        raise OpmixError("a prompt to generate from is empty", "give every prompt at least one token")
    if do_sample and temperature <= 0:
        raise OpmixError(f"sampling temperature must be > 0, got {temperature}", "use do_sample=False for greedy")
    pad, eos_ids = pad_id(tokenizer), _eos_ids(model, tokenizer)
    sampling = dict(temperature=temperature, top_k=0, top_p=1.0) if do_sample else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1, repetition_penalty=1.0, use_cache=True,
        pad_token_id=pad, eos_token_id=sorted(eos_ids), **sampling,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    outputs: list[list[int]] = [[] for _ in prompts]
    prompt_tokens = generated_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with _seeded(seed if do_sample else None, device):
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                ids, mask = _left_pad([prompts[i] for i in rows], pad, device)  # (B, L)
                stops = _stop_criteria(tokenizer, tuple(stop_strings), ids.shape[1]) if stop_strings else None
                with torch.no_grad():
                    full = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          stopping_criteria=stops)  # (B, L + steps)
                new = full[:, ids.shape[1]:].tolist()  # (B, steps)
                prompt_tokens += int(mask.sum())
                generated_tokens += len(rows) * (full.shape[1] - ids.shape[1])
                for i, row in zip(rows, new):
                    ends = [k for k, token in enumerate(row) if token in eos_ids]
                    row = row[: ends[0]] if ends else row
                    outputs[i] = cut_at_stop(row, tokenizer, stop_strings) if stop_strings else row
    finally:
        model.train(was_training)
    return Generations(outputs, prompt_tokens, generated_tokens)


def score_task(model, tokenizer, task, batch_size: int = 16) -> dict:
    """Greedy answers to a task's eval prompts, scored against the gold responses: accuracy, error_rate (what the
    mixing laws are fitted on), n, and the tokens processed."""
    generated = generate(model, tokenizer, row_prompts(task.eval), task.max_new_tokens, batch_size=batch_size,
                         stop_strings=task.stop_strings)
    texts = tokenizer.batch_decode(list(generated), skip_special_tokens=True)
    scores = [task.scorer(prompt, cut_text(text, task.stop_strings), gold)
              for (prompt, gold), text in zip(task.eval_texts, texts)]
    accuracy = float(np.mean(scores))
    return {"accuracy": accuracy, "error_rate": 1.0 - accuracy, "n": len(scores),
            "generated_tokens": generated.generated_tokens, "prompt_tokens": generated.prompt_tokens}
