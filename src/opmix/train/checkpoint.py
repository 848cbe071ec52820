"""Resumable trainer checkpoints: trainable weights, optimizer state, RNG (safetensors) and loop state (JSON).

No pickle anywhere: the optimizer's tensors go to safetensors under ``<param index>.<key>`` names and its
structure (param groups, scalar entries) to JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from opmix.errors import OpmixError
from opmix.run.atomic import atomic_dir, save_safetensors

WEIGHTS, OPTIMIZER, RNG, STATE = "trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainer_checkpoint(directory: Path, model, optimizer, loop_state: dict) -> None:
    with atomic_dir(Path(directory)) as tmp:
        save_safetensors(tmp / WEIGHTS, {n: t.cpu() for n, t in trainable_state(model).items()})
        tensors, structure = _flatten_optimizer(optimizer.state_dict())
        save_safetensors(tmp / OPTIMIZER, tensors)
        save_safetensors(tmp / RNG, _rng_state())
        (tmp / STATE).write_text(json.dumps({"loop": loop_state, "optimizer": structure}, sort_keys=True))


def load_trainer_checkpoint(directory: Path, model, optimizer=None) -> dict:
    directory = Path(directory)
    if not (directory / STATE).is_file():
        raise OpmixError(f"checkpoint {directory} is incomplete (no {STATE})", "delete it and re-run to redo the step")
    weights = load_file(str(directory / WEIGHTS))
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        raise OpmixError(f"checkpoint {directory} does not match the model (missing {missing})", "use a new --out")
    device = next(model.parameters()).device
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, tensor in weights.items():
            parameters[name].copy_(tensor.to(device))
    saved = json.loads((directory / STATE).read_text())
    if optimizer is not None:
        tensors = load_file(str(directory / OPTIMIZER))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, saved["optimizer"], device))
        _set_rng_state(load_file(str(directory / RNG)))
    return saved["loop"]


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, structure: dict, device) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        # AdamW keeps its step counter on the CPU unless capturable; move only the moment buffers
        state.setdefault(int(index), {})[key] = tensor if key == "step" else tensor.to(device)
    for index, entries in structure["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": structure["param_groups"]}


def _rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def _set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
