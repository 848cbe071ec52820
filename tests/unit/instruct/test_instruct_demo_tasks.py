"""Demo tasks: valid rows with correct answers, disjoint splits, deterministic files that fit seq_len 96."""

from __future__ import annotations

import datetime
import json
import unicodedata

import pytest

from opmix.data.tokenizer import build_byte_tokenizer
from opmix.errors import OpmixError
from opmix.instruct.demo_tasks import (
    TASKS,
    WEEKDAYS,
    demo_task_configs,
    write_demo_tasks,
)
from opmix.instruct.tasks import load_tasks


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def task_of(prompt: str) -> str:
    first = prompt.split(" ", 1)[0]
    known = {"reverse", "upper", "weekday", "length", "first", "last"}
    return first if first in known else "charname" if first == "name" else "addition"


def right_answer(task: str, prompt: str) -> str:
    """Each task's answer computed independently of the generator."""
    argument = prompt.split(" ", 1)[-1]
    if task == "addition":
        left, right = prompt.rstrip("=").split("+")
        return str(int(left) + int(right))
    if task == "reverse":
        return argument[::-1]
    if task == "upper":
        return argument.upper()
    if task == "charname":
        return unicodedata.name(argument)
    if task in ("length", "first", "last"):
        return {"length": str(len(argument)), "first": argument[:1], "last": argument[-1:]}[task]
    return WEEKDAYS[datetime.date.fromisoformat(argument).weekday()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_tasks(tmp_path_factory.mktemp("demo"), n_train=60, n_eval=12, seed=0)


def test_tasks_are_correct_and_splits_disjoint(demo):
    assert list(demo) == ["format", *TASKS]
    seen_prompts = set()
    for name in TASKS:
        train, evals = rows(demo[name] / "train.jsonl"), rows(demo[name] / "eval.jsonl")
        assert len(train) == 60 and len(evals) == 12
        for row in train + evals:
            assert set(row) == {"prompt", "response"}
            assert task_of(row["prompt"]) == name and row["response"] == right_answer(name, row["prompt"]), row
        prompts = [r["prompt"] for r in train + evals]
        assert len(set(prompts)) == len(prompts)  # no repeats, and no eval prompt in train
        seen_prompts |= set(prompts)
    warmup = rows(demo["format"] / "train.jsonl")
    assert len(warmup) == 60 and not {r["prompt"] for r in warmup} & seen_prompts
    assert all(r["response"] == right_answer(task_of(r["prompt"]), r["prompt"]) for r in warmup)
    assert {task_of(r["prompt"]) for r in warmup} == set(TASKS)  # a mix of every task


def test_deterministic_given_the_seed(demo, tmp_path):
    again = write_demo_tasks(tmp_path / "again", n_train=60, n_eval=12, seed=0)
    other = write_demo_tasks(tmp_path / "other", n_train=60, n_eval=12, seed=1)
    for name in demo:
        for split in ("train.jsonl", "eval.jsonl"):
            assert (demo[name] / split).read_bytes() == (again[name] / split).read_bytes()
    assert (demo["addition"] / "train.jsonl").read_bytes() != (other["addition"] / "train.jsonl").read_bytes()


def test_every_example_fits_seq_len_96_with_the_byte_tokenizer(demo):
    tasks = load_tasks(demo_task_configs(demo), build_byte_tokenizer(), 96, 0.1, 0, None)
    assert list(tasks) == list(demo)
    for task in tasks.values():
        assert task.warnings == [] and len(task.train) == 60 and len(task.eval) == 12


def test_asking_for_more_than_a_pool_holds_is_an_error(tmp_path):
    with pytest.raises(OpmixError, match="demo task 'charname' has .* distinct examples.*fix: ask for fewer"):
        write_demo_tasks(tmp_path, n_train=5000, n_eval=10, seed=0)
