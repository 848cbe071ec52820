"""Resumable trainer checkpoints: trainable weights, optimizer state, RNG, learner state (safetensors) and loop state
(JSON).

No pickle anywhere: the optimizer's tensors go to safetensors under ``<param index>.<key>`` names and its
structure (param groups, scalar entries) to JSON. The folder is written atomically, and ``state.json`` records the
size and sha256 of every tensor file, so a damaged checkpoint (a disk error, a partial copy) is detected by
``checkpoint_problem`` and never resumed from: the step restarts instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from opmix.errors import OpmixError
from opmix.run.atomic import atomic_dir, save_safetensors
from opmix.run.faults import fault_point
from opmix.run.rundir import sha256_file

log = logging.getLogger(__name__)

WEIGHTS, OPTIMIZER, RNG, STATE = "trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"
LEARNER = "learner.safetensors"  # a stateful learner's tensors (SDFT's EMA teacher); only when it has state


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainer_checkpoint(directory: Path, model, optimizer, loop_state: dict, rng: dict | None = None,
                            learner: dict | None = None, weights: dict | None = None,
                            optimizer_state: dict | None = None) -> None:
    """``rng``: named RNG state tensors to restore on resume (default: this process's global torch RNG).
    ``learner``: ``{"kind", "tensors", "info"}`` of a learner with state (``opmix.train.learners``); its tensors go
    to ``learner.safetensors`` and the rest to ``state.json``, in the same atomic folder as the weights.
    ``weights`` / ``optimizer_state``: given when the model's own are sharded (FSDP gathers them first)."""
    weights = trainable_state(model) if weights is None else weights
    optimizer_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
    with atomic_dir(Path(directory)) as tmp:
        save_safetensors(tmp / WEIGHTS, {n: t.cpu() for n, t in weights.items()})
        fault_point("checkpoint")
        tensors, structure = _flatten_optimizer(optimizer_state)
        save_safetensors(tmp / OPTIMIZER, tensors)
        save_safetensors(tmp / RNG, _rng_state() if rng is None else rng)
        names = [WEIGHTS, OPTIMIZER, RNG]
        if learner is not None:
            save_safetensors(tmp / LEARNER, learner["tensors"])
            names.append(LEARNER)
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)} for name in names}
        state = {"loop": loop_state, "optimizer": structure, "files": files}
        if learner is not None:
            state["learner"] = {"kind": learner["kind"], "info": learner["info"]}
        (tmp / STATE).write_text(json.dumps(state, sort_keys=True))


def checkpoint_problem(directory: Path) -> str | None:
    """None if ``directory`` holds a complete checkpoint whose files match their recorded size and sha256."""
    directory = Path(directory)
    try:
        files = json.loads((directory / STATE).read_text())["files"]
    except FileNotFoundError:
        return f"{directory / STATE} is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{directory / STATE} is unreadable or has no file records ({exc})"
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
            return f"{path} does not match its recorded size and sha256"
    return None


def resumable(directory: Path) -> bool:
    """True if a training step can resume from ``directory``; a damaged checkpoint is reported and ignored."""
    if not (Path(directory) / STATE).is_file():
        return False
    problem = checkpoint_problem(directory)
    if problem is not None:
        log.warning("not resuming from checkpoint %s: %s; the step restarts from its beginning", directory, problem)
    return problem is None


def load_trainer_checkpoint(directory: Path, model, optimizer=None, assign=None) -> dict:
    """Restore the checkpoint's weights (and optimizer state, when ``optimizer`` is given) into ``model``; returns
    its loop state. ``assign(weights, optimizer_state)`` loads them instead, for a sharded model (FSDP)."""
    directory = Path(directory)
    if not (directory / STATE).is_file():
        raise OpmixError(f"checkpoint {directory} is incomplete (no {STATE})", "delete it and re-run to redo the step")
    weights = load_file(str(directory / WEIGHTS))
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        raise OpmixError(f"checkpoint {directory} does not match the model (missing {missing})", "use a new --out")
    device = next(model.parameters()).device
    saved = json.loads((directory / STATE).read_text())
    optimizer_state = None
    if optimizer is not None:
        tensors = load_file(str(directory / OPTIMIZER))
        optimizer_state = _unflatten_optimizer(tensors, saved["optimizer"], device)
    if assign is not None:
        assign(weights, optimizer_state)
        return saved["loop"]
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, tensor in weights.items():
            parameters[name].copy_(tensor.to(device))
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    return saved["loop"]


def load_rng(directory: Path) -> dict[str, torch.Tensor]:
    """The named RNG state tensors saved with a checkpoint."""
    return load_file(str(Path(directory) / RNG))


def load_learner_state(directory: Path) -> dict | None:
    """``{"kind", "tensors", "info"}`` saved with a checkpoint by a stateful learner; None when it saved none."""
    directory = Path(directory)
    learner = json.loads((directory / STATE).read_text()).get("learner")
    if learner is None:
        return None
    return {"kind": learner["kind"], "info": learner["info"], "tensors": load_file(str(directory / LEARNER))}


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
