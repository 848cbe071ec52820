"""LoRA probes: target discovery by type, PEFT wrapping, and the save/load round trip (factors, scaling, layout)."""

import json
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from opmix.errors import OpmixError
from opmix.probes import (
    ProbeDelta,
    load_probe,
    lora_parameter_count,
    lora_targets,
    make_probe,
    save_probe,
)

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2)


def tiny(arch: str):
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()
    config = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def perturb(peft_model, seed: int) -> None:
    """Random A and B (B starts at zero, which would make every delta vanish)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


LLAMA_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_targets_llama_like(arch):
    targets = lora_targets(tiny(arch))
    assert targets == sorted(targets)
    assert len(targets) == 2 * len(LLAMA_LEAVES)
    assert {t.rsplit(".", 1)[1] for t in targets} == LLAMA_LEAVES
    assert all(t.startswith("model.layers.") for t in targets)  # no lm_head, no embed_tokens


def test_targets_gpt2_conv1d():
    targets = lora_targets(tiny("gpt2"))
    assert targets == sorted(f"transformer.h.{i}.{leaf}" for i in range(2)
                             for leaf in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_make_probe_only_lora_trainable(arch):
    model = tiny(arch)
    expected = lora_parameter_count(model, r=4)  # plain model: what a probe would add
    peft_model = make_probe(model, r=4, alpha=8, dropout=0.05)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == expected == lora_parameter_count(peft_model)
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.05)
    assert config.fan_in_fan_out == (arch == "gpt2")


def test_make_probe_seeded_without_touching_global_rng():
    first, second = tiny("llama"), tiny("llama")
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = make_probe(first, r=4, seed=7)
    assert torch.equal(torch.rand(4), expected)  # the global RNG did not advance
    b = make_probe(second, r=4, seed=7)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], make_probe(tiny("llama"), r=4, seed=8).state_dict()[key])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_load_roundtrip_matches_peft(arch, tmp_path):
    model = tiny(arch)
    targets = lora_targets(model)
    peft_model = make_probe(model, r=4, alpha=8)
    perturb(peft_model, seed=1)
    save_probe(peft_model, tmp_path / "probe")
    probe = load_probe(tmp_path / "probe")
    assert sorted(probe.factors) == targets  # base-model naming, no PEFT prefixes
    assert lora_parameter_count(probe) == lora_parameter_count(peft_model)
    base = peft_model.get_base_model()
    for name in targets:
        layer = base.get_submodule(name)
        lora_a, lora_b, scaling = probe.factors[name]
        assert torch.equal(lora_a, layer.lora_A["default"].weight)
        assert torch.equal(lora_b, layer.lora_B["default"].weight)
        assert scaling == layer.scaling["default"] == 2.0
        # PEFT's own delta is in the base weight's layout: (in, out) for Conv1D
        peft_delta = layer.get_delta_weight("default")
        assert probe.delta(name).shape == layer.get_base_layer().weight.shape
        torch.testing.assert_close(probe.delta(name), peft_delta, rtol=0, atol=1e-6)
    assert (probe.fan_in_fan_out == frozenset(targets)) == (arch == "gpt2")


def test_save_is_atomic_overwrite(tmp_path):
    first = make_probe(tiny("llama"), r=2)
    save_probe(first, tmp_path / "p")
    second = make_probe(tiny("llama"), r=4)
    perturb(second, seed=3)
    save_probe(second, tmp_path / "p")
    assert os.listdir(tmp_path) == ["p"]  # no temporary directories left behind
    lora_a, _, _ = next(iter(load_probe(tmp_path / "p").factors.values()))
    assert lora_a.shape[0] == 4


def test_load_honours_rslora_and_alpha_pattern(tmp_path):
    model = tiny("llama")
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, alpha_pattern={"q_proj": 2}, rank_pattern={"v_proj": 2},
                        target_modules=lora_targets(model), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    save_probe(peft_model, tmp_path / "p")
    probe = load_probe(tmp_path / "p")
    for name, (lora_a, _, scaling) in probe.factors.items():
        layer = peft_model.get_base_model().get_submodule(name)
        assert scaling == pytest.approx(layer.scaling["default"])
        assert lora_a.shape[0] == layer.r["default"]
    assert probe.factors["model.layers.0.self_attn.q_proj"][2] == pytest.approx(2 / 2)  # alpha 2 / sqrt(4)


def test_load_rejects_non_delta_adapters(tmp_path):
    with pytest.raises(OpmixError, match="not a saved probe"):
        load_probe(tmp_path / "missing")
    save_probe(make_probe(tiny("llama"), r=2), tmp_path / "p")
    config_path = tmp_path / "p" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(OpmixError, match="use_dora"):
        load_probe(tmp_path / "p")


def test_delta_unknown_module():
    probe = ProbeDelta(factors={"a": (torch.ones(1, 2), torch.ones(3, 1), 2.0)})
    assert torch.equal(probe.delta("a"), torch.full((3, 2), 2.0))
    with pytest.raises(KeyError):
        probe.delta("b")
