"""End-to-end continual instruction tuning on two tiny tasks: OP-Mix with each learner, the one-epoch stage rule,
the baselines, an interrupted self-distillation stage resumed, and the CLI's bad inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from opmix.cli import main
from opmix.config.instruct import InstructConfig
from opmix.config.loading import load_config
from opmix.instruct.tasks import load_tasks
from opmix.recipes import instruct
from opmix.report_page import write_report
from opmix.run.rundir import RunDir

pytestmark = pytest.mark.slow

WORDS = ["apple", "stone", "river", "cloud", "mint", "lamp", "frog", "salt", "plum", "wind", "gold", "moss",
         "reed", "silk", "tide", "vine", "wolf", "yarn", "bark", "dune", "fern", "gust", "hive", "iris"]


def _task_file(path, make):
    rows = [make(w) for w in WORDS * 2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def tiny_instruct_raw(tmp_path) -> dict:
    upper = _task_file(tmp_path / "upper.jsonl", lambda w: {"prompt": f"up {w}", "response": w.upper()})
    first = _task_file(tmp_path / "first.jsonl", lambda w: {"prompt": f"first {w}", "response": w[0]})
    return {
        "seed": 0,
        "model": {"builtin": "llama-tiny"},
        "tokenizer": "builtin:bytes",
        "tasks": [{"name": "upper", "files": [upper], "max_new_tokens": 8},
                  {"name": "first", "files": [first], "max_new_tokens": 4}],
        "data": {"seq_len": 80, "eval_fraction": 0.2, "max_eval_examples": 6},
        "train": {"batch_size": 8, "lr": 3e-3, "eval_batch_size": 8, "warmup_fraction": 0.0,
                  "checkpoint_every": 2},
        "method": {"n_proxies": 5, "lora": {"r": 4, "alpha": 8}},
        "sdft": {"max_new_tokens": 6},
    }


def _run(raw, out, **changes):
    cfg = load_config(None, InstructConfig, raw={**raw, **changes})
    with RunDir(out).lock() as run_dir:
        return instruct.run(cfg, run_dir), cfg


@pytest.mark.parametrize("learner", ["sft", "sdft"])
def test_opmix_two_tasks_with_each_learner(tmp_path, tiny_instruct_raw, learner):
    summary, cfg = _run(tiny_instruct_raw, tmp_path / "run", learner=learner)
    stages = summary["stages"]
    assert summary["domains"] == ["upper", "first"] and [s["stage"] for s in stages] == [1, 2]
    assert summary["learner"] == learner and summary["metric"] == "error_rate"
    second = stages[1]
    assert sum(second["mixture"].values()) == pytest.approx(1.0)
    for task in ("upper", "first"):
        assert 0.0 <= second["accuracy"][task] <= 1.0
        # the laws were fitted on the error rates: the stage's metric is 1 - accuracy
        assert second["eval_loss"][task] == pytest.approx(1 - second["accuracy"][task])
    assert len(second["proxies"]["eval_loss"]) == 5
    # SPEC's SFT mixing rule: the new task is seen once, so the stage lasts ceil(n / (w B)) steps
    run = RunDir(tmp_path / "run")
    n_first = run.step_info("s2_train")["tokens_consumed"]
    start, end = run.step_info("s1_train")["end_step"], run.step_info("s2_train")["end_step"]
    w_new = second["mixture"]["first"]
    tasks = load_tasks(cfg.tasks, "builtin:bytes", cfg.data.seq_len, cfg.data.eval_fraction, cfg.seed,
                       cfg.data.max_eval_examples)
    assert end - start == math.ceil(len(tasks["first"].train) / (max(w_new, 0.1) * 8))
    assert start == math.ceil(len(tasks["upper"].train) / 8)  # stage 1: one epoch of T1
    assert n_first["first"] > 0
    ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())
    kinds = {row["stage"]: row.get("kinds", {}) for row in ledger["stages"]}
    if learner == "sdft":  # self-distillation's sampling and teacher are counted apart from training
        assert kinds["s2_train"]["generation"] > 0 and kinds["s2_train"]["teacher"] > 0
        assert kinds["s2_probe_new"]["generation"] > 0
        assert summary["flops_by_kind"]["teacher"] > 0
    else:
        assert "s2_train" not in {s for s, k in kinds.items() if k}
    assert summary["flops_by_kind"]["proxy_eval"] > 0 and summary["flops_by_kind"]["train"] > 0
    assert (tmp_path / "run" / "final" / "model" / "config.json").is_file()
    html = write_report(tmp_path / "run").read_text()
    assert "Accuracy of each task after every stage" in html and "instruct (opmix" in html
    assert (tmp_path / "run" / "report" / "stage_accuracy.png").stat().st_size > 1000


def test_baselines_fix_the_new_task_share(tmp_path, tiny_instruct_raw):
    sequential, _ = _run(tiny_instruct_raw, tmp_path / "seq", run="sequential")
    assert sequential["stages"][1]["mixture"] == {"upper": 0.0, "first": 1.0}
    replay, _ = _run(tiny_instruct_raw, tmp_path / "replay", run="replay")
    assert replay["stages"][1]["mixture"] == pytest.approx({"upper": 0.1, "first": 0.9})
    # the same first stage: both learned T1 from the same model on the same data
    assert sequential["stages"][0]["accuracy"] == replay["stages"][0]["accuracy"]
    assert set(sequential["forgetting"]) == {"upper", "first"}


def _cli(raw, tmp_path, out, *extra, fault=None):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "OPMIX_FAULT"}
    if fault:
        env["OPMIX_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "opmix.cli", "instruct", "--config", str(config), "--out", str(out),
                           *extra], env=env, capture_output=True, text=True, timeout=900)


def test_an_interrupted_sdft_stage_resumes_to_the_same_result(tmp_path, tiny_instruct_raw):
    raw = {**tiny_instruct_raw, "learner": "sdft"}
    whole = _cli(raw, tmp_path, tmp_path / "whole", "--method", "sequential")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _cli(raw, tmp_path, tmp_path / "resumed", "--method", "sequential", fault="step:s2_train:3")
    assert killed.returncode != 0
    resumed = _cli(raw, tmp_path, tmp_path / "resumed", "--method", "sequential")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "whole" / "s2_train" / "checkpoint" / "trainable.safetensors")
    b = load_file(tmp_path / "resumed" / "s2_train" / "checkpoint" / "trainable.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert "accuracy of each task after every stage" in resumed.stdout


@pytest.mark.parametrize("change, message", [
    ({"learner": "rl"}, "learner"),
    ({"tasks": "twice"}, "used twice"),
    ({"method": {"guard": {"enabled": True}}}, "method.guard"),
])
def test_bad_settings_exit_2_before_any_compute(tmp_path, tiny_instruct_raw, capsys, change, message):
    raw = dict(tiny_instruct_raw)
    if change.get("tasks") == "twice":
        raw["tasks"] = [raw["tasks"][0], raw["tasks"][0]]
    else:
        raw.update(change)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["instruct", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "fix" in err[-1]
    assert not (tmp_path / "out").exists()


def test_a_row_without_a_response_names_the_file_and_line(tmp_path, tiny_instruct_raw, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    raw = dict(tiny_instruct_raw)
    raw["tasks"] = [raw["tasks"][0], {"name": "bad", "files": [str(bad)]}]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["instruct", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bad.jsonl" in err and "2" in err


def test_demo_configs_validate(tmp_path):
    from opmix.instruct.demo import ORDER, demo_instruct_config, warmup_config

    warmup = load_config(None, InstructConfig, raw=warmup_config(tmp_path / "data"))
    assert warmup.run == "sequential" and [t.name for t in warmup.tasks] == ["format"]
    (tmp_path / "model").mkdir()
    demo = load_config(None, InstructConfig, raw=demo_instruct_config(tmp_path / "data", tmp_path / "model"))
    assert [t.name for t in demo.tasks] == list(ORDER) and len(demo.tasks) >= 3
    assert all(len((tmp_path / "data" / t / "eval.jsonl").read_text().splitlines()) == 64 for t in ORDER)
