"""Nothing unsafe is loaded: weights only from safetensors, a model's own code only with an explicit flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import opmix
from opmix.errors import OpmixError
from opmix.model import check_causal_lm_dir, load_model

BOOBY_TRAP = "raise SystemExit('remote code ran')\n"  # any import of the model's own code fails loudly


def _llama(folder: Path, weights: str = "safetensors") -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    if weights == "safetensors":
        LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    else:
        config.save_pretrained(folder)
        (folder / "pytorch_model.bin").write_bytes(b"a pickle that must never be opened")
    return folder


def _with_auto_map(folder: Path, model_type: str | None = None) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling.Config", "AutoModelForCausalLM": "modeling.Model"}
    if model_type is not None:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling.py").write_text(BOOBY_TRAP)
    return folder


def test_source_never_unpickles():
    """``torch.load`` only with ``weights_only=True``, ``np.load`` never with pickles, no pickle module."""
    for path in Path(opmix.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"allow_pickle\s*=\s*True", text), path
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), path


def test_model_with_only_a_pickle_checkpoint_is_refused(tmp_path):
    folder = _llama(tmp_path / "model", weights="bin")
    with pytest.raises(OpmixError, match=r"no \.safetensors weights \(only \['pytorch_model\.bin'\]\)"):
        load_model(folder)


def test_remote_code_is_refused_without_the_flag(tmp_path):
    folder = _with_auto_map(_llama(tmp_path / "model"), model_type="my_custom_lm")
    with pytest.raises(OpmixError, match="needs its own Python code.*--trust-remote-code"):
        check_causal_lm_dir(folder)
    with pytest.raises(OpmixError, match="needs its own Python code"):
        load_model(folder)


def test_a_known_architecture_loads_without_running_its_bundled_code(tmp_path):
    """auto_map next to a model type transformers knows: the built-in class is used, modeling.py never runs."""
    model = load_model(_with_auto_map(_llama(tmp_path / "model")))
    assert type(model).__name__ == "LlamaForCausalLM"


def test_cli_flag_sets_trust_remote_code(tmp_path, monkeypatch, tiny_pretrain_raw):
    import yaml

    from opmix import cli

    seen = {}
    monkeypatch.setattr(cli, "_run_pretrain", lambda cfg, out: seen.setdefault("cfg", cfg) and 0)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain_raw))
    cli.main(["pretrain", "--config", str(config), "--out", str(tmp_path / "o")])
    assert seen.pop("cfg").model.trust_remote_code is False  # off unless asked for
    cli.main(["pretrain", "--config", str(config), "--out", str(tmp_path / "o"), "--trust-remote-code"])
    assert seen["cfg"].model.trust_remote_code is True
