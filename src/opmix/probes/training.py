"""Training one probe (SPEC section 2 step 1): a LoRA adapter from a model, on a mixture, with the one training loop.

``probe_trainer`` builds the pieces every probe is trained with (``make_probe``, a seeded ``MixtureSampler``, a
flat schedule without warmup that decays over its last ``decay_fraction``, the loop's ``Trainer``); the recipes'
resumable step (``opmix.stages.train_probe``) and the library's ``train_probe`` both use it.

``train_probe`` is the in-memory form: from a model object (copied: the caller's model is never changed, so this
also works on a model in the middle of its own training run) or a local Hugging Face model directory, it trains
the probe and returns its ``ProbeDelta`` (optionally saved as a PEFT adapter directory too).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from opmix.errors import OpmixError

DEFAULT_LORA = {"r": 16, "alpha": 32.0, "dropout": 0.05}  # the published defaults (config/base.py LoraConfig)


def probe_trainer(
    model: torch.nn.Module,
    train_sets: Mapping[str, np.ndarray],
    mixture: Mapping[str, float],
    steps: int,
    lr: float,
    batch_size: int,
    accelerator,
    lora: Mapping[str, float] | None = None,
    decay_fraction: float = 0.2,
    final_lr_ratio: float = 0.1,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float = 1.0,
    grad_accum: int = 1,
    seed: int = 0,
    stage: str = "probe",
    learner=None,
):
    """A loop ``Trainer`` over a fresh LoRA probe on ``model`` (injected in place: pass a copy you can give up),
    drawing ``batch_size`` sequences per step (``batch_size // grad_accum`` per micro-batch) from ``mixture``;
    ``trainer.train_until(steps)`` trains it. ``learner``: what a step optimises (``opmix.train.learners``; None
    is language modeling); probes use the same learner as full training (SPEC section 3)."""
    from opmix.data.sampler import MixtureSampler
    from opmix.probes.lora import make_probe
    from opmix.train.loop import Trainer
    from opmix.train.schedule import WSDSchedule

    if steps < 1:
        raise OpmixError(f"probe steps must be >= 1, got {steps}", "give a positive number of probe steps")
    settings = {**DEFAULT_LORA, **(lora or {})}
    peft_model = make_probe(model, r=int(settings["r"]), alpha=settings["alpha"], dropout=settings["dropout"])
    sampler = MixtureSampler(train_sets, dict(mixture), batch_size // grad_accum, seed=seed,
                             rank=accelerator.process_index, world_size=accelerator.num_processes)
    schedule = WSDSchedule(steps, 0, round(decay_fraction * steps), final_lr_ratio)
    return Trainer(peft_model, sampler, schedule, lr, accelerator, weight_decay=weight_decay, betas=betas,
                   grad_clip=grad_clip, grad_accum=grad_accum, stage=stage, seed=seed, learner=learner)


def train_probe(
    model,
    domains: Mapping,
    mixture: Mapping[str, float],
    steps: int,
    lr: float = 6e-3,
    batch_size: int = 8,
    lora: Mapping[str, float] | None = None,
    decay_fraction: float = 0.2,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    accelerator=None,
    **loop_settings,
):
    """Train a LoRA probe from ``model`` on ``mixture`` for ``steps`` optimizer steps; return its ``ProbeDelta``.

    ``model``: a causal LM object (deep-copied first, so it is left exactly as it was), or a local Hugging Face
    model directory (safetensors; e.g. a ``Trainer`` checkpoint folder). ``domains``: name -> (n, seq_len) token
    array or ``TokenizedDomain`` (its train split is used). ``lr`` is the probe's rate (the method uses twice the
    full-training rate, no warmup). ``out``: also keep the adapter there (PEFT format, ``load_probe`` reads it).
    ``loop_settings``: ``weight_decay``, ``betas``, ``grad_clip``, ``grad_accum``, ``final_lr_ratio``.
    """
    from opmix.data.cache import train_sets
    from opmix.probes.lora import load_probe, save_probe
    from opmix.run import processes
    from opmix.train.loop import make_accelerator

    if isinstance(model, (str, Path)):
        from opmix.model import load_model

        model = load_model(Path(model))
    elif isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model)
    else:
        raise OpmixError(f"train_probe needs a model or a model directory, got {type(model).__name__}",
                         "pass a transformers causal LM or the path of a saved one")
    accelerator = accelerator if accelerator is not None else make_accelerator()
    trainer = probe_trainer(model, train_sets(domains), mixture, steps, lr, batch_size, accelerator, lora=lora,
                            decay_fraction=decay_fraction, seed=seed, **loop_settings)
    trainer.train_until(steps)
    peft_model = trainer.unwrapped_model()
    device = next(peft_model.parameters()).device
    if out is not None:
        save_probe(peft_model, out)  # by rank 0 of a multi-process job; the others wait for it
        processes.barrier()
        return load_probe(out, device=device)
    with tempfile.TemporaryDirectory(prefix="opmix-probe-") as scratch, processes.own_writes():  # this process's
        save_probe(peft_model, Path(scratch) / "adapter")
        return load_probe(Path(scratch) / "adapter", device=device)

