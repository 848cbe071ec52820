"""ProxyModel: theta_0 + sum_c x_c * Delta_c, checked against PEFT itself and against an explicitly merged copy."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from opmix.errors import OpmixError
from opmix.probes import ProbeDelta, ProxyModel, load_probe, make_probe, save_probe

N_PROBES = 3


def tiny(arch: str, hidden: int = 16):
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).eval()
    config = GPT2Config(vocab_size=64, n_embd=hidden, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits  # (B, T, V)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, tmp_path_factory):
    """A base model, 3 saved-and-reloaded probes with random (non-zero) A and B, and each PeftModel's logits."""
    model = tiny(request.param)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, T)
    probes, peft_logits = [], []
    for c in range(N_PROBES):
        peft_model = make_probe(model, r=4, alpha=8, seed=c)
        gen = torch.Generator().manual_seed(100 + c)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        peft_model.eval()  # dropout off
        peft_logits.append(logits(peft_model, ids))
        directory = tmp_path_factory.mktemp("probe") / "p"
        save_probe(peft_model, directory)
        probes.append(load_probe(directory))
        model = peft_model.unload()  # the base model again, for the next probe
    return model, probes, ids, peft_logits


def merged_copy(model, probes, x):
    """The reference: a deep copy of the base with sum_c x_c * Delta_c added to its weights."""
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for probe, weight in zip(probes, x):
            for name in probe.factors:
                merged.get_submodule(name).weight += weight * probe.delta(name)
    return merged


def test_one_hot_proxy_equals_its_probe(setup):
    model, probes, ids, peft_logits = setup
    base_logits = logits(model, ids)
    with ProxyModel(model, probes) as proxy:
        for c in range(N_PROBES):
            proxy.set_weights([1.0 if i == c else 0.0 for i in range(N_PROBES)])
            got = logits(model, ids)
            torch.testing.assert_close(got, peft_logits[c], rtol=0, atol=1e-5)
            assert (got - base_logits).abs().max() > 1e-3  # the probe really changes the model


@pytest.mark.parametrize("x", [[0.3, 0.5, 0.2], [1.5, -0.7, 0.25]])
def test_proxy_equals_merged_model(setup, x):
    model, probes, ids, _ = setup
    expected = logits(merged_copy(model, probes, x), ids)
    proxy = ProxyModel(model, probes)
    proxy.set_weights(x)
    with torch.no_grad():
        got = proxy(input_ids=ids).logits  # __call__ attaches for the call only
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not proxy.attached
    # loss path too, as the evaluator uses it
    with proxy, torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(loss, merged_copy(model, probes, x)(input_ids=ids, labels=ids).loss, rtol=0, atol=1e-5)


def test_zero_weights_and_detach_are_bit_exact(setup):
    model, probes, ids, _ = setup
    params_before = {n: p for n, p in model.named_parameters()}
    values_before = {n: p.detach().clone() for n, p in params_before.items()}
    base_logits = logits(model, ids)
    merged_logits = logits(merged_copy(model, probes, [0.4, 0.4, 0.2]), ids)
    proxy = ProxyModel(model, probes)
    with proxy:
        assert torch.equal(logits(model, ids), base_logits)  # x = 0 (the default) is the base model exactly
        proxy.set_weights([0.4, 0.4, 0.2])
        assert not torch.equal(logits(model, ids), base_logits)
        proxy.set_weights([0, 0, 0])
        assert torch.equal(logits(model, ids), base_logits)
        proxy.set_weights([0.4, 0.4, 0.2])
    assert torch.equal(logits(model, ids), base_logits)
    after = dict(model.named_parameters())
    assert after.keys() == params_before.keys()
    assert all(after[n] is params_before[n] and torch.equal(after[n], values_before[n]) for n in after)
    assert proxy.weights == (0.4, 0.4, 0.2)  # weights survive detach; re-attaching reproduces the proxy
    with proxy:
        torch.testing.assert_close(logits(model, ids), merged_logits, rtol=0, atol=1e-5)


def test_bf16_base_gets_float32_merge_rounded_once(setup):
    model, probes, _, _ = setup
    model16 = copy.deepcopy(model).to(torch.bfloat16)
    name = next(iter(probes[0].factors))
    x = [0.3, 0.5, 0.2]
    expected = (model16.get_submodule(name).weight.float() + sum(w * p.delta(name) for w, p in zip(x, probes)))
    proxy = ProxyModel(model16, probes)
    proxy.set_weights(x)
    with proxy:
        got = model16.get_submodule(name).weight
        assert got.dtype == torch.bfloat16
        # same float32 sum up to float32 rounding, then one rounding to bf16: at most one bf16 ulp apart
        torch.testing.assert_close(got.float(), expected.to(torch.bfloat16).float(), rtol=2 ** -7, atol=1e-6)


def test_errors_are_clear(setup):
    model, probes, _, _ = setup
    name, (lora_a, lora_b, scaling) = next(iter(probes[0].factors.items()))
    with pytest.raises(OpmixError, match="does not have"):
        ProxyModel(model, [ProbeDelta(factors={"model.nope": (lora_a, lora_b, scaling)})])
    with pytest.raises(OpmixError, match="needs A"):
        ProxyModel(model, [ProbeDelta(factors={name: (lora_a[:, :-1], lora_b, scaling)})])
    with pytest.raises(OpmixError, match="needs A"):
        ProxyModel(model, [ProbeDelta(factors={name: (lora_a, lora_b[:-1], scaling)})])
    with pytest.raises(OpmixError, match="at least one probe"):
        ProxyModel(model, [])
    proxy = ProxyModel(model, probes)
    with pytest.raises(OpmixError, match="3 probes"):
        proxy.set_weights([0.5, 0.5])
    with pytest.raises(OpmixError, match="finite"):
        proxy.set_weights([float("nan"), 0, 0])
    with proxy:
        with pytest.raises(RuntimeError, match="already"):
            ProxyModel(model, probes).attach()
    assert not proxy.attached


def test_probe_from_other_model_rejected(setup):
    model, probes, _, _ = setup
    arch = "gpt2" if hasattr(model, "transformer") else "llama"
    with pytest.raises(OpmixError, match="needs A"):
        ProxyModel(tiny(arch, hidden=32), probes)
