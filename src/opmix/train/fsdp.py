"""Fully sharded data parallel training (PyTorch FSDP2, ``fully_shard``), behind the trainer's accelerator interface.

``train.parallel: fsdp`` with several processes: each decoder layer (the model's ``_no_split_modules`` classes)
and then the whole model are sharded across the processes, so parameters, gradients and optimizer state are split
``N`` ways; a LoRA probe is sharded the same way (its frozen base too). PyTorch's own ``fully_shard`` is used rather
than accelerate's FSDP plugin because accelerate silently falls back to DDP on CPU (gloo), where the test suite runs.

Checkpoints hold *full* tensors gathered to rank 0 (``torch.distributed.checkpoint.state_dict``) in the same layout
a DDP or single-process run writes (optimizer state keyed by parameter index), so a run can resume with another
number of processes, or switch between DDP and FSDP.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class a Hugging Face model names in ``_no_split_modules``."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


class FSDPAccelerator:
    """What the trainer needs of an ``Accelerator``, with the model fully sharded over the run's processes."""

    shards_parameters = True

    def __init__(self, accelerator):
        self.device = accelerator.device
        self.num_processes = accelerator.num_processes
        self.process_index = accelerator.process_index
        self.is_main_process = accelerator.is_main_process
        self.mixed_precision = getattr(accelerator, "mixed_precision", "no")

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """Shard ``model`` in place; ``optimizer`` (no state yet) is pointed at the sharded parameters."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        names = {id(p): n for n, p in model.named_parameters()}
        policy = MixedPrecisionPolicy()
        if self.mixed_precision == "bf16" and self.device.type == "cuda":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        model.to(self.device)
        layers = decoder_layers(model)
        for layer in layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        log.debug("%s fully sharded over %d processes (%d decoder layers, then the whole model)",
                  type(model).__name__, self.num_processes, len(layers))
        sharded = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
        return model, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @contextmanager
    def no_sync(self, model):
        model.set_requires_gradient_sync(False)  # accumulate locally; the last micro-batch reduce-scatters
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self) -> None:
        torch.distributed.barrier()

    # -- checkpoints: full tensors on rank 0, in the unsharded layout -----------------------------------------
    @staticmethod
    def _full():
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        """The trainable parameters, unsharded, on rank 0 (empty elsewhere). Every process must call it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        full = get_model_state_dict(model, options=self._full())
        return {n: t.contiguous() for n, t in full.items() if n in trainable}

    def optimizer_state(self, model, optimizer) -> dict:
        """The optimizer's state, unsharded, keyed by parameter index as ``optimizer.state_dict()`` is."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=self._full())
        if not full:
            return {"state": {}, "param_groups": []}
        order = [name for group in full["param_groups"] for name in group["params"]]
        index = {name: i for i, name in enumerate(order)}
        groups = [{**group, "params": [index[n] for n in group["params"]]} for group in full["param_groups"]]
        return {"state": {index[n]: entries for n, entries in full["state"].items()}, "param_groups": groups}

    def load_state(self, model, optimizer, weights: dict, optimizer_state: dict | None) -> None:
        """Full tensors (read by every process) into the sharded model and optimizer."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        if optimizer_state is None:
            return
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        by_name = {
            "state": {order[int(i)]: entries for i, entries in optimizer_state["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                             for g in optimizer_state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
