"""Scorers: each built-in one on matches and near misses, user functions, and the config's checks of them."""

from __future__ import annotations

import itertools
import textwrap

import pytest
from pydantic import ValidationError

from opmix.errors import OpmixError
from opmix.instruct.scorers import first_number, make_scorer
from opmix.instruct.tasks import TaskConfig

_modules = itertools.count()


def scorer(**fields):
    return make_scorer(TaskConfig(name="t", files=["x.jsonl"], **fields), eos_token="<|endoftext|>")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes a module of scorer functions on sys.path (a fresh name per test: no stale import) and returns it."""
    name = f"user_scorers_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        THRESHOLD = 3

        def contains(prompt, generated, gold):
            return gold in generated

        def half(prompt, generated, gold):
            return 0.5

        def prompt_length_ok(prompt, generated, gold):
            return len(prompt) < 10

        def words(prompt, generated, gold):
            return "yes"

        def too_big(prompt, generated, gold):
            return 1.5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_exact_strips_whitespace_and_eos_only():
    exact = scorer()
    assert exact("p", " 357\n", "357") == 1.0
    assert exact("p", "357<|endoftext|>", "357") == 1.0
    assert exact("p", "358", "357") == 0.0
    assert exact("p", "Abc", "abc") == 0.0


def test_normalized_ignores_case_punctuation_and_spacing():
    normalized = scorer(scorer="normalized")
    assert normalized("p", "  Hello,   World! ", "hello world") == 1.0
    assert normalized("p", "hello worlds", "hello world") == 0.0


def test_regex_compares_first_groups_or_the_whole_gold():
    regex = scorer(scorer="regex", pattern=r"answer: (\d+)")
    assert regex("p", "so the answer: 42.", "answer: 42") == 1.0
    assert regex("p", "answer: 42", "42") == 1.0  # the gold does not match: compared whole
    assert regex("p", "answer: 41", "answer: 42") == 0.0
    assert regex("p", "42", "answer: 42") == 0.0  # nothing to compare in the generated text
    whole = scorer(scorer="regex", pattern=r"\d+")  # no group: the whole match
    assert whole("p", "it is 7 days", "7") == 1.0


def test_numeric_first_number_within_tolerance():
    assert scorer(scorer="numeric", abs_tol=1e-3)("p", "about 3.0001 km", "3") == 1.0
    assert scorer(scorer="numeric")("p", "about 3.0001 km", "3") == 0.0
    assert scorer(scorer="numeric", rel_tol=0.1)("p", "105", "100") == 1.0
    assert scorer(scorer="numeric")("p", "1,234", "1234") == 1.0
    assert scorer(scorer="numeric")("p", "no idea", "12") == 0.0
    assert first_number("x -2.5e1 y 3") == -25.0


def test_user_function_bool_and_float(user_module):
    assert scorer(scorer=f"{user_module}:contains")("p", "it is 42", "42") == 1.0
    assert scorer(scorer=f"{user_module}:contains")("p", "it is 41", "42") == 0.0
    assert scorer(scorer=f"{user_module}:half")("p", "x", "y") == 0.5
    assert scorer(scorer=f"{user_module}:prompt_length_ok")("a long prompt", "x", "x") == 0.0


@pytest.mark.parametrize("function", ["words", "too_big"])
def test_user_function_bad_result_is_an_error(user_module, function):
    bad = scorer(scorer=f"{user_module}:{function}")
    with pytest.raises(OpmixError, match="fix: return a bool or a float in \\[0, 1\\]"):
        bad("p", "x", "y")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scorer": "fuzzy"}, "unknown scorer 'fuzzy'.*fix: use one of"),
        ({"scorer": "regex"}, "needs a pattern; fix: set pattern"),
        ({"scorer": "regex", "pattern": "(unclosed"}, "does not compile.*fix: correct the regular expression"),
        ({"pattern": r"\d+"}, "pattern is set but the scorer is 'exact'; fix:"),
        ({"scorer": "no_such_module_xyz:f"}, "cannot import module 'no_such_module_xyz'.*fix: put the module"),
    ],
)
def test_config_rejects_bad_scorers(fields, message):
    with pytest.raises(ValidationError, match=message):
        TaskConfig(name="t", files=["x.jsonl"], **fields)


def test_config_rejects_missing_or_uncallable_user_function(user_module):
    with pytest.raises(ValidationError, match="has no 'missing'; fix: check the function's name"):
        TaskConfig(name="t", files=["x.jsonl"], scorer=f"{user_module}:missing")
    with pytest.raises(ValidationError, match="is of type int, not a function; fix:"):
        TaskConfig(name="t", files=["x.jsonl"], scorer=f"{user_module}:THRESHOLD")
