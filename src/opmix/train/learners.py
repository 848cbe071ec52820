"""Learners: what one training step optimises, plugged into the one ``Trainer`` (full training and LoRA probes).

A learner turns a batch from the sampler into a loss. The Trainer owns everything else (optimizer, schedule,
accumulation, clipping, RNG, checkpoints), so a new objective never needs a new loop. The contract:

- ``loss(model, batch) -> (loss, trained_tokens)``: ``model`` is the trainer's (possibly DDP-wrapped) model, so the
  loss's forward must go through it for data-parallel gradients to be averaged; ``batch`` is already on the
  accelerator's device; ``trained_tokens`` counts this process's tokens of the forward and backward pass (6 N each
  in the ledger).
- ``after_step(model)``: called with the unwrapped model after each optimizer step, inside the trainer's own RNG.
- ``state_dict() -> {"tensors": {...}, "info": {...}}`` and ``load_state_dict``: what a resumed run needs (JSON-able
  ``info``, safetensors ``tensors``); the trainer's checkpoint carries it.

``LanguageModeling`` is the default and is exactly the loop's original objective. ``SFT`` and ``SDFT`` (in
``opmix.train.sdft``) train on ``(B, 3, T)`` instruction examples (``opmix.instruct.examples``).
"""

from __future__ import annotations

from typing import Any

import torch

from opmix.errors import OpmixError
from opmix.instruct.examples import PAD_ID, ROLE, ROLE_RESPONSE, STUDENT

IGNORE_INDEX = -100  # the label Hugging Face's causal-LM loss skips


class StatelessLearner:
    """What a learner without state of its own does after a step and in a checkpoint: nothing."""

    def after_step(self, model) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": {}, "info": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LanguageModeling(StatelessLearner):
    """Next-token cross-entropy on every position of a ``(B, T)`` token batch; every token is trained."""

    kind = "lm"

    def loss(self, model, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        return model(input_ids=batch, labels=batch).loss, batch.numel()  # batch: (B, T)


class SFT(StatelessLearner):
    """Supervised fine-tuning: cross-entropy on the response tokens of ``(B, 3, T)`` examples only.

    ``pad_id`` is the token id that stands in for ``PAD_ID`` in the forward pass (attention masks it out and it
    is never a label, so its value does not change the loss; the tokenizer's pad id keeps embeddings in range).
    """

    kind = "sft"

    def __init__(self, pad_id: int = 0):
        self.pad_id = pad_id

    def loss(self, model, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        input_ids, attention_mask, labels = sft_inputs(batch, self.pad_id)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return out.loss, int(attention_mask.sum())  # trained: every non-pad position runs forward and backward


def sft_inputs(batch: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)``, each ``(B, T)``, from a ``(B, 3, T)`` example batch: labels are the
    response tokens, ``IGNORE_INDEX`` on the prompt and the padding (the model shifts them by one itself)."""
    if batch.ndim != 3 or batch.shape[1] != 3:
        raise OpmixError(f"SFT needs (B, 3, T) instruction examples, got a batch of shape {tuple(batch.shape)}",
                         "train instruction tasks (opmix.instruct) with learner sft, token domains with lm")
    student = batch[:, STUDENT]  # (B, T)
    real = student != PAD_ID  # (B, T)
    input_ids = torch.where(real, student, torch.full_like(student, pad_id))
    labels = torch.where(batch[:, ROLE] == ROLE_RESPONSE, student, torch.full_like(student, IGNORE_INDEX))
    return input_ids, real.long(), labels


def make_learner(name: str, **settings):
    """The learner called ``name`` ("lm", "sft" or "sdft") built with ``settings`` (its constructor's arguments)."""
    from opmix.train.sdft import SDFT

    kinds = {"lm": LanguageModeling, "sft": SFT, "sdft": SDFT}
    if name not in kinds:
        raise OpmixError(f"unknown learner {name!r}", f"use one of {sorted(kinds)}")
    try:
        return kinds[name](**settings)
    except TypeError as exc:  # an unknown or missing setting: name it rather than show a traceback
        raise OpmixError(f"learner {name!r}: {exc}", "check the learner's settings") from exc
