"""Verifiable demo tasks built from what every Python installation holds, so the instruction demo needs no download.

In task order (continual instruction tuning trains them one after another):

- ``addition``: ``"12+345="`` -> ``"357"`` (operands of 1 to 3 digits);
- ``reverse``: ``"reverse lambda"`` -> ``"adbmal"``;
- ``upper``: ``"upper lambda"`` -> ``"LAMBDA"``;
- ``charname``: ``"name ©"`` -> ``"COPYRIGHT SIGN"`` (``unicodedata.name`` of a symbol, punctuation or digit);
- ``weekday``: ``"weekday 2024-03-15"`` -> ``"Friday"`` (dates of 1900-2099, English names whatever the locale).

Words come from the installation itself: keywords, standard-library module names and the words of the builtins'
docstrings (3 to 9 lowercase letters), and, for enough distinct examples, strings of ``string.ascii_lowercase``.
The first task answers in digits and every later one in letters, so training
on the later tasks alone pulls the model's answers away from digits: the first task is the one forgotten.

``format`` is the warm-up set: the same five tasks mixed, from which a fresh model learns the prompt/response format
before the continual stages. Its train examples are none of the tasks' own train or eval examples (its eval ones
are drawn from the tasks' eval examples, which nothing trains on).

Prompts and answers are short: with the plain template and the byte tokenizer every example, its teacher context
included, fits ``seq_len`` 96. Everything is deterministic given the seed (on one Python version: the word and
character pools follow its docstrings and Unicode tables).
"""

from __future__ import annotations

import builtins
import datetime
import json
import keyword
import math
import re
import string
import sys
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from opmix.errors import OpmixError

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")  # not locale's day_name
FIRST_DAY, LAST_DAY = datetime.date(1900, 1, 1).toordinal(), datetime.date(2099, 12, 31).toordinal()
MAX_NAME = 16  # characters of a Unicode name: keeps the charname answers short enough for seq_len 96
Pair = tuple[str, str]


def python_words() -> list[str]:
    """Sorted lowercase words of 3-9 letters from the keywords, stdlib module names and builtins' docstrings."""
    words = set(keyword.kwlist) | set(getattr(sys, "stdlib_module_names", ()))
    for name in dir(builtins):
        words.update(re.findall(r"\b[a-z]+\b", getattr(builtins, name).__doc__ or ""))
    return sorted(w for w in words if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 9)


def named_characters() -> list[tuple[str, str]]:
    """(character, name) of the printable symbols, punctuation and digits up to U+2BFF with a short name."""
    found = []
    for code in [*range(0x21, 0x7F), *range(0xA1, 0x2C00)]:
        char = chr(code)
        name = unicodedata.name(char, "")
        if name and len(name) <= MAX_NAME and char.isprintable() and unicodedata.category(char)[0] in "PSN":
            found.append((char, name))
    return found


def _from_pool(pool: list[Pair], count: int, rng: np.random.Generator, task: str) -> list[Pair]:
    if count > len(pool):
        raise OpmixError(f"demo task {task!r} has {len(pool)} distinct examples on this Python, {count} were asked",
                         "ask for fewer train/eval examples")
    return [pool[i] for i in rng.permutation(len(pool))[:count]]


def _unique(draw: Callable[[np.random.Generator], Pair], count: int, rng: np.random.Generator) -> list[Pair]:
    pairs: dict[str, str] = {}
    while len(pairs) < count:  # the pools of these draws are far larger than any demo asks for
        prompt, response = draw(rng)
        pairs.setdefault(prompt, response)
    return list(pairs.items())


def _addition(count: int, rng: np.random.Generator) -> list[Pair]:
    def draw(rng):
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, 4)))) for _ in range(2))
        return f"{a}+{b}=", str(a + b)

    return _unique(draw, count, rng)


def _word(rng: np.random.Generator, words: list[str]) -> str:
    """Half the time a word of the installation, else letters of ``string.ascii_lowercase`` (3 to 6): enough
    distinct prompts for thousands of examples, so a small model learns the rule rather than the pairs."""
    if rng.random() < 0.5:
        return words[int(rng.integers(len(words)))]
    return "".join(string.ascii_lowercase[int(i)] for i in rng.integers(0, 26, size=int(rng.integers(3, 7))))


def _reverse(count: int, rng: np.random.Generator) -> list[Pair]:
    words = python_words()

    def draw(rng):
        word = _word(rng, words)
        return f"reverse {word}", word[::-1]

    return _unique(draw, count, rng)


def _upper(count: int, rng: np.random.Generator) -> list[Pair]:
    words = python_words()

    def draw(rng):
        word = _word(rng, words)
        return f"upper {word}", word.upper()

    return _unique(draw, count, rng)


def _charname(count: int, rng: np.random.Generator) -> list[Pair]:
    return _from_pool([(f"name {c}", n) for c, n in named_characters()], count, rng, "charname")


def _weekday(count: int, rng: np.random.Generator) -> list[Pair]:
    def draw(rng):
        day = datetime.date.fromordinal(int(rng.integers(FIRST_DAY, LAST_DAY + 1)))
        return f"weekday {day.isoformat()}", WEEKDAYS[day.weekday()]

    return _unique(draw, count, rng)


def _word_task(prefix: str, answer: Callable[[str], str]) -> Callable[[int, np.random.Generator], list[Pair]]:
    """A task on one word: ``"<prefix> <word>"`` -> ``answer(word)``."""

    def make(count: int, rng: np.random.Generator) -> list[Pair]:
        words = python_words()

        def draw(rng):
            word = _word(rng, words)
            return f"{prefix} {word}", answer(word)

        return _unique(draw, count, rng)

    return make


TASKS: dict[str, Callable[[int, np.random.Generator], list[Pair]]] = {
    "addition": _addition, "reverse": _reverse, "upper": _upper, "charname": _charname, "weekday": _weekday,
    # tasks a small model learns in minutes: a letter copied from a fixed place, or a count
    "length": _word_task("length", lambda w: str(len(w))), "first": _word_task("first", lambda w: w[0]),
    "last": _word_task("last", lambda w: w[-1]),
}


def _write(path: Path, pairs: list[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": p, "response": r}, ensure_ascii=False) for p, r in pairs]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_demo_tasks(folder: str | Path, n_train: int = 400, n_eval: int = 64, seed: int = 0,
                     names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``<folder>/<task>/train.jsonl`` and ``eval.jsonl`` for ``format`` and each of ``names`` (default: all
    of ``TASKS``); returns task name -> its folder, ``format`` first, then the tasks in training order."""
    if n_train < 1 or n_eval < 1:
        raise OpmixError(f"demo tasks need n_train and n_eval >= 1, got {n_train} and {n_eval}", "ask for more")
    names = list(TASKS) if names is None else list(names)
    unknown = sorted(set(names) - set(TASKS))
    if unknown or not names:
        raise OpmixError(f"unknown demo task(s) {unknown or names}", f"use some of {list(TASKS)}")
    folder = Path(folder)
    share = math.ceil(n_train / len(names))  # each task's part of the format warm-up set
    warmup_train: list[Pair] = []
    warmup_eval: list[Pair] = []
    paths = {"format": folder / "format"}
    for name in names:
        make = TASKS[name]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        pairs = make(n_eval + n_train + share, rng)  # distinct prompts: eval, then train, then the warm-up's share
        _write(folder / name / "eval.jsonl", pairs[:n_eval])
        _write(folder / name / "train.jsonl", pairs[n_eval:n_eval + n_train])
        warmup_train += pairs[n_eval + n_train:]
        warmup_eval += pairs[: math.ceil(n_eval / len(names))]
        paths[name] = folder / name
    rng = np.random.default_rng([seed, zlib.crc32(b"format")])
    _write(folder / "format" / "train.jsonl", [warmup_train[i] for i in rng.permutation(len(warmup_train))][:n_train])
    _write(folder / "format" / "eval.jsonl", [warmup_eval[i] for i in rng.permutation(len(warmup_eval))][:n_eval])
    return paths


def demo_task_configs(paths: dict[str, Path], max_new_tokens: int = 20) -> list:
    """``TaskConfig``s (exact-match scoring) for the folders ``write_demo_tasks`` returned, in the same order."""
    from opmix.instruct.tasks import TaskConfig

    return [TaskConfig(name=name, files=[str(path / "train.jsonl")], eval_files=[str(path / "eval.jsonl")],
                       max_new_tokens=max_new_tokens) for name, path in paths.items()]
