"""The only training loop: AdamW, WSD schedule, gradient clipping and accumulation, bf16 autocast on CUDA.

Built on ``accelerate`` so that ``accelerate launch`` runs it data-parallel unchanged: each process draws its own
batches (its sampler is seeded with its rank) and gradients are averaged by accelerate's DDP wrapper. The whole loop
state (step, optimizer, sampler, RNG) is saved and restored together, so a resumed run equals an uninterrupted one.
Full training and LoRA probes use this same loop; a probe is simply a model whose only trainable parameters are its
adapters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from opmix.errors import OpmixError
from opmix.train.checkpoint import load_trainer_checkpoint, save_trainer_checkpoint
from opmix.train.schedule import WSDSchedule

log = logging.getLogger(__name__)


def make_accelerator(precision: str = "auto"):
    """bf16 autocast on CUDA (for ``auto``), fp32 on CPU."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if precision == "bf16" and not cuda:
        raise OpmixError("train.precision=bf16 needs a CUDA device and none is visible", "use precision: auto")
    mixed = "bf16" if (cuda and precision in ("auto", "bf16")) else "no"
    return Accelerator(mixed_precision=mixed, cpu=not cuda)


class Trainer:
    """Trains ``model`` on batches from ``sampler`` until a given global step of ``schedule``.

    ``start_step`` lets a run continue a schedule (the final training continues the prefix's WSD schedule with the
    prefix's optimizer state, no re-warm).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sampler,
        schedule: WSDSchedule,
        lr: float,
        accelerator,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        grad_clip: float = 1.0,
        grad_accum: int = 1,
        start_step: int = 0,
        stage: str = "train",
    ):
        self.accelerator = accelerator
        self.sampler = sampler
        self.schedule = schedule
        self.peak_lr = lr
        self.grad_clip = grad_clip
        self.grad_accum = grad_accum
        self.step = start_step
        self.stage = stage
        self.tokens_trained = 0
        self.seconds = 0.0
        self.last_loss = float("nan")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # no weight decay on gains and biases (1-D tensors), as usual for transformers
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self._params = [p for _, p in trainable]

    def train_until(
        self,
        end_step: int,
        checkpoint_dir: Path | None = None,
        checkpoint_every: int = 0,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        """Run optimizer steps until ``self.step == end_step``; checkpoint every ``checkpoint_every`` steps."""
        from tqdm.auto import tqdm

        self.model.train()
        progress = tqdm(
            total=end_step - self.step, desc=self.stage, leave=False,
            disable=None if self.accelerator.is_main_process else True,
        )
        while self.step < end_step:
            started = time.perf_counter()
            loss = self._optimizer_step()
            self.seconds += time.perf_counter() - started
            self.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if on_step is not None:
                on_step(self)
            if checkpoint_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                if self.step < end_step:
                    self.save(checkpoint_dir)
        progress.close()

    def _optimizer_step(self) -> float:
        lr = self.peak_lr * self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(self.grad_accum):
            input_ids, _ = self.sampler.next_batch()  # (B, T)
            input_ids = input_ids.to(self.accelerator.device)
            last = micro == self.grad_accum - 1
            sync = nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                loss = self.model(input_ids=input_ids, labels=input_ids).loss
                self.accelerator.backward(loss / self.grad_accum)
            total += loss.detach().float().item() / self.grad_accum
            self.tokens_trained += input_ids.numel() * self.accelerator.num_processes
        if not math.isfinite(total):
            raise OpmixError(
                f"the training loss became {total} at step {self.step} of {self.stage}; "
                "the last good checkpoint is kept",
                "lower train.lr (or raise train.warmup_fraction) and re-run the same command to resume",
            )
        self.accelerator.clip_grad_norm_(self._params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = total
        return total

    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # -- state: one dict for the whole loop, like a stateful trainer --------------------------------------
    def save(self, directory: Path) -> None:
        """Trainable weights, optimizer, sampler, step and RNG, written atomically (safetensors + JSON)."""
        if self.accelerator.is_main_process:
            save_trainer_checkpoint(
                directory,
                model=self.unwrapped_model(),
                optimizer=self.optimizer,
                loop_state={
                    "step": self.step,
                    "stage": self.stage,
                    "tokens_trained": self.tokens_trained,
                    "seconds": self.seconds,
                    "sampler": self.sampler.state_dict(),
                },
            )
        self.accelerator.wait_for_everyone()

    def load(self, directory: Path, weights_only: bool = False) -> None:
        """Restore a checkpoint. ``weights_only`` keeps this trainer's fresh optimizer/sampler (a new branch)."""
        loop_state = load_trainer_checkpoint(
            directory, model=self.unwrapped_model(), optimizer=None if weights_only else self.optimizer
        )
        if not weights_only:
            self.step = loop_state["step"]
            self.tokens_trained = loop_state["tokens_trained"]
            self.seconds = loop_state["seconds"]
            self.sampler.load_state_dict(loop_state["sampler"])
