"""The swarm and MergeMix pretraining baselines (SPEC section 4) on the tiny config: results, compute, resume."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from opmix.config import PretrainConfig, load_config
from opmix.recipes import pretrain
from opmix.recipes.pretrain_baselines import average_state_dicts, swarm_mixtures
from opmix.report import format_summary
from opmix.run.rundir import RunDir

pytestmark = pytest.mark.slow

K = 4  # m + 1 for the 3 demo domains: the fewest the swarm's laws allow


def _run(raw, out):
    cfg = load_config(None, PretrainConfig, raw=raw)
    run_dir = RunDir(out)
    with run_dir.lock():
        return pretrain.run(cfg, run_dir)


def _markers(out):
    return {p.stem: p.read_bytes() for p in (out / "steps").glob("*.json")}


def test_swarm_mixtures_are_seeded_and_centred_on_the_prior():
    prior = {"a": 0.5, "b": 0.3, "c": 0.2}
    X = swarm_mixtures(prior, 4, 1.0, seed=3)
    assert X.shape == (4, 3) and np.allclose(X.sum(axis=1), 1) and (X >= 0).all()
    assert np.array_equal(X, swarm_mixtures(prior, 4, 1.0, seed=3))
    assert not np.array_equal(X, swarm_mixtures(prior, 4, 1.0, seed=4))
    many = swarm_mixtures(prior, 20000, 1.0, seed=0)
    assert many.mean(axis=0) == pytest.approx([0.5, 0.3, 0.2], abs=0.01)
    tight = swarm_mixtures(prior, 2000, 50.0, seed=0)  # a larger concentration stays closer to the prior
    assert tight.std(axis=0).max() < many.std(axis=0).min()


def test_average_state_dicts_is_the_explicit_average():
    from opmix.model import builtin_model

    a, b = (builtin_model("llama-tiny", vocab_size=300, seed=s, max_positions=32) for s in (1, 2))
    sa, sb = a.state_dict(), b.state_dict()
    averaged = average_state_dicts([sa, sb], [0.25, 0.75])
    assert set(averaged) == set(sa)
    differing = 0
    for key, value in averaged.items():
        expected = 0.25 * sa[key].float() + 0.75 * sb[key].float()
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        differing += not torch.equal(sa[key], sb[key])
    assert differing > 0  # two different models, so the test compares real averages
    model = builtin_model("llama-tiny", vocab_size=300, seed=3, max_positions=32)
    model.load_state_dict(averaged)  # loadable as is
    assert torch.equal(model.state_dict()[next(iter(sa))], averaged[next(iter(sa))].to(sa[next(iter(sa))].dtype))


def test_swarm_and_mergemix_end_to_end_and_resume(tmp_path, tiny_pretrain_raw):
    raw = {**tiny_pretrain_raw, "baseline": "swarm,mergemix", "swarm": {"k": K, "fraction": 0.2}}
    out = tmp_path / "run"
    summary = _run(raw, out)
    domains = [d["name"] for d in raw["domains"]]
    cfg = load_config(None, PretrainConfig, raw=raw)
    run = RunDir(out)

    assert set(summary["baselines"]) == {"swarm", "mergemix"}
    for b in summary["baselines"].values():
        assert set(b["mixture"]) == set(domains) and sum(b["mixture"].values()) == pytest.approx(1.0)
        assert min(b["mixture"].values()) >= 0
        assert all(math.isfinite(v) and 0 < v < 10 for v in b["eval_loss"].values())
        assert b["flops"]["total"] == pytest.approx(sum(v for k, v in b["flops"].items() if k != "total"))
        assert b["flops"]["final"] > 0 and b["elapsed_s"] > 0

    # swarm: K models from scratch for 20% of S, on seeded mixtures; its search is counted and reported
    swarm_steps = sorted(p.stem for p in (out / "steps").glob("swarm_*.json")
                         if p.stem[len("swarm_"):].isdigit())
    assert swarm_steps == [f"swarm_{i}" for i in range(K)]
    prior = {d: 1 / len(domains) for d in domains}  # the default prior's domain mixture with a uniform p
    X = swarm_mixtures(prior, K, 1.0, seed=0)
    for i, step in enumerate(swarm_steps):
        info = run.step_info(step)
        assert info["end_step"] == cfg.swarm_steps == 4
        assert info["tokens"] == 4 * raw["train"]["batch_size"] * raw["data"]["seq_len"]  # from step 0: scratch
        assert [info["mixture"][d] for d in domains] == pytest.approx(X[i].tolist())
        assert set(info["eval_loss"]) == set(domains)
    final = run.step_info("swarm_final")
    assert final["end_step"] == 20 and final["tokens"] == 20 * 4 * 32  # the full budget, from scratch
    swarm = summary["baselines"]["swarm"]
    assert swarm["flops"]["swarm_search"] > 0 and swarm["flops"]["prefix"] == 0
    assert swarm["flops"]["total"] == pytest.approx(swarm["flops"]["swarm_search"] + swarm["flops"]["final"])
    assert (out / "swarm_propose" / "proposal.json").is_file()
    assert "swarm_search" not in summary["flops"] and "mergemix_search" not in summary["flops"]  # not OP-Mix's

    # mergemix: one full model per component from the prefix, proxies from their weight averages
    components = ["old", *domains]
    for c in components:
        info = run.step_info(f"mergemix_{c}")
        assert info["end_step"] == cfg.prefix_steps + cfg.probe_steps
        assert info["tokens"] == cfg.probe_steps * 4 * 32  # continues the prefix checkpoint
    rows = (out / "mergemix" / "proxies.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + raw["method"]["n_proxies"]
    mergemix = summary["baselines"]["mergemix"]
    assert mergemix["flops"]["mergemix_search"] > 0 and mergemix["flops"]["prefix"] == summary["flops"]["prefix"]
    assert run.step_info("mergemix_final")["end_step"] == 20

    printed = format_summary(summary)
    assert "Swarm" in printed and "MergeMix" in printed and "of which search" in printed

    # re-running the same config redoes nothing
    markers = _markers(out)
    again = _run(raw, out)
    assert _markers(out) == markers
    assert again["baselines"]["swarm"]["eval_loss"] == swarm["eval_loss"]

    # an interrupted swarm resumes: only the lost proxy model (and what follows it) is redone
    last = f"swarm_{K - 1}"
    (out / "steps" / f"{last}.json").unlink()
    shutil.rmtree(out / last / "checkpoint")
    resumed = _run(raw, out)
    after = _markers(out)
    assert (out / "steps" / f"{last}.json").is_file()
    assert all(after[s] == markers[s] for s in markers if s != last and s != "export_final_model")
    assert resumed["baselines"]["swarm"]["mixture"] == pytest.approx(swarm["mixture"])
