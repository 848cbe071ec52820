"""`opmix update`: every kind of change on a tiny finished pretraining run (components, which probes were
trained, expanded weights summing to 1, removal at no search cost), chaining, --no-train, the probe cache across
updates, an interrupted update resuming, and bad inputs (exit 2, one line with the fix)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opmix.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extra_data(tmp_path_factory) -> dict[str, Path]:
    from opmix.data.testbed import build_domain_set

    corpus = build_domain_set("skewed", tmp_path_factory.mktemp("skewed"))
    return {name: files[0] for name, files in corpus.items()}


@pytest.fixture(scope="module")
def previous(tmp_path_factory, tiny_pretrain_base) -> Path:
    raw = copy.deepcopy(tiny_pretrain_base)
    raw["baseline"] = "none"
    root = tmp_path_factory.mktemp("update")
    (config := root / "pretrain.yaml").write_text(yaml.safe_dump(raw))
    assert main(["pretrain", "--config", str(config), "--out", str(root / "base"), "-q"]) == 0
    return root / "base"


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_add_trains_probes_only_for_the_change_and_chains(previous, extra_data, tmp_path):
    before = _summary(previous)["mixture"]
    out = tmp_path / "add"
    assert main(["update", "--from", str(previous), "--out", str(out), "-q",
                 "--add", f"logs={extra_data['logs']}"]) == 0
    summary = _summary(out)
    record = summary["update"]
    assert record["affected"] == ["logs"] and record["probes_trained"] == ["existing", "logs"]
    assert list(summary["components"]) == ["existing", "logs"]
    assert sum(summary["mixture"].values()) == pytest.approx(1.0)
    # the unchanged domains keep their previous relative weights inside `existing`
    assert record["existing"] == pytest.approx({d: w / sum(before.values()) for d, w in before.items()})
    proposed = record["proposed"]
    old_share = sum(proposed[d] for d in before)
    assert {d: proposed[d] / old_share for d in before} == pytest.approx(record["existing"])
    assert (out / "final" / "model" / "config.json").is_file() and (out / "report" / "index.html").is_file()

    # an update is a valid --from: revise a domain of the previous update
    chained = tmp_path / "revise"
    assert main(["update", "--from", str(out), "--out", str(chained), "-q", "--no-train",
                 "--revise", f"code={extra_data['table']}"]) == 0
    second = _summary(chained)
    assert second["trained"] is False and second["update"]["affected"] == ["code"]
    assert set(second["mixture"]) == {"code", "prose", "records", "logs"}
    assert sum(second["mixture"].values()) == pytest.approx(1.0)
    assert not (chained / "final").exists()


def test_partition_and_recompute(previous, extra_data, tmp_path):
    out = tmp_path / "partition"
    assert main(["update", "--from", str(previous), "--out", str(out), "-q", "--no-train",
                 "--partition", f"records=rec_a:{extra_data['mixed']},rec_b:{extra_data['prose']}",
                 "--recompute", "code"]) == 0
    record = _summary(out)["update"]
    assert record["affected"] == ["code", "rec_a", "rec_b"]
    assert set(record["existing"]) == {"prose"} and record["existing"]["prose"] == pytest.approx(1.0)
    assert record["probes_trained"] == ["existing", "code", "rec_a", "rec_b"]
    assert sum(_summary(out)["mixture"].values()) == pytest.approx(1.0)


def test_removal_renormalises_at_no_search_cost(previous, tmp_path):
    before = _summary(previous)["mixture"]
    out = tmp_path / "remove"
    assert main(["update", "--from", str(previous), "--out", str(out), "-q", "--no-train", "--remove", "prose"]) == 0
    summary = _summary(out)
    kept = {d: w for d, w in before.items() if d != "prose"}
    assert summary["mixture"] == pytest.approx({d: w / sum(kept.values()) for d, w in kept.items()})
    assert summary["update"]["search_flops"] == 0 and summary["update"]["probes_trained"] == []
    ledger = json.loads((out / "ledger.json").read_text())["stages"]
    assert sum(row["flops"] for row in ledger) == 0  # no compute at all


def test_probes_come_from_the_cache_when_the_same_update_runs_again(previous, extra_data, tmp_path):
    args = ["update", "--from", str(previous), "-q", "--no-train", "--add", f"logs={extra_data['logs']}",
            "method.probe_cache.path=" + str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    one, two = _summary(tmp_path / "one")["update"], _summary(tmp_path / "two")["update"]
    assert one["search_flops"] > two["search_flops"] and two["saved_flops"] > 0
    assert _summary(tmp_path / "one")["mixture"] == _summary(tmp_path / "two")["mixture"]


def test_an_interrupted_update_resumes_to_the_same_mixture(previous, extra_data, tmp_path):
    command = [sys.executable, "-m", "opmix.cli", "update", "--from", str(previous), "-q", "--no-train",
               "--add", f"logs={extra_data['logs']}", "method.probe_cache.enabled=false"]
    env = {**os.environ, "OPMIX_FAULT": "mark:probe_logs:1"}  # killed as its second probe finishes
    killed = subprocess.run([*command, "--out", str(tmp_path / "cut")], env=env, capture_output=True, text=True)
    assert killed.returncode != 0 and not (tmp_path / "cut" / "summary.json").exists()
    assert subprocess.run([*command, "--out", str(tmp_path / "cut")], capture_output=True).returncode == 0
    assert subprocess.run([*command, "--out", str(tmp_path / "whole")], capture_output=True).returncode == 0
    assert _summary(tmp_path / "cut")["mixture"] == _summary(tmp_path / "whole")["mixture"]


@pytest.mark.parametrize("flags, message", [
    (["--remove", "nope"], "--remove nope: no such domain in the previous run"),
    (["--add", "code=/etc/hostname"], "already has a domain 'code'"),
    (["--add", "logs"], "is not NAME=PATH"),
    (["--partition", "code=a:/etc/hostname"], "gives 1 part"),
    ([], "no change given"),
    (["--remove", "code", "--remove", "prose"], "leaves 1 domain"),
])
def test_bad_update_exits_2_with_the_fix(previous, tmp_path, capsys, flags, message):
    assert main(["update", "--from", str(previous), "--out", str(tmp_path / "bad"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("opmix: error: ") and message in err and "; fix: " in err
    assert not (tmp_path / "bad").exists()


def test_update_from_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["update", "--from", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--remove", "x"]) == 2
    assert "not an opmix run directory" in capsys.readouterr().err
