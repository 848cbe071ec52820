"""Models: a local Hugging Face causal LM (any architecture AutoModelForCausalLM knows), or a built-in config.

Loading is safe by default: weights only from safetensors, the model's own Python code only with
``trust_remote_code=True``.
"""

from __future__ import annotations

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
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise OpmixError(
                f"model at {path} needs its own Python code", "review it, then set model.trust_remote_code=true"
            ) from None
        raise OpmixError(f"model at {path} has an unreadable config.json ({error})", "fix or re-save it") from None
    has_remote_causal = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not has_remote_causal:
        raise OpmixError(
            f"model at {path} is a {config.model_type!r} model, not a causal language model",
            "give a model that AutoModelForCausalLM loads (Llama, GPT-2, Qwen2, OLMo, ...)",
        )
    return config


def load_model(path: Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    check_causal_lm_dir(path, trust_remote_code)
    if not any(Path(path).glob("*.safetensors")):
        raise OpmixError(
            f"model at {path} has no .safetensors weights (pickle checkpoints are not loaded)",
            "convert it with model.save_pretrained(dir, safe_serialization=True)",
        )
    return AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
    )


def check_vocabulary(model, tokenizer) -> None:
    """A tokenizer whose ids reach past the model's embedding table would index out of range mid-run."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise OpmixError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows",
            "use the tokenizer the model was trained with (tokenizer: <model dir>)",
        )


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
