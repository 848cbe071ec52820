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
    """A Llama-style model from ``BUILTIN_CONFIGS``, initialised with its own seeded RNG (global RNG untouched)."""
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
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin")) or sorted(p.name for p in path.glob("*.pt"))
        raise OpmixError(
            f"model at {path} has no .safetensors weights{f' (only {found})' if found else ''}; pickle checkpoints "
            "are never loaded",
            "convert it once in a trusted environment with model.save_pretrained(dir, safe_serialization=True)",
        )
    return config


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
