"""Instruction tasks: their config, their JSONL rows, and the ``(n, 3, T)`` train and eval arrays built from them.

A row is one JSON object per line (files may be compressed, as everywhere in opmix: ``.jsonl.gz`` ...), either

- ``{"prompt": "...", "response": "...", "demonstration": "..."}``: ``demonstration`` (what the self-distillation
  teacher is shown) is optional and defaults to the response; or
- ``{"messages": [{"role": "...", "content": "..."}, ...]}``: a chat whose last message is the assistant's
  answer (the response); every message before it is the prompt. ``demonstration`` is optional here too.

Rows are rendered with the tokenizer's chat template, or the plain template (``opmix.instruct.templates``), and
packed with ``opmix.instruct.examples.pack_example``. An example fits when its prompt plus response, and its
teacher context plus response, each fit ``seq_len``: a few that do not (at most ``MAX_DROPPED_FRACTION``) are
dropped with a warning, more is an error naming the length needed.

Without ``eval_files`` the eval split is a seeded random ``eval_fraction`` of the task's examples (at least one,
and at least one left to train on), drawn before over-long examples are dropped, so ``seq_len`` does not change
which examples are held out.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from opmix.config.base import Section
from opmix.data.cache import encode_batch, spread_indices
from opmix.data.readers import decompression_errors, file_kind, list_files, open_binary
from opmix.errors import OpmixError
from opmix.instruct.examples import PAD_ID, STUDENT, pack_example
from opmix.instruct.scorers import (
    BUILTIN_SCORERS,
    Scorer,
    first_number,
    load_user_function,
    make_scorer,
)
from opmix.instruct.templates import (
    Example,
    has_chat_template,
    prompt_text,
    render_prompt,
    render_teacher,
    stop_strings,
)

# Over-long examples are dropped with a warning up to this share of a task; past it the task would no longer be
# the data the user gave, so it is an error.
MAX_DROPPED_FRACTION = 0.1
ROW_FIX = 'give each row "prompt" and "response" strings, or chat "messages" that end with an assistant turn'


class TaskConfig(Section):
    """One instruction task: its examples and how a generated answer is scored."""

    name: str = Field(min_length=1, description="The task's unique name.")
    files: list[str] = Field(
        min_length=1, description="JSONL files or folders of examples (`prompt`/`response` rows or chat `messages`; "
                                  "`.gz`, `.bz2`, `.xz`, `.zst` read as they are).")
    eval_files: list[str] = Field(
        [], description="A separate eval split. Empty: a seeded random `eval_fraction` of the examples is held out.")
    scorer: str = Field(
        "exact", description="`exact`, `normalized`, `regex`, `numeric`, or `module:function` (a function of "
                             "(prompt, generated, gold) returning a bool or a float in [0, 1]).")
    pattern: str | None = Field(None, description="The regex scorer's pattern; its first group is compared.")
    abs_tol: float = Field(1e-6, ge=0, description="The numeric scorer's absolute tolerance.")
    rel_tol: float = Field(0.0, ge=0, description="The numeric scorer's relative tolerance.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per eval prompt when scoring.")

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, scorer: str) -> str:
        if scorer in BUILTIN_SCORERS:
            return scorer
        if ":" not in scorer:
            raise ValueError(f"unknown scorer {scorer!r}; fix: use one of {list(BUILTIN_SCORERS)} or module:function")
        try:
            load_user_function(scorer)  # import now: a typo should fail before any training, not at the first eval
        except OpmixError as exc:
            raise ValueError(str(exc)) from None
        return scorer

    @model_validator(mode="after")
    def _pattern_compiles(self) -> TaskConfig:
        if self.scorer == "regex" and self.pattern is None:
            raise ValueError(f"task {self.name!r}: the regex scorer needs a pattern; fix: set pattern, e.g. "
                             r"'answer: (\d+)'")
        if self.pattern is not None and self.scorer != "regex":
            raise ValueError(f"task {self.name!r}: pattern is set but the scorer is {self.scorer!r}; fix: set "
                             "scorer: regex, or remove pattern")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"task {self.name!r}: pattern {self.pattern!r} does not compile ({exc}); fix: "
                                 "correct the regular expression (Python re syntax)") from None
        return self


@dataclass
class TaskData:
    """A task ready to train on and to score."""

    name: str
    train: np.ndarray  # (n_train, 3, T) int64 rows, see opmix.instruct.examples
    eval: np.ndarray  # (n_eval, 3, T)
    scorer: Scorer
    max_new_tokens: int
    eval_texts: list[tuple[str, str]]  # (prompt text, gold response text) of each eval row, for the scorer
    train_tokens: int  # non-pad student tokens of the train rows: what the repetition caps count
    stop_strings: tuple[str, ...] = ()  # where generation stops besides EOS
    warnings: list[str] = field(default_factory=list)


def _string(value, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise OpmixError(f"{where}: {what} is {type(value).__name__}, not a string", ROW_FIX)
    return value


def _chat(record: dict, where: str) -> tuple[tuple[dict, ...], str]:
    """(prompt messages, response) of a chat row."""
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                 for m in messages):
        raise OpmixError(f"{where}: messages is not a list of {{role, content}} objects", ROW_FIX)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise OpmixError(f"{where}: the messages do not end with an assistant turn after the prompt", ROW_FIX)
    prompt = tuple({"role": _string(m["role"], "a role", where), "content": _string(m["content"], "a content", where)}
                   for m in messages[:-1])
    return prompt, _string(messages[-1]["content"], "the assistant's content", where)


def parse_row(record, where: str) -> Example:
    """One row as an ``Example``; ``where`` (file and line) names it in errors."""
    if isinstance(record, dict) and "messages" in record:
        messages, response = _chat(record, where)
    elif isinstance(record, dict) and {"prompt", "response"} <= set(record):
        messages = ({"role": "user", "content": _string(record["prompt"], "prompt", where)},)
        response = _string(record["response"], "response", where)
    else:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise OpmixError(f"{where} has neither prompt and response nor messages (it has: {keys})", ROW_FIX)
    if not response.strip():
        raise OpmixError(f"{where}: the response is empty", "give every row a non-empty response, or remove the row")
    demonstration = _string(record.get("demonstration", response), "demonstration", where)
    return Example(messages, response, demonstration, where)


def read_examples(paths) -> list[Example]:
    """Every row of the JSONL files named by ``paths`` (files, folders, glob patterns), in order."""
    examples = []
    for path in list_files(paths):
        kind = file_kind(path)
        if kind.format != "jsonl":
            raise OpmixError(f"{path} is not a JSONL file", "give task rows as .jsonl files (compressed ones are read)")
        lineno = 0
        try:
            with open_binary(path, kind.compression) as raw:
                for lineno, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise OpmixError(f"{path} line {lineno} is not valid JSON ({exc.msg})",
                                         "fix or remove that line; JSONL needs one JSON object per line") from exc
                    examples.append(parse_row(record, f"{path} line {lineno}"))
        except UnicodeDecodeError as exc:
            raise OpmixError(f"{path} is not UTF-8 text (after line {lineno})", "convert it to UTF-8") from exc
        except decompression_errors() as exc:
            raise OpmixError(f"cannot read {path} ({type(exc).__name__}: {exc})", "check the file") from exc
    return examples


def _special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (a BOS), which the plain template keeps."""
    with_specials = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    extra = len(with_specials) - len(plain)
    return list(with_specials[:extra]) if extra > 0 and with_specials[extra:] == plain else []


def encode_examples(examples: list[Example], tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, response + EOS, teacher context) token ids of each example."""
    if tokenizer.eos_token_id is None:
        raise OpmixError("the tokenizer has no EOS token, which ends every response", "set its eos_token")
    prefix = [] if has_chat_template(tokenizer) else _special_prefix(tokenizer)  # a chat template writes its own
    prompts = encode_batch(tokenizer, [render_prompt(tokenizer, e.messages) for e in examples])
    teachers = encode_batch(tokenizer, [render_teacher(tokenizer, e.messages, e.demonstration) for e in examples])
    responses = encode_batch(tokenizer, [e.response for e in examples])
    eos = tokenizer.eos_token_id
    return [(prefix + p, [*r, eos], prefix + t) for p, r, t in zip(prompts, responses, teachers)]


def _check_numbers(name: str, examples: list[Example]) -> None:
    for example in examples:
        if first_number(example.response) is None:
            raise OpmixError(f"task {name!r}: {example.source}: the response {example.response!r} holds no number, "
                             "which the numeric scorer compares", "fix the row, or use another scorer")


def _held_out(name: str, n: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Which of n examples are held out (a boolean mask): a seeded random eval_fraction, at least one each way."""
    if not 0.0 < eval_fraction < 1.0:
        raise OpmixError(f"task {name!r}: eval_fraction must be in (0, 1), got {eval_fraction}",
                         "give eval_fraction such as 0.1, or the task's eval_files")
    n_eval = max(1, round(eval_fraction * n))
    if n - n_eval < 1:
        raise OpmixError(f"task {name!r} has {n} example(s): too few to hold out an eval split",
                         "add examples, or give the task eval_files")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # per task: adding a task changes no other split
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:n_eval]] = True
    return mask


def load_task(config: TaskConfig, tokenizer, seq_len: int, eval_fraction: float, seed: int,
              max_eval_examples: int | None = None) -> TaskData:
    """One task's train and eval rows; see the module docstring for the rules."""
    name = config.name
    examples = read_examples(config.files)
    if config.eval_files:
        evals = read_examples(config.eval_files)
        is_eval = np.array([False] * len(examples) + [True] * len(evals))
        examples = examples + evals
    else:
        is_eval = _held_out(name, len(examples), eval_fraction, seed)
    if config.scorer == "numeric":
        _check_numbers(name, examples)
    encoded = encode_examples(examples, tokenizer)
    needed = np.array([max(len(p), len(t)) + len(r) for p, r, t in encoded])
    fits = needed <= seq_len
    warnings = []
    if not fits.all():
        dropped = int((~fits).sum())
        problem = (f"task {name!r}: {dropped} of {len(examples)} examples do not fit seq_len={seq_len} (prompt or "
                   f"teacher context plus response; the longest needs {needed.max()} tokens)")
        if dropped > MAX_DROPPED_FRACTION * len(examples):
            raise OpmixError(problem, f"raise data.seq_len to {needed.max()}, or shorten the task's prompts")
        warnings.append(f"{problem}; they were dropped")
    for split, mask in (("train", fits & ~is_eval), ("eval", fits & is_eval)):
        if not mask.any():
            raise OpmixError(f"task {name!r} has no {split} example that fits seq_len={seq_len}",
                             "add examples, raise data.seq_len, or shorten the prompts")
    eval_index = np.flatnonzero(fits & is_eval)
    if max_eval_examples is not None:
        eval_index = eval_index[spread_indices(len(eval_index), max_eval_examples)]  # spread over the whole split
    train_index = np.flatnonzero(fits & ~is_eval)
    train = np.stack([pack_example(*encoded[i], seq_len=seq_len) for i in train_index])  # (n_train, 3, T)
    eval_rows = np.stack([pack_example(*encoded[i], seq_len=seq_len) for i in eval_index])  # (n_eval, 3, T)
    return TaskData(
        name=name, train=train, eval=eval_rows,
        scorer=make_scorer(config, eos_token=tokenizer.eos_token),
        max_new_tokens=config.max_new_tokens,
        eval_texts=[(prompt_text(examples[i].messages), examples[i].response) for i in eval_index],
        train_tokens=int((train[:, STUDENT] != PAD_ID).sum()),
        stop_strings=stop_strings(tokenizer), warnings=warnings,
    )


def load_tasks(tasks: list[TaskConfig], tokenizer, seq_len: int, eval_fraction: float, seed: int,
               max_eval_examples: int | None = None) -> dict[str, TaskData]:
    """Every task's data, in order. ``tokenizer`` is a tokenizer or a spec for ``load_tokenizer``."""
    from opmix.data.tokenizer import load_tokenizer

    if not tasks:
        raise OpmixError("no tasks given", "list at least one task")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise OpmixError(f"duplicate task name(s) {duplicates}", "give each task a unique name")
    if max_eval_examples is not None and max_eval_examples < 1:
        raise OpmixError(f"max_eval_examples must be >= 1, got {max_eval_examples}", "give a positive cap or none")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    return {t.name: load_task(t, tokenizer, seq_len, eval_fraction, seed, max_eval_examples) for t in tasks}
