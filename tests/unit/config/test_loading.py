import pytest

from opmix.config import PretrainConfig, load_config
from opmix.errors import OpmixError


def _raw(**extra):
    raw = {
        "model": {"builtin": "llama-tiny"},
        "tokenizer": "builtin:bytes",
        "domains": [{"name": "a", "files": ["a.txt"]}, {"name": "b", "files": ["b.txt"]}],
    }
    raw.update(extra)
    return raw


def test_defaults_are_spec_defaults(tmp_path):
    cfg = load_config(None, PretrainConfig, raw=_raw())
    assert (cfg.method.lora.r, cfg.method.lora.alpha, cfg.method.lora.dropout) == (16, 32.0, 0.05)
    assert cfg.method.n_proxies == 12 and cfg.method.proposer.kl_weight == 0.05
    assert cfg.method.prefix_fraction == 0.2 and cfg.method.probe_fraction == 0.1
    assert cfg.method.probe_lr_multiplier == 2.0 and cfg.train.final_lr_ratio == 0.1


def test_overrides_and_relative_paths(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {builtin: llama-tiny}\ntokenizer: builtin:bytes\n"
                      "domains: [{name: a, files: [a.txt]}, {name: b, files: [b]}]\n")
    cfg = load_config(config, PretrainConfig, ["train.steps=50", "domains.1.name=c"])
    assert cfg.train.steps == 50 and cfg.domains[1].name == "c"
    assert cfg.domains[0].files[0] == tmp_path / "a.txt"


def test_initial_mixture_is_stored_normalised(tmp_path):
    # the saved config.yaml is cfg.model_dump(): it must hold the mixture the prefix trains on, not the raw weights
    cfg = load_config(None, PretrainConfig, raw=_raw(method={"initial_mixture": {"a": 3, "b": 1}}))
    assert cfg.method.initial_mixture == pytest.approx({"a": 0.75, "b": 0.25})
    assert cfg.model_dump(mode="json")["method"]["initial_mixture"] == pytest.approx({"a": 0.75, "b": 0.25})
    again = load_config(None, PretrainConfig, raw=cfg.model_dump(mode="json"))  # a resume reads it back unchanged
    assert again.method.initial_mixture == cfg.method.initial_mixture


@pytest.mark.parametrize("weights, match", [
    ({"a": -1.0, "b": 2.0}, "negative"),
    ({"a": 0.0, "b": 0.0}, "all weights are zero"),
    ({"a": float("nan"), "b": 1.0}, "weight of 'a' is nan"),
])
def test_initial_mixture_that_cannot_be_normalised_is_an_error(weights, match):
    with pytest.raises(OpmixError, match=match):
        load_config(None, PretrainConfig, raw=_raw(method={"initial_mixture": weights}))


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(OpmixError, match=r"unknown config key 'train.stpes'.*did you mean 'train.steps'"):
        load_config(None, PretrainConfig, raw=_raw(train={"stpes": 3}))


@pytest.mark.parametrize("raw, match", [
    (_raw(domains=[{"name": "a", "files": ["x"]}, {"name": "a", "files": ["y"]}]), "duplicate domain"),
    (_raw(method={"initial_mixture": {"zzz": 1.0}}), "unknown domain"),
    (_raw(method={"n_proxies": 4}), r"n_proxies=4 cannot overdetermine the laws.*3 components has 4 parameters.*"
                                     r"fix: raise method.n_proxies to 8 or more \(the minimum is 5\)"),
    (_raw(model={}), "exactly one of model.path"),
    (_raw(train={"steps": 2}), "prefix steps"),
    (_raw(train={"steps": 3}), "0 probe steps"),
])
def test_invalid_configs_are_one_line_errors(raw, match):
    with pytest.raises(OpmixError, match=match) as error:
        load_config(None, PretrainConfig, raw=raw)
    assert "\n" not in str(error.value)


def test_config_is_frozen():
    cfg = load_config(None, PretrainConfig, raw=_raw())
    with pytest.raises(Exception):
        cfg.seed = 3
