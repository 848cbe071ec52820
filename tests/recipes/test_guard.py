"""The guard (SPEC section 8) with real short runs: it fires where the simulator is known to mis-rank, keeps a
proposal the real runs confirm, continues the winning run (no step trained twice), and `opmix check`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from opmix.cli import main
from opmix.config import PretrainConfig, load_config
from opmix.config.base import GuardConfig
from opmix.domains import uniform
from opmix.guard import PROPOSAL, SAFE, guard_proposal
from opmix.recipes import pretrain
from opmix.run.rundir import RunDir
from opmix.stages import train_full
from opmix.train.schedule import WSDSchedule
from opmix.workspace import open_workspace

pytestmark = pytest.mark.slow

STEPS, PREFIX = 40, 8


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory, tiny_pretrain_base):
    """A workspace on the tiny demo domains and a prefix checkpoint to branch from."""
    raw = {**tiny_pretrain_base, "train": {**tiny_pretrain_base["train"], "steps": STEPS},
           "method": {**tiny_pretrain_base["method"], "n_proxies": 10}}
    cfg = load_config(None, PretrainConfig, raw=raw)
    run = RunDir(tmp_path_factory.mktemp("guard") / "run")
    ws = open_workspace(run, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed)
    schedule = WSDSchedule.from_fractions(STEPS, 0.02, 0.2, 0.1)
    prefix = train_full(ws, "prefix", uniform(ws.domain_names), schedule, end_step=PREFIX)
    return ws, schedule, prefix


def _guard(prefix_run, tag, proposal, safe, predicted, margin=0.01, favours=False):
    ws, schedule, prefix = prefix_run
    return guard_proposal(ws, tag, prefix, proposal, safe, schedule, PREFIX, STEPS, ws.domain_names,
                          predicted=predicted, law_warnings=[],
                          settings=GuardConfig(check_fraction=0.5, min_distance=0.05, margin=margin),
                          check_favours_proposal=favours)


def test_guard_fires_where_the_simulator_misranks_and_keeps_a_right_proposal(prefix_run):
    ws = prefix_run[0]
    one_domain = {d: (0.96 if d == "records" else 0.02) for d in ws.domain_names}  # starves two of three domains
    even = uniform(ws.domain_names)

    # the simulator says the one-domain mixture is better; real training says the opposite
    wrong = _guard(prefix_run, "a_", one_domain, even, {PROPOSAL: 1.0, SAFE: 1.1})
    assert wrong.record["checked"] and wrong.record["fired"] and wrong.record["chosen"] == SAFE
    assert wrong.record["proxies_agree"] is False
    assert wrong.mixture == even and wrong.start_from == ws.run.path("a_guard_safe", "checkpoint")
    assert wrong.record["real"][SAFE] < wrong.record["real"][PROPOSAL]
    assert len(wrong.warnings) == 1 and "guard fired" in wrong.warnings[0]
    # a gap inside the margin is not evidence against the proposal (the same two runs, reused)
    gap = wrong.record["relative_gap"]
    tolerant = _guard(prefix_run, "a_", one_domain, even, {PROPOSAL: 1.0, SAFE: 1.1}, margin=gap * 1.01)
    assert tolerant.record["checked"] and not tolerant.record["fired"] and tolerant.mixture == one_domain
    assert tolerant.record["real"] == wrong.record["real"] and "within the" in tolerant.record["reason"]

    # the simulator ranks right: the proposal (here the even mixture) beats the safe one (here one domain)
    right = _guard(prefix_run, "b_", even, one_domain, {PROPOSAL: 1.0, SAFE: 1.1})
    assert right.record["checked"] and not right.record["fired"] and right.record["proxies_agree"] is True
    assert right.mixture == even and right.start_from == ws.run.path("b_guard_proposal", "checkpoint")
    assert right.warnings == []
    # the same real run (same start, same mixture, same data stream) gives the same loss under either name
    assert right.record["real"][PROPOSAL] == wrong.record["real"][SAFE]

    # when a check this short is known to favour the proposal, not losing is not enough: it must win by the margin
    win = -right.record["relative_gap"]
    assert win > 0
    strict = _guard(prefix_run, "b_", even, one_domain, None, margin=win * 1.01, favours=True)
    assert strict.record["fired"] and strict.mixture == one_domain and "must win" in strict.record["reason"]
    clear = _guard(prefix_run, "b_", even, one_domain, None, margin=win * 0.99, favours=True)
    assert not clear.record["fired"] and clear.mixture == even


def test_guard_keeps_the_safe_mixture_when_the_proposal_is_too_close_to_matter(prefix_run):
    ws = prefix_run[0]
    even = uniform(ws.domain_names)
    near = {d: w + (0.01 if i == 0 else -0.005) for i, (d, w) in enumerate(even.items())}
    outcome = _guard(prefix_run, "c_", near, even, None)
    assert not outcome.record["checked"] and outcome.start_from == prefix_run[2]
    assert outcome.mixture == even and outcome.record["chosen"] == SAFE  # too close to matter: the safe one
    assert not ws.run.path("c_guard_proposal").exists()


def test_recipe_falls_back_and_final_is_the_erm_run(tmp_path, tiny_pretrain_raw, monkeypatch):
    """Proxies built from *negated* probe deltas rank every mixture backwards. Whatever the laws then propose,
    the run ends on the better of the two real runs, and when that is the safe (uniform) mixture the final
    training is exactly the ERM run: the same losses, nothing trained twice."""
    from opmix.probes.proxy import ProxyModel

    real = ProxyModel.set_weights
    monkeypatch.setattr(ProxyModel, "set_weights", lambda self, weights: real(self, [-w for w in weights]))
    raw = {**tiny_pretrain_raw, "train": {**tiny_pretrain_raw["train"], "steps": STEPS},
           "method": {**tiny_pretrain_raw["method"], "n_proxies": 10,
                      "guard": {"check_fraction": 0.5, "min_distance": 0.0}},
           "baseline": "erm,natural"}
    cfg = load_config(None, PretrainConfig, raw=raw)
    out = tmp_path / "run"
    run_dir = RunDir(out)
    with run_dir.lock():
        summary = pretrain.run(cfg, run_dir)
    guard = summary["guard"]
    assert guard["checked"]
    assert set(summary["baselines"]) == {"erm", "natural"}
    erm = summary["baselines"]["erm"]
    assert guard["chosen"] == (SAFE if guard["relative_gap"] > guard["margin"] else PROPOSAL)
    if guard["fired"]:
        assert summary["mixture"] == pytest.approx(uniform(summary["mixture"]))
        assert erm["eval_loss"] == summary["eval_loss"]  # the final training is the ERM run
        assert not (out / "erm").exists() and any("guard fired" in w for w in summary["warnings"])
    else:
        assert (out / "erm").exists()
    # the check run the final training continued counts as final training, the other as the guard's cost
    ledger = {s["stage"]: s for s in json.loads((out / "ledger.json").read_text())["stages"]}
    loser = guard["overhead_step"]
    assert summary["flops"]["guard"] == pytest.approx(ledger[loser]["flops"])
    assert erm["flops"]["total"] == pytest.approx(
        sum(ledger[s]["flops"] for s in ["prefix", "guard_safe", "final" if guard["fired"] else "erm"]))

    # `opmix check` on the finished run: real runs at spread mixtures vs the laws' predictions
    assert main(["-q", "check", str(out), "--runs", "3", "--steps", "4"]) == 0
    check = json.loads((out / "check.json").read_text())
    assert len(check["runs"]) == 3 and check["steps"] == 4
    assert check["runs"][0]["components"] == pytest.approx(summary["components"])
    assert all(np.isfinite(r["real"]) for r in check["runs"])
    assert np.isfinite(check["bias"])
    assert "check_4_0" in [s["stage"] for s in json.loads((out / "ledger.json").read_text())["stages"]]
