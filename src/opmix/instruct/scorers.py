"""Scorers: how well one generated answer matches the gold response, as a number in [0, 1].

A scorer is called as ``scorer(prompt, generated, gold) -> float``: ``prompt`` is the example's prompt text (before
any template), ``generated`` the model's decoded answer, ``gold`` the gold response text. A task's accuracy is the
mean score over its eval examples; the mixing laws are fitted on the error rate, 1 - accuracy (SPEC section 3).

Built-in scorers (``TaskConfig.scorer``):

- ``exact``: equal after stripping surrounding whitespace and a trailing EOS token text;
- ``normalized``: equal ignoring case, punctuation and surrounding whitespace, with inner whitespace collapsed;
- ``regex``: the pattern's first group (the whole match when it has no group), searched in the generated text,
  equals the gold's; when the gold does not match the pattern, the whole (stripped) gold is compared;
- ``numeric``: the first number of each is equal within ``abs_tol`` or ``rel_tol`` (as ``math.isclose``);
- ``module:function``: a user function with the same arguments, returning a bool or a float in [0, 1].
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import string
from collections.abc import Callable

from opmix.errors import OpmixError

BUILTIN_SCORERS = ("exact", "normalized", "regex", "numeric")
Scorer = Callable[[str, str, str], float]

# an optional sign, digits with optional thousands separators or a decimal part, an optional exponent
NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def first_number(text: str) -> float | None:
    """The first number written in ``text`` (``1,234.5`` reads as 1234.5), or None when it holds none."""
    match = NUMBER.search(text)
    return None if match is None else float(match.group().replace(",", ""))


def _clean(text: str, eos_token: str | None) -> str:
    text = text.strip()
    if eos_token and text.endswith(eos_token):
        text = text[: -len(eos_token)].rstrip()
    return text


def _normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def _first_group(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def load_user_function(spec: str) -> Callable:
    """The callable named by ``module:function`` (a dotted attribute path after the colon works too)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise OpmixError(f"scorer {spec!r} is not 'module:function'", "write it as package.module:function_name")
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or anything the module raises while it runs
        raise OpmixError(
            f"scorer {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})",
            "put the module on PYTHONPATH (or install it) and check that it imports",
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise OpmixError(f"scorer {spec!r}: module {module_name!r} has no {attribute!r}",
                             "check the function's name after the colon")
        target = getattr(target, part)
    if not callable(target):
        raise OpmixError(f"scorer {spec!r} is of type {type(target).__name__}, not a function",
                         "name a function taking (prompt, generated, gold)")
    return target


def _checked(spec: str, function: Callable) -> Scorer:
    """``function`` with its result checked: a bool, or a real number in [0, 1]."""

    def score(prompt: str, generated: str, gold: str) -> float:
        value = function(prompt, generated, gold)
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0:  # NaN fails both comparisons
            return float(value)
        raise OpmixError(
            f"scorer {spec!r} returned {value!r} ({type(value).__name__})",
            "return a bool or a float in [0, 1]",
        )

    return score


def make_scorer(config, eos_token: str | None = None) -> Scorer:
    """The scorer of a ``TaskConfig`` (anything with ``scorer``, ``pattern``, ``abs_tol`` and ``rel_tol``).

    ``eos_token`` is the text of the tokenizer's EOS token: a generated text that still ends with it (decoded
    with special tokens kept) scores as if it did not.
    """
    kind = config.scorer
    if kind == "exact":
        return lambda prompt, generated, gold: float(_clean(generated, eos_token) == _clean(gold, eos_token))
    if kind == "normalized":
        return lambda prompt, generated, gold: float(
            _normalize(_clean(generated, eos_token)) == _normalize(_clean(gold, eos_token)))
    if kind == "regex":
        if config.pattern is None:
            raise OpmixError("the regex scorer needs a pattern", "set the task's pattern")
        pattern = re.compile(config.pattern)

        def regex(prompt: str, generated: str, gold: str) -> float:
            gold_group = _first_group(pattern, gold)
            wanted = gold_group if gold_group is not None else _clean(gold, eos_token)
            return float(_first_group(pattern, generated) == wanted)

        return regex
    if kind == "numeric":

        def numeric(prompt: str, generated: str, gold: str) -> float:
            got, wanted = first_number(generated), first_number(gold)
            if got is None or wanted is None:
                return 0.0
            return float(math.isclose(got, wanted, rel_tol=config.rel_tol, abs_tol=config.abs_tol))

        return numeric
    if ":" in kind:
        return _checked(kind, load_user_function(kind))
    raise OpmixError(f"unknown scorer {kind!r}", f"use one of {list(BUILTIN_SCORERS)} or module:function")
