"""Repetition caps end to end (opmix.repetition): the pretraining recipe bounds the final mixture's *expanded*
domain weights by the tokens still available after the prefix, reports the epochs of the whole run, and refuses a
fixed mixture that would repeat a domain past k (exit 2) unless data.allow_repetition; the continual recipe caps
every stage the same way.

The tiny runs use a domain ``small`` of a few hundred tokens beside two demo domains of about 100k, with k = 1, so
that only ``small``'s cap can bind."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from opmix.cli import main
from opmix.config import PretrainConfig, load_config
from opmix.config.continual import ContinualConfig
from opmix.domains import OLD
from opmix.recipes import continual, continual_baselines, pretrain
from opmix.run.rundir import RunDir

SEQ, BATCH = 32, 4  # tokens per step: 128


def _small_domain(tmp_path, n_bytes: int) -> dict:
    """A one-file text domain of about ``n_bytes`` byte tokens (Python source, as the demo's code domain)."""
    text = open(pretrain.__file__, encoding="utf-8").read()
    text = (text * (1 + n_bytes // len(text)))[:n_bytes]
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return {"name": "small", "files": [str(path)]}


def _raw(tiny_pretrain_raw, tmp_path, n_bytes: int, k: float) -> dict:
    raw = tiny_pretrain_raw
    raw["domains"] = [_small_domain(tmp_path, n_bytes), *(d for d in raw["domains"] if d["name"] != "code")]
    raw["method"]["proposer"] = {"repetition_factor": k}
    raw["method"]["guard"] = {"enabled": False}  # the final continues the prefix on the proposal itself
    raw["baseline"] = "none"
    return raw


def _run(raw, out):
    cfg = load_config(None, PretrainConfig, raw=raw)
    with RunDir(out).lock() as run_dir:
        return pretrain.run(cfg, run_dir)


def _cli(raw, tmp_path, *extra) -> int:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return main(["pretrain", "--config", str(config), "--out", str(tmp_path / "run"), *extra])


@pytest.mark.slow
def test_pretrain_final_mixture_respects_the_caps_on_expanded_weights(tmp_path, tiny_pretrain_raw):
    raw = _raw(tiny_pretrain_raw, tmp_path, n_bytes=700, k=1.0)
    out = tmp_path / "run"
    summary = _run(raw, out)
    run = RunDir(out)
    domains = [d["name"] for d in raw["domains"]]
    N = summary["repetition"]["train_tokens"]
    prefix_used = run.step_info("prefix")["tokens_consumed_total"]
    final_tokens = (20 - 4) * SEQ * BATCH
    assert summary["repetition"]["factor"] == 1.0 and summary["repetition"]["final_tokens"] == final_tokens
    caps = summary["repetition"]["caps"]
    for d in domains:  # the caps count only the tokens the prefix left: (k N_d - U_d) / R_final
        assert caps[d] == pytest.approx(max(N[d] - prefix_used[d], 0) / final_tokens)
    assert caps["small"] < 0.5  # it binds: the proposer's unconstrained weights put ~1/3 on each domain
    # the expanded weight (own component plus `old`'s share) stays under the cap
    x, p = summary["components"], {d: 1 / 3 for d in domains}
    expanded = {d: x[d] + x[OLD] * p[d] for d in domains}
    assert expanded == pytest.approx(summary["mixture"])
    for d in domains:
        assert summary["mixture"][d] <= caps[d] + 1e-6
        assert prefix_used[d] + summary["mixture"][d] * final_tokens <= N[d] * (1 + 1e-6)  # planned epochs <= k
    proposal = json.loads((out / "propose" / "proposal.json").read_text())
    assert proposal["capped_weights"] == pytest.approx([summary["mixture"][d] for d in domains])
    # summary epochs: the whole run (prefix + final), all of its tokens
    assert sum(summary["tokens_consumed"].values()) == 20 * SEQ * BATCH
    for d in domains:
        assert summary["epochs"][d] == pytest.approx(summary["tokens_consumed"][d] / N[d])
        # the sampler draws each row's domain at random: within 4 binomial deviations of the planned draws
        rows = summary["mixture"][d] * final_tokens / SEQ
        slack = (4 * math.sqrt(rows) + 1) * SEQ / N[d]
        assert summary["epochs"][d] <= 1.0 + slack


def test_user_mixture_that_over_repeats_is_refused_with_exit_2(tmp_path, tiny_pretrain_raw, capsys):
    raw = _raw(tiny_pretrain_raw, tmp_path, n_bytes=700, k=1.0)
    raw["method"]["initial_mixture"] = {"small": 0.8, "prose": 0.1, "records": 0.1}
    raw["method"]["prefix_fraction"] = 0.5  # 1280 tokens, 0.8 of them from a domain of about 600
    capsys.readouterr()
    assert _cli(raw, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("opmix: error: the prefix's mixture p (method.initial_mixture) would consume 'small'")
    assert "more than the repetition factor k=1 allows; fix: " in err and "data.allow_repetition: true" in err
    assert not (tmp_path / "run").exists()


def test_over_repeating_mixture_is_accepted_with_allow_repetition(tmp_path, tiny_pretrain_raw, monkeypatch, caplog):
    raw = _raw(tiny_pretrain_raw, tmp_path, n_bytes=700, k=1.0)
    raw["method"]["initial_mixture"] = {"small": 0.8, "prose": 0.1, "records": 0.1}
    raw["method"]["prefix_fraction"] = 0.5
    raw["data"]["allow_repetition"] = True

    class Started(Exception):
        pass

    def train_full(ws, step, mixture, *args, **kwargs):
        raise Started(step, dict(mixture))

    monkeypatch.setattr(pretrain, "train_full", train_full)  # stop where training would start
    with pytest.raises(Started) as started:
        _cli(raw, tmp_path)
    assert started.value.args == ("prefix", pytest.approx(raw["method"]["initial_mixture"]))
    assert any("trained anyway: data.allow_repetition is true" in r.getMessage() for r in caplog.records)


def test_over_repeating_erm_baseline_and_safe_mixture_are_refused(tmp_path, tiny_pretrain_raw, capsys):
    raw = _raw(tiny_pretrain_raw, tmp_path, n_bytes=700, k=1.0)
    raw["baseline"] = "erm"  # uniform for all 2560 tokens: 853 from small
    capsys.readouterr()
    assert _cli(raw, tmp_path) == 2
    assert "the ERM baseline (the uniform mixture for the whole run) would consume 'small'" in capsys.readouterr().err
    raw["baseline"], raw["method"]["guard"] = "none", {"enabled": True}
    assert _cli(raw, tmp_path) == 2
    assert "the guard's safe mixture (the prior's, method.prior: default)" in capsys.readouterr().err


def test_infeasible_caps_are_refused_before_training(tmp_path, tiny_pretrain_raw, capsys):
    raw = _raw(tiny_pretrain_raw, tmp_path, n_bytes=700, k=0.005)  # 0.005 x ~200k tokens < 2048
    capsys.readouterr()
    assert _cli(raw, tmp_path) == 2
    assert "caps sum to" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.fixture
def tiny_continual_raw(tiny_pretrain_raw, tmp_path) -> dict:
    domains = [d for d in tiny_pretrain_raw["domains"] if d["name"] != "code"]
    return {
        "seed": 0, "model": {"builtin": "llama-tiny"}, "tokenizer": "builtin:bytes",
        "domains": [domains[0], _small_domain(tmp_path, 700), domains[1]],
        "data": {"seq_len": SEQ, "eval_fraction": 0.1, "max_eval_sequences": 4},
        "train": {"steps": 6, "batch_size": BATCH, "lr": 3e-3, "eval_batch_size": 8, "warmup_fraction": 0.0},
        "method": {"probe_fraction": 0.5, "lora": {"r": 4, "alpha": 8}, "guard": {"enabled": False},
                   "proposer": {"repetition_factor": 0.2}},
    }


@pytest.mark.slow
def test_continual_caps_every_stage(tmp_path, tiny_continual_raw):
    """Stage 2 adds ``small`` (about 600 tokens; k = 0.2 leaves it ~120 of the stage's 768): its weight is capped;
    stage 3's caps count what stages 1 and 2 consumed."""
    cfg = load_config(None, ContinualConfig, raw=tiny_continual_raw)
    out = tmp_path / "run"
    with RunDir(out).lock() as run_dir:
        summary = continual.run(cfg, run_dir)
    run, R = RunDir(out), 6 * SEQ * BATCH
    N = summary["repetition"]["train_tokens"]
    assert summary["repetition"]["factor"] == 0.2
    for k, stage in enumerate(summary["stages"][1:], start=2):
        used = run.step_info(f"s{k - 1}_train")["tokens_consumed_total"]  # stages 1..k-1, cumulative
        caps = stage["caps"]
        assert set(caps) == set(stage["mixture"])
        for d, w in stage["mixture"].items():
            assert caps[d] == pytest.approx(max(0.2 * N[d] - used.get(d, 0), 0) / R)
            assert w <= caps[d] + 1e-6
            assert w * R <= max(0.2 * N[d] - used.get(d, 0), 0) + 1e-6 * R  # no more than what is left
    stage2 = summary["stages"][1]
    assert stage2["caps"]["small"] < 0.5 and stage2["mixture"]["small"] == pytest.approx(stage2["caps"]["small"],
                                                                                          abs=1e-4)


def test_continual_stage_one_past_k_is_refused(tmp_path, tiny_continual_raw, capsys):
    raw = tiny_continual_raw
    raw["domains"] = [raw["domains"][1], raw["domains"][0], raw["domains"][2]]  # small first: 768 tokens of it
    raw["method"]["proposer"] = {"repetition_factor": 1.0}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["continual", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "stage 1 (100% of the first domain for a whole stage) would consume 'small'" in err


def test_continual_baseline_past_k_is_refused(tmp_path, tiny_continual_raw, capsys, monkeypatch):
    raw = tiny_continual_raw
    raw["method"]["proposer"] = {"repetition_factor": 1.0}
    raw["run"] = "sequential"  # stage 2: 100% small, 768 tokens of about 600
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["continual", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "stage 2 of the sequential baseline would consume 'small'" in capsys.readouterr().err
    raw["data"]["allow_repetition"] = True
    config.write_text(yaml.safe_dump(raw))

    class Started(Exception):
        pass

    def train_full(ws, step, mixture, *args, **kwargs):
        raise Started(step)

    monkeypatch.setattr(continual_baselines, "train_full", train_full)  # stop where training would start
    with pytest.raises(Started):
        main(["continual", "--config", str(config), "--out", str(tmp_path / "run2")])
