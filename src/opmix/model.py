"""Models: a local Hugging Face causal LM (any architecture AutoModelForCausalLM knows), or a built-in config.

Loading is safe by default: weights only from safetensors (a pickle checkpoint such as ``pytorch_model.bin`` can
run arbitrary code when unpickled, so it is refused, not loaded), and the model's own Python code (``auto_map`` in
its config.json) only with ``trust_remote_code=True`` (config ``model.trust_remote_code`` or ``--trust-remote-code``).
Both are checked by ``check_causal_lm_dir`` before any data is read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from opmix.errors import OpmixError

log = logging.getLogger(__name__)

# Small Llama-style configs initialised at random (vocabulary taken from the tokenizer).
BUILTIN_CONFIGS: dict[str, dict] = {
    "llama-tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "llama-1m": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "llama-5m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=4),
    "llama-30m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
}


def builtin_model(name: str, vocab_size: int, seed: int, max_positions: int = 2048):
    """A Llama-style model from ``BUILTIN_CONFIGS``, initialised with its own seeded RNG (global RNG untouched).

    Its position limit is ``max_positions``: the workspace gives it ``data.seq_len``, so any seq_len fits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in BUILTIN_CONFIGS:
        raise OpmixError(f"unknown built-in model {name!r}", f"use one of {sorted(BUILTIN_CONFIGS)}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        num_key_value_heads=BUILTIN_CONFIGS[name]["num_attention_heads"],
        tie_word_embeddings=False,
        **BUILTIN_CONFIGS[name],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def check_causal_lm_dir(path: Path, trust_remote_code: bool = False):
    """Return the directory's config, or raise a one-line error when it is not a local causal-LM model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    if not path.is_dir():
        raise OpmixError(f"model path {path} is not a directory", "give a local Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise OpmixError(f"model path {path} has no config.json", "give a directory written by save_pretrained")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        model_type, auto_map = raw.get("model_type"), raw.get("auto_map") or {}
    except (OSError, ValueError, AttributeError) as error:
        raise OpmixError(f"model at {path} has an unreadable config.json ({error})", "fix or re-save it") from None
    if auto_map and not trust_remote_code and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise OpmixError(
            f"model at {path} needs its own Python code (config.json auto_map: {sorted(auto_map)}), which is not "
            "run unless you allow it",
            "review that code, then pass --trust-remote-code (or set model.trust_remote_code: true)",
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise OpmixError(
                f"model at {path} needs its own Python code",
                "review it, then pass --trust-remote-code (or set model.trust_remote_code: true)",
            ) from None
        raise OpmixError(f"model at {path} has an unreadable config.json ({error})", "fix or re-save it") from None
    has_remote_causal = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not has_remote_causal:
        raise OpmixError(
            f"model at {path} is a {config.model_type!r} model, not a causal language model",
            "give a model that AutoModelForCausalLM loads (Llama, GPT-2, Qwen2, OLMo, ...)",
        )
    _check_weight_files(path)
    return config


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")  # Trainer's
OTHER_WEIGHTS = ("*.gguf", "*.h5", "*.msgpack", "*.onnx")  # formats AutoModelForCausalLM does not load here


def _check_weight_files(path: Path) -> None:
    """safetensors weights present (all the shards its index lists); a pickle checkpoint or none: a clear error."""
    if not any(path.glob("*.safetensors")):
        found = sorted(
            p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern)
            if not any(p.match(other) for other in NOT_WEIGHTS)
        )
        if not found:
            other = sorted(p.name for pattern in OTHER_WEIGHTS for p in path.glob(pattern))
            raise OpmixError(
                f"no weight file (model.safetensors / pytorch_model.bin) in {path}"
                f"{f' (only {other}, which opmix does not load)' if other else ''}",
                "give the folder model.save_pretrained(dir) wrote, weights included (model.safetensors)",
            )
        raise OpmixError(
            f"model at {path} has no .safetensors weights (only {found}); pickle checkpoints are never loaded",
            "convert it once in a trusted environment with model.save_pretrained(dir, safe_serialization=True)",
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise OpmixError(f"model at {path} has an unreadable {index.name} ({error})", "fix or re-save it") from None
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            raise OpmixError(
                f"model at {path} lacks {len(missing)} of the {len(shards)} weight shards its {index.name} lists "
                f"({missing[:3]}{' ...' if len(missing) > 3 else ''})",
                "copy the missing shards into the folder, or save the model again",
            )
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors_header(weights)


def _check_safetensors_header(file: Path) -> None:
    """A truncated or damaged safetensors file (an interrupted copy) fails here, not after tokenization: its JSON
    header (read alone) must parse and its tensors must end within the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length <= 0 or 8 + length > size:
                raise ValueError("its header runs past the end of the file")
            header = json.loads(handle.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            raise ValueError(f"{size} bytes, its tensors need {8 + length + end}")
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise OpmixError(
            f"weight file {file} is truncated or damaged ({error})", "copy or save the model again"
        ) from None


# config.json keys of the longest sequence a model takes, first match wins: learned position tables (GPT-2's
# n_positions) index out of range past it, rotary ones run past what they were trained on
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def _text_config(config):
    """The language model's part of a config (multimodal configs nest it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _position_limit(config) -> tuple[str, int] | None:
    for key in POSITION_KEYS:
        value = getattr(_text_config(config), key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def max_positions(config) -> int | None:
    """The longest sequence the model's config allows, or None when it names no limit."""
    found = _position_limit(config)
    return found[1] if found else None


def check_sequence_length(config, seq_len: int, path: Path) -> None:
    """``data.seq_len`` past the model's position limit would fail (or silently degrade) at the first step."""
    found = _position_limit(config)
    if found is not None and seq_len > found[1]:
        key, limit = found
        key = getattr(_text_config(config), "attribute_map", {}).get(key, key)  # GPT-2 names it n_positions
        raise OpmixError(
            f"data.seq_len={seq_len} is longer than the {limit} positions the model at {path} takes "
            f"({key} in its config.json)",
            f"set data.seq_len to {limit} or less",
        )


def model_vocab_size(config) -> int | None:
    """Rows of the model's input embedding, from its config (None when it does not say)."""
    rows = getattr(_text_config(config), "vocab_size", None)
    return rows if isinstance(rows, int) and not isinstance(rows, bool) else None


def load_model(path: Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    check_causal_lm_dir(path, trust_remote_code)  # safetensors present, remote code allowed if needed
    return AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
    )


def check_vocabulary(model, tokenizer) -> None:
    """A tokenizer whose ids reach past the model's embedding table would index out of range mid-run.

    ``model`` is a model, or its embedding rows (a config's ``vocab_size``: checked before any data is read)."""
    rows = model if isinstance(model, int) else model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise OpmixError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows",
            "use the tokenizer the model was trained with (tokenizer: <model dir>)",
        )


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
