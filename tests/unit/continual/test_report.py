"""Per-stage accounting: fresh data, compute by stage, the grid's regret and fidelity, the stage schedule."""

from __future__ import annotations

import numpy as np
import pytest

from opmix.continual.grid import grid_report
from opmix.continual.report import fresh_data, stage_flops
from opmix.continual.training import StageSchedule


def test_fresh_data_counts_this_stage_and_flags_repeats():
    before = {"tokens_consumed": {"a": 100, "b": 0}, "epochs": {"a": 0.5, "b": 0.0}}
    after = {"tokens_consumed": {"a": 150, "b": 300}, "epochs": {"a": 0.75, "b": 1.5}}
    record, warnings = fresh_data(before, after, ["a", "b"])
    assert record == {"a": {"tokens": 50, "epochs": 0.75}, "b": {"tokens": 300, "epochs": 1.5}}
    assert len(warnings) == 1 and "'b'" in warnings[0] and "1.50 epochs" in warnings[0]
    # a domain that is not drawn this stage is not repeating, whatever its epoch count
    _, none = fresh_data(after, after, ["a", "b"])
    assert none == []


def test_stage_flops_groups_by_step_name_and_leaves_the_grid_out_of_the_total():
    ledger = {"s1_train": 10.0, "s2_probe_old": 1.0, "s2_probe_new": 1.0, "s2_proxies": 0.5, "s2_train": 10.0,
              "s2_grid_r0.10_seed0": 10.0, "s12_train": 99.0, "total": 131.5}
    flops = stage_flops(ledger, 2)
    assert flops["probes"] == 2.0 and flops["proxy_eval"] == 0.5 and flops["train"] == 10.0
    assert flops["grid"] == 10.0 and flops["total"] == pytest.approx(12.5)
    assert stage_flops(ledger, 1)["total"] == 10.0


def test_grid_report_regret_and_spearman():
    grid = {0.1: [{"a": 2.0, "b": 3.0}, {"a": 2.0, "b": 3.2}], 0.5: [{"a": 2.1, "b": 2.5}] * 2,
            0.9: [{"a": 2.6, "b": 2.4}] * 2}
    r = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    proxies = np.array([[2.0, 3.0], [2.0, 2.8], [2.1, 2.5], [2.3, 2.45], [2.6, 2.38]])
    report = grid_report(grid, chosen_r=0.45, chosen_loss=2.33, proxy_r=r, proxy_losses=proxies)
    assert report["best_r"] == 0.5 and report["best_loss"] == pytest.approx(2.3)
    assert report["regret"] == pytest.approx(0.03 / 2.3)
    assert report["mean_eval_loss"][0] == pytest.approx(2.55)  # mean over the seen domains, then the seeds
    assert report["fidelity_spearman"] == pytest.approx(1.0)  # proxies at 0.1, 0.5, 0.9 rank as the grid does


def test_stage_schedule_restarts_at_every_stage():
    s = StageSchedule.for_stage(start=100, steps=100, warmup_fraction=0.1, decay_fraction=0.2, final_ratio=0.1)
    assert s(100) == pytest.approx(0.1) and s(109) == pytest.approx(1.0) and s(150) == 1.0
    assert s(199) == pytest.approx(0.1) and s.end == 200
