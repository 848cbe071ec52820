"""Each bad input gives one line naming the problem and the fix, exit code 2, and leaves no run directory."""

from __future__ import annotations

import copy

import pytest
import yaml

from opmix.cli import main


def _case_missing_file(raw, tmp):
    raw["domains"][0]["files"] = [str(tmp / "nope.txt")]


def _case_empty_domain(raw, tmp):
    (tmp / "empty.txt").write_text("")
    raw["domains"][0]["files"] = [str(tmp / "empty.txt")]


def _case_unknown_domain_in_weights(raw, tmp):
    raw["method"]["initial_mixture"] = {"nonexistent": 1.0}


def _case_negative_weight(raw, tmp):
    raw["method"]["initial_mixture"] = {d["name"]: -1.0 for d in raw["domains"]}


def _case_all_zero_weights(raw, tmp):
    raw["method"]["initial_mixture"] = {d["name"]: 0.0 for d in raw["domains"]}


def _case_unknown_config_key(raw, tmp):
    raw["train"]["learning_rate"] = 0.1


def _case_not_a_causal_lm(raw, tmp):
    from transformers import (
        DistilBertConfig,  # an encoder with no causal-LM head in transformers
    )

    DistilBertConfig(vocab_size=300, dim=16, n_layers=1, n_heads=2, hidden_dim=32).save_pretrained(tmp / "enc")
    raw["model"] = {"path": str(tmp / "enc")}
    raw["tokenizer"] = "builtin:bytes"


def _case_bad_jsonl_line(raw, tmp):
    (tmp / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    raw["domains"][0]["files"] = [str(tmp / "bad.jsonl")]


def _case_unknown_baseline(raw, tmp):
    raw["baseline"] = "erm,swarmz"


def _case_swarm_too_small(raw, tmp):
    raw["baseline"] = "swarm"
    raw["swarm"] = {"k": len(raw["domains"])}  # m proxy models for laws of m + 1 parameters


def _case_guard_fraction_out_of_range(raw, tmp):
    raw["method"]["guard"] = {"check_fraction": 0.9}


CASES = {
    "missing file": (_case_missing_file, "does not exist"),
    "empty domain": (_case_empty_domain, "empty|no tokens|no documents"),
    "unknown domain in weights": (_case_unknown_domain_in_weights, "unknown domain"),
    "negative weights": (_case_negative_weight, "negative"),
    "all-zero weights": (_case_all_zero_weights, "all weights are zero"),
    "unknown config key": (_case_unknown_config_key, "unknown config key 'train.learning_rate'"),
    "model path not a causal LM": (_case_not_a_causal_lm, "not a causal language model"),
    "bad JSONL line": (_case_bad_jsonl_line, r"bad\.jsonl.*line 2"),
    "unknown baseline": (_case_unknown_baseline, r"unknown baseline.*swarmz"),
    "guard check fraction out of range": (_case_guard_fraction_out_of_range, "check_fraction"),
    "swarm K below m+1": (_case_swarm_too_small, r"swarm\.k=3.*fix: raise swarm\.k to at least 4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case, tmp_path, tiny_pretrain_raw, capsys):
    mutate, pattern = CASES[case]
    raw = copy.deepcopy(tiny_pretrain_raw)
    mutate(raw, tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"

    code = main(["pretrain", "--config", str(config), "--out", str(out)])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err  # the run's header line, then the error
    err = err.splitlines()[-1]
    assert err.startswith("opmix: error: ") and "fix:" in err
    import re

    assert re.search(pattern, err), err
    assert not out.exists()  # nothing finished: no partial run left behind


def test_missing_config_file(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_needs_a_run_with_a_proposal(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["check", str(tmp_path / "run")]) == 2
    assert "not an opmix pretraining run directory" in capsys.readouterr().err
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    assert main(["check", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no proxies or proposal yet" in err and "fix:" in err and len(err.splitlines()) == 1
