"""The only training loop: AdamW, WSD schedule, gradient clipping and accumulation, bf16 autocast on CUDA.

Built on ``accelerate`` so that ``accelerate launch`` / ``torchrun`` run it data-parallel unchanged: each process
takes its slice of every global batch (``MixtureSampler(rank=, world_size=)``) and gradients are averaged by
accelerate's DDP wrapper. The whole loop state (step, optimizer, sampler, RNG) is saved and restored together, so a
resumed run equals an uninterrupted one; with several processes, rank 0 writes the checkpoint holding the (shared)
sampler state and every rank's RNG state. A trainer may also run on one process of a multi-process run alone
(``LocalAccelerator``): a probe trained on its own rank while the other ranks train other probes.

The trainer owns its random state: dropout (e.g. a LoRA probe's) draws from torch's global generator, so each
optimizer step runs with the global generator swapped for the trainer's own, seeded by ``seed``. A step's
randomness then depends only on the trainer's seed and step, not on what else ran earlier in the process, which
is what makes a resumed run (a fresh process) bit-identical to an uninterrupted one.
Full training and LoRA probes use this same loop; a probe is simply a model whose only trainable parameters are its
adapters. What a step optimises is the trainer's ``learner`` (``opmix.train.learners``: language modeling by
default, SFT or SDFT on instruction examples); a stateful learner's state is saved and restored with the rest.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from opmix.errors import OpmixError
from opmix.progress import Progress
from opmix.run.faults import fault_point
from opmix.train.checkpoint import (
    load_learner_state,
    load_rng,
    load_trainer_checkpoint,
    save_trainer_checkpoint,
)
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


class LocalAccelerator:
    """What the trainer needs of an ``Accelerator``, for training on this process alone (no collectives), on the
    device and with the autocast of the run's accelerator."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, accelerator):
        self.device = accelerator.device
        self.mixed_precision = getattr(accelerator, "mixed_precision", "no")

    def prepare(self, model, optimizer):
        if self.mixed_precision == "bf16" and self.device.type == "cuda":
            forward = model.forward

            def autocast_forward(*args, **kwargs):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return forward(*args, **kwargs)

            model.forward = autocast_forward
        return model.to(self.device), optimizer

    def backward(self, loss):
        loss.backward()

    def no_sync(self, model):
        return nullcontext()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self):
        pass


class Trainer:
    """Trains ``model`` on batches from ``sampler`` until a given global step of ``schedule``.

    ``start_step`` lets a run continue a schedule (the final training continues the prefix's WSD schedule with the
    prefix's optimizer state, no re-warm). ``learner``: what a step optimises (None: ``LanguageModeling``, the
    next-token loss on every token of a ``(B, T)`` batch).
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
        seed: int = 0,
        learner=None,
    ):
        from opmix.train.learners import LanguageModeling

        self.accelerator = accelerator
        self.learner = learner if learner is not None else LanguageModeling()
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
        self.last_checkpoint: tuple[Path, int] | None = None  # (folder, step) of the last save or load
        self._rng = self._seeded_rng(seed + 7919 * accelerator.process_index)  # dropout differs across ranks
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # no weight decay on gains and biases (1-D tensors), as usual for transformers
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self._params = [p for p in self.model.parameters() if p.requires_grad]  # FSDP replaces them with shards
        self.sharded = getattr(accelerator, "shards_parameters", False)  # FSDP: whole tensors must be gathered

    def train_until(
        self,
        end_step: int,
        checkpoint_dir: Path | None = None,
        checkpoint_every: int = 0,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        """Run optimizer steps until ``self.step == end_step``; checkpoint every ``checkpoint_every`` steps."""
        self.model.train()
        progress = Progress(self.stage, end_step - self.step) if self.accelerator.is_main_process else None
        while self.step < end_step:
            started = time.perf_counter()
            loss = self._optimizer_step()
            self.seconds += time.perf_counter() - started
            self.step += 1
            if progress is not None:
                progress.update(1, loss=loss)
            if on_step is not None:
                on_step(self)
            if checkpoint_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                if self.step < end_step:
                    self.save(checkpoint_dir)
            fault_point(f"step:{self.stage}")
        if progress is not None:
            progress.close()

    def _optimizer_step(self) -> float:
        with self._own_rng():
            return self._update()

    def _update(self) -> float:
        lr = self.peak_lr * self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(self.grad_accum):
            batch, _ = self.sampler.next_batch()  # (B, T) tokens, or (B, 3, T) instruction examples
            batch = batch.to(self.accelerator.device)
            last = micro == self.grad_accum - 1
            sync = nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                loss, tokens = self.learner.loss(self.model, batch)
                self.accelerator.backward(loss / self.grad_accum)
            total += loss.detach().float().item() / self.grad_accum
            self.tokens_trained += tokens * self.accelerator.num_processes
        if not math.isfinite(total):
            raise self._diverged(f"the training loss became {total}")
        norm = self.accelerator.clip_grad_norm_(self._params, self.grad_clip)
        if norm is not None and not math.isfinite(float(norm)):
            # checked before the update, so no non-finite value ever reaches the weights or a checkpoint
            raise self._diverged(f"the gradient norm became {float(norm)}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.learner.after_step(self.unwrapped_model())  # e.g. SDFT's EMA teacher follows the new weights
        self.last_loss = total
        return total

    def _diverged(self, what: str) -> OpmixError:
        if self.last_checkpoint is None:
            kept = "no checkpoint of this stage was written (train.checkpoint_every is 0 or not reached)"
        else:
            kept = f"the last good checkpoint (step {self.last_checkpoint[1]}) is kept in {self.last_checkpoint[0]}"
        return OpmixError(
            f"{what} at step {self.step} of {self.stage}; training stopped and {kept}",
            "lower train.lr (or raise train.warmup_fraction, or lower train.grad_clip) and start a new run with "
            "another --out (a resumed run must keep its config)",
        )

    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights, whole (on rank 0 only when sharded). Every process must call it."""
        from opmix.train.checkpoint import trainable_state

        if self.sharded:
            return self.accelerator.trainable_state(self.model)
        return trainable_state(self.unwrapped_model())

    # -- random state: the trainer's own, swapped in for each step -----------------------------------------
    def _cuda(self) -> torch.device | None:
        device = self.accelerator.device
        return device if device.type == "cuda" else None

    def _seeded_rng(self, seed: int) -> dict[str, torch.Tensor]:
        cuda = self._cuda()
        with torch.random.fork_rng(devices=[cuda] if cuda is not None else []):
            torch.manual_seed(seed)
            return self._global_rng()

    def _global_rng(self) -> dict[str, torch.Tensor]:
        cuda = self._cuda()
        state = {"cpu": torch.get_rng_state()}
        if cuda is not None:
            state["cuda"] = torch.cuda.get_rng_state(cuda)
        return state

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        cuda = self._cuda()
        with torch.random.fork_rng(devices=[cuda] if cuda is not None else []):
            torch.set_rng_state(self._rng["cpu"])
            if cuda is not None and "cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["cuda"], cuda)
            yield
            self._rng = self._global_rng()

    # -- state: one dict for the whole loop, like a stateful trainer --------------------------------------
    def save(self, directory: Path) -> None:
        """Trainable weights, optimizer, sampler, step and RNG, written atomically (safetensors + JSON).

        Every process holds the same sampler state (the global stream) but draws its own dropout masks, so rank 0
        gathers all ranks' RNG states and writes them together (``rank<r>.<device>`` tensors)."""
        ranks = [self._rng]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            ranks = gather_object([self._rng])
        weights = self.trainable_state()  # every process takes part: sharded weights are gathered to rank 0
        optimizer_state = self.accelerator.optimizer_state(self.model, self.optimizer) if self.sharded else None
        if self.accelerator.is_main_process:
            loop_state = {
                "step": self.step,
                "stage": self.stage,
                "tokens_trained": self.tokens_trained,
                "seconds": self.seconds,
                "sampler": self.sampler.state_dict(),
                "world_size": self.accelerator.num_processes,
            }
            rng = {f"rank{i}.{kind}": t for i, r in enumerate(ranks) for kind, t in r.items()}
            save_trainer_checkpoint(directory, self.unwrapped_model(), self.optimizer, loop_state, rng=rng,
                                    learner=self._learner_state(), weights=weights, optimizer_state=optimizer_state)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = (Path(directory), self.step)

    def load(self, directory: Path, weights_only: bool = False) -> None:
        """Restore a checkpoint. ``weights_only`` keeps this trainer's fresh optimizer, sampler and learner state
        (a new branch: e.g. an SDFT teacher then starts again from the loaded weights)."""
        assign = None
        if self.sharded:
            def assign(weights, optimizer_state):
                self.accelerator.load_state(self.model, self.optimizer, weights, optimizer_state)
        loop_state = load_trainer_checkpoint(
            directory, model=self.unwrapped_model(), optimizer=None if weights_only else self.optimizer, assign=assign
        )
        if not weights_only:
            self.step = loop_state["step"]
            self.tokens_trained = loop_state["tokens_trained"]
            self.seconds = loop_state["seconds"]
            rank = self.accelerator.process_index
            if "rank_samplers" in loop_state:  # written when every process drew its own stream: cannot re-shard
                raise OpmixError(
                    f"checkpoint {directory} was written by an opmix version whose processes drew their own "
                    "batches; it cannot be resumed by this one",
                    "finish the run with the opmix version that started it, or start a new run with another --out")
            self.sampler.load_state_dict(loop_state["sampler"])  # re-sharded if the number of processes changed
            prefix = f"rank{rank}."
            saved = {k.removeprefix(prefix): t for k, t in load_rng(directory).items() if k.startswith(prefix)}
            if "cpu" in saved:  # a checkpoint without this rank's state keeps the seeded one
                self._rng = {"cpu": saved["cpu"], **({"cuda": saved["cuda"]} if "cuda" in saved else {})}
            self._load_learner_state(directory)
            self.last_checkpoint = (Path(directory), self.step)

    def _learner_state(self) -> dict | None:
        """The learner's state for the checkpoint, None for a stateless one (its checkpoints stay as they were).
        Every rank's learner holds the same teacher weights, so rank 0's state stands for all."""
        state = self.learner.state_dict()
        if not state["tensors"] and not state["info"]:
            return None
        return {"kind": self.learner.kind, **state}

    def _load_learner_state(self, directory: Path) -> None:
        saved = load_learner_state(directory)
        if saved is None:
            return  # a stateless learner saved nothing; a stateful one starts fresh (as a new branch would)
        if saved["kind"] != self.learner.kind:
            raise OpmixError(f"checkpoint {directory} was written by learner {saved['kind']!r}, "
                             f"this run uses {self.learner.kind!r}", "resume with the learner the run started with")
        self.learner.load_state_dict(saved)
