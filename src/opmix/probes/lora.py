"""LoRA probes (SPEC §2 step 1): build them with PEFT, save them, read their low-rank deltas back.

A probe is a LoRA adapter on every attention and MLP linear layer of a causal LM. Targets are found by module
*type* (``nn.Linear`` and transformers' ``Conv1D``), never by hard-coded names, so any ``AutoModelForCausalLM``
works; the LM head and anything that is (or shares its weight with) an embedding are excluded.

``load_probe`` reads the adapter files directly (safetensors + JSON, no PEFT model needed) into a ``ProbeDelta``
whose module names are the *base model's* names, which is what ``opmix.probes.proxy.ProxyModel`` consumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from opmix.errors import OpmixError
from opmix.run.atomic import atomic_dir

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Our sidecar: which modules store their weight as (in, out) (Conv1D). PEFT's own `fan_in_fan_out` is one flag for
# the whole adapter, which is ambiguous for a model mixing nn.Linear and Conv1D.
LAYOUT_FILE = "opmix_probe.json"
_PEFT_PREFIX = "base_model.model."
# adapter_config.json fields that make the adapter something other than a plain low-rank weight delta.
_UNSUPPORTED = ("use_dora", "lora_bias", "use_qalora", "alora_invocation_tokens", "arrow_config", "layer_replication",
                "modules_to_save", "target_parameters", "trainable_token_indices")


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but keep this module importable without it
        return None
    return Conv1D


def is_fan_in_fan_out(module: nn.Module) -> bool:
    """True when the module stores its weight as (in, out) — transformers' Conv1D (GPT-2 style)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def _linear_types() -> tuple[type, ...]:
    conv1d = _conv1d_type()
    return (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)


def lora_targets(model: nn.Module) -> list[str]:
    """Full names of every linear layer a probe adapts, sorted: nn.Linear and Conv1D modules, minus the output
    embedding (LM head), any input embedding, and any layer whose weight is tied to one of them."""
    excluded = [m for m in (model.get_output_embeddings(), model.get_input_embeddings()) if m is not None]
    excluded_weights = {id(getattr(m, "weight", None)) for m in excluded} - {id(None)}
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, _linear_types()) or any(module is m for m in excluded):
            continue
        if id(module.weight) in excluded_weights:  # tied to an embedding
            continue
        targets.append(name)
    if not targets:
        raise OpmixError(f"found no nn.Linear or Conv1D layer to adapt in {type(model).__name__}",
                         "pass the target module names explicitly with targets=[...]")
    return sorted(targets)


def make_probe(model: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               targets: list[str] | None = None, seed: int = 0):
    """Wrap ``model`` in a fresh LoRA adapter (PEFT adapter name ``"default"``); only LoRA parameters are trainable.

    PEFT injects the LoRA layers into ``model`` *in place*: after training and saving, ``peft_model.unload()``
    gives the untouched base model back (do that before making the next probe from the same model).
    ``seed`` seeds LoRA A's initialisation (B starts at zero) without touching the global RNG.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model) if targets is None else sorted(targets)
    modules = dict(model.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing:
        raise OpmixError(f"LoRA targets not found in {type(model).__name__}: {missing[:3]}",
                         "use full module names from model.named_modules() (see lora_targets(model))")
    transposed = [is_fan_in_fan_out(modules[t]) for t in targets]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,  # full names: PEFT matches them exactly
        fan_in_fan_out=all(transposed),  # set it ourselves so PEFT need not rewrite the config (it warns and does)
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    return peft_model


def save_probe(peft_model, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
    """Write the active adapter as ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT's format, loadable
    with ``PeftModel.from_pretrained``) plus our layout sidecar. Written to a temporary directory next to the
    target, then moved into place (``opmix.run.atomic.atomic_dir``), so a reader never sees a half-written probe
    (when overwriting, the old probe is moved aside first: for that instant the directory is absent, never partial).
    ``state_dict``: the model's (trainable) weights when its own are sharded (FSDP gathers them first)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    adapter = peft_model.active_adapter
    base = peft_model.get_base_model()
    modules = dict(base.named_modules())
    transposed = sorted(name for name, m in modules.items()
                        if hasattr(m, "lora_A") and adapter in m.lora_A and is_fan_in_fan_out(m.get_base_layer()))
    with atomic_dir(directory) as out:  # fsynced, swept by the run directory if the process is killed midway
        scratch = out / ".peft"
        peft_model.save_pretrained(scratch, selected_adapters=[adapter], safe_serialization=True,
                                   **({"state_dict": state_dict} if state_dict is not None else {}))
        src = scratch if adapter == "default" else scratch / adapter  # PEFT nests non-default adapters
        for item in src.iterdir():
            if item.is_file():
                os.replace(item, out / item.name)
        shutil.rmtree(scratch)
        (out / LAYOUT_FILE).write_text(json.dumps({"fan_in_fan_out_modules": transposed}, indent=1))


@dataclass
class ProbeDelta:
    """One probe's low-rank factors, keyed by module name in the *base* model's naming.

    ``factors[name] = (A, B, scaling)`` with A of shape (r, in) and B of shape (out, r); the weight delta is
    ``B @ A * scaling``. ``fan_in_fan_out`` names the modules whose base weight is stored (in, out) (Conv1D).
    """

    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    fan_in_fan_out: frozenset[str] = field(default_factory=frozenset)

    def delta(self, name: str) -> torch.Tensor:
        """``B @ A * scaling`` in float32, laid out like the base weight: (out, in), or (in, out) for Conv1D."""
        if name not in self.factors:
            raise KeyError(f"probe has no factors for module {name!r}")
        lora_a, lora_b, scaling = self.factors[name]
        delta = (lora_b.float() @ lora_a.float()) * scaling  # (out, in)
        return delta.T if name in self.fan_in_fan_out else delta


def _alpha_for(name: str, config: dict) -> float:
    """LoRA alpha of one module: PEFT's ``alpha_pattern`` (regex matched at a name boundary) else ``lora_alpha``."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return float(alpha)
    return float(config["lora_alpha"])


def load_probe(directory: str | os.PathLike, device: str | torch.device | None = None) -> ProbeDelta:
    """Read a saved probe (safetensors + JSON only, no pickle) into a ``ProbeDelta`` on ``device`` (default CPU).

    Works on any PEFT LoRA adapter directory; without our layout sidecar, PEFT's global ``fan_in_fan_out`` flag
    decides the layout of ``ProbeDelta.delta`` (``ProxyModel`` always uses the module's real type instead).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    weights, config_path = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    if not weights.is_file() or not config_path.is_file():
        raise OpmixError(f"{directory} is not a saved probe (needs {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG})",
                         "point at a directory written by save_probe (or PEFT save_pretrained with safetensors)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise OpmixError(f"{directory} holds a {config.get('peft_type')} adapter, not LoRA",
                         "train the probe with LoRA")
    unsupported = [key for key in _UNSUPPORTED if config.get(key)]
    if unsupported:
        raise OpmixError(f"{directory}: adapter uses {unsupported}, which is not a plain low-rank weight delta",
                         "train probes with plain LoRA (make_probe)")
    device = torch.device(device if device is not None else "cpu")
    # safetensors names the CPU "cpu" only; a data-parallel CPU run's accelerator says "cpu:0"
    state = load_file(str(weights), device="cpu" if device.type == "cpu" else str(device))

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key.removeprefix(_PEFT_PREFIX))
        if not key.startswith(_PEFT_PREFIX) or match is None:
            raise OpmixError(f"{weights}: unexpected tensor {key!r} in a LoRA adapter",
                             "save probes with save_probe (plain LoRA on linear layers only)")
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor

    factors = {}
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"} or pair["A"].shape[0] != pair["B"].shape[1]:
            raise OpmixError(f"{weights}: module {name!r} lacks a matching lora_A/lora_B pair", "re-save the probe")
        rank = pair["A"].shape[0]
        alpha = _alpha_for(name, config)
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        factors[name] = (pair["A"], pair["B"], scaling)

    layout_path = directory / LAYOUT_FILE
    if layout_path.is_file():
        transposed = frozenset(json.loads(layout_path.read_text())["fan_in_fan_out_modules"])
    else:
        transposed = frozenset(factors) if config.get("fan_in_fan_out") else frozenset()
    logger.debug("loaded probe %s: %d modules", directory, len(factors))
    return ProbeDelta(factors=factors, fan_in_fan_out=transposed)


def lora_parameter_count(model_or_delta, r: int = 16) -> int:
    """LoRA parameters of a ``ProbeDelta`` or of a model holding LoRA layers (PEFT ``lora_A``/``lora_B``, every
    adapter). For a plain model without LoRA layers: the count ``make_probe(model, r=r)`` would add, i.e.
    ``sum r * (in + out)`` over ``lora_targets(model)`` (for the compute ledger, SPEC §6)."""
    if isinstance(model_or_delta, ProbeDelta):
        return sum(a.numel() + b.numel() for a, b, _ in model_or_delta.factors.values())
    count = sum(p.numel() for name, p in model_or_delta.named_parameters()
                if ".lora_A." in name or ".lora_B." in name)
    if count:
        return count
    modules = dict(model_or_delta.named_modules())
    total = 0
    for name in lora_targets(model_or_delta):
        rows, cols = modules[name].weight.shape
        total += r * (rows + cols)  # A (r, in) + B (out, r); in + out is the same for either layout
    return total
