"""Task rows -> (n, 3, T) arrays: templates (plain and a real chat template), splits, and every bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from opmix.data.tokenizer import build_byte_tokenizer
from opmix.errors import OpmixError
from opmix.instruct.examples import (
    PAD_ID,
    ROLE,
    ROLE_PAD,
    ROLE_PROMPT,
    ROLE_RESPONSE,
    STUDENT,
    prompts,
    responses,
    teacher_prompts,
)
from opmix.instruct.tasks import TaskConfig, load_tasks
from opmix.instruct.templates import PLAIN_PROMPT, PLAIN_STOP_STRINGS, PLAIN_TEACHER

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The byte tokenizer (a real PreTrainedTokenizerFast) with role tokens and a chat template: no download."""
    chat = build_byte_tokenizer()
    chat.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]})
    chat.chat_template = CHAT_TEMPLATE
    return chat


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def additions(n):
    return [{"prompt": f"{i}+{i + 1}=", "response": str(2 * i + 1)} for i in range(n)]


def load_one(tokenizer, files, seq_len=64, eval_fraction=0.2, seed=0, max_eval=None, **fields):
    config = TaskConfig(name="add", files=files, **fields)
    return load_tasks([config], tokenizer, seq_len, eval_fraction, seed, max_eval)["add"]


def test_plain_template_rows_roles_and_lengths(tmp_path, tokenizer):
    rows = [{"prompt": "12+345=", "response": "357", "demonstration": "three hundred fifty-seven"}] * 2
    files = [write_rows(tmp_path / "a.jsonl", rows)]
    task = load_one(tokenizer, files, seq_len=128, eval_fraction=0.5)
    assert task.train.shape == (1, 3, 128) and task.eval.shape == (1, 3, 128) and task.train.dtype == np.int64
    assert tokenizer.decode(prompts(task.train)[0]) == PLAIN_PROMPT.format(prompt="12+345=")
    assert tokenizer.decode(responses(task.train)[0]) == "357<|endoftext|>"
    assert tokenizer.decode(teacher_prompts(task.train)[0]) == PLAIN_TEACHER.format(
        prompt="12+345=", demonstration="three hundred fifty-seven")
    n_prompt = len(PLAIN_PROMPT.format(prompt="12+345="))  # one byte, one token
    roles = task.train[0, ROLE]
    assert (roles[:n_prompt] == ROLE_PROMPT).all() and (roles[n_prompt:n_prompt + 4] == ROLE_RESPONSE).all()
    assert (roles[n_prompt + 4:] == ROLE_PAD).all() and (task.train[0, STUDENT, n_prompt + 4:] == PAD_ID).all()
    assert task.train_tokens == n_prompt + 4
    assert task.eval_texts == [("12+345=", "357")] and task.stop_strings == PLAIN_STOP_STRINGS


def test_chat_rows_use_the_chat_template(tmp_path, chat_tokenizer):
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2="},
                         {"role": "assistant", "content": "4"}]}
    files = [write_rows(tmp_path / "chat.jsonl", [chat, chat, {"prompt": "1+1=", "response": "2"}])]
    task = load_one(chat_tokenizer, files, seq_len=128, eval_fraction=0.3)
    rows = np.concatenate([task.train, task.eval])
    texts = sorted(chat_tokenizer.decode(p) for p in prompts(rows))
    assert texts == ["<|system|>Be brief.\n<|user|>2+2=\n<|assistant|>"] * 2 + ["<|user|>1+1=\n<|assistant|>"]
    assert chat_tokenizer.convert_ids_to_tokens(prompts(rows)[0][-1]) == "<|assistant|>"  # one special token
    teachers = [chat_tokenizer.decode(t) for t in teacher_prompts(rows)]
    shown = "\n\nExample answer:\n{}\n\nNow answer it yourself.\n<|assistant|>"
    assert "<|system|>Be brief.\n<|user|>2+2=" + shown.format(4) in teachers
    assert "<|user|>1+1=" + shown.format(2) in teachers
    assert all(chat_tokenizer.decode(r) in ("4<|endoftext|>", "2<|endoftext|>") for r in responses(rows))
    assert task.stop_strings == ()


def test_held_out_split_is_seeded_and_capped(tmp_path, tokenizer):
    files = [write_rows(tmp_path / "a.jsonl", additions(20))]
    first, again = load_one(tokenizer, files, seed=1), load_one(tokenizer, files, seed=1)
    other = load_one(tokenizer, files, seed=2)
    assert len(first.train) == 16 and len(first.eval) == 4
    assert first.eval_texts == again.eval_texts and first.eval_texts != other.eval_texts
    train_prompts = {tokenizer.decode(p) for p in prompts(first.train)}
    assert not train_prompts & {PLAIN_PROMPT.format(prompt=p) for p, _ in first.eval_texts}
    assert [PLAIN_PROMPT.format(prompt=p) for p, _ in first.eval_texts] == [tokenizer.decode(p)
                                                                            for p in prompts(first.eval)]
    assert len(load_one(tokenizer, files, seed=1, max_eval=2).eval) == 2


def test_eval_files_and_compressed_files(tmp_path, tokenizer):
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in additions(5)))
    evals = write_rows(tmp_path / "eval.jsonl", [{"prompt": "9+9=", "response": "18"}])
    task = load_one(tokenizer, [str(tmp_path / "train.jsonl.gz")], eval_files=[evals])
    assert len(task.train) == 5 and task.eval_texts == [("9+9=", "18")]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "1+1="}, "line 2 has neither prompt and response nor messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "line 2: the messages do not end with an assistant"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"},
                       {"role": "user", "content": "and?"}]}, "line 2: the messages do not end with an assistant"),
        ({"prompt": "1+1=", "response": "  "}, "line 2: the response is empty; fix:"),
        ({"prompt": 3, "response": "3"}, "line 2: prompt is int, not a string; fix:"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, tokenizer, row, message):
    files = [write_rows(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, row])]
    with pytest.raises(OpmixError, match=message) as error:
        load_one(tokenizer, files)
    assert "bad.jsonl" in str(error.value) and "fix:" in str(error.value)


def test_invalid_json_and_non_jsonl_files(tmp_path, tokenizer):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(OpmixError, match="broken.jsonl line 2 is not valid JSON"):
        load_one(tokenizer, [str(tmp_path / "broken.jsonl")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OpmixError, match="notes.txt is not a JSONL file; fix:"):
        load_one(tokenizer, [str(tmp_path / "notes.txt")])


def test_numeric_scorer_needs_numbers_in_the_gold(tmp_path, tokenizer):
    files = [write_rows(tmp_path / "a.jsonl", [*additions(3), {"prompt": "x", "response": "many"}])]
    with pytest.raises(OpmixError, match="a.jsonl line 4: the response 'many' holds no number"):
        load_one(tokenizer, files, scorer="numeric")


def test_over_long_examples_dropped_with_warning_or_refused(tmp_path, tokenizer):
    long_row = {"prompt": "x" * 80, "response": "1"}
    few = [write_rows(tmp_path / "few.jsonl", [*additions(19), long_row])]
    task = load_one(tokenizer, few, seq_len=64)
    assert len(task.train) + len(task.eval) == 19
    assert len(task.warnings) == 1 and "1 of 20 examples do not fit seq_len=64" in task.warnings[0]
    many = [write_rows(tmp_path / "many.jsonl", [*additions(5), *[long_row] * 5])]
    with pytest.raises(OpmixError, match="task 'add': 5 of 10 examples do not fit seq_len=64.*fix: raise data.seq_len"):
        load_one(tokenizer, many, seq_len=64)
    with pytest.raises(OpmixError, match="task 'add': 20 of 20 examples do not fit seq_len=16"):
        load_one(tokenizer, few, seq_len=16)


def test_teacher_context_must_leave_room_for_the_response(tmp_path, tokenizer):
    rows = [{"prompt": "q", "response": "a", "demonstration": "d" * 40}] * 4
    files = [write_rows(tmp_path / "a.jsonl", rows)]
    student_only = len(PLAIN_PROMPT.format(prompt="q")) + 2
    assert student_only < 64
    with pytest.raises(OpmixError, match="4 of 4 examples do not fit seq_len=64 \\(prompt or teacher context"):
        load_one(tokenizer, files, seq_len=64)


def test_split_and_name_errors(tmp_path, tokenizer):
    one = [write_rows(tmp_path / "one.jsonl", additions(1))]
    with pytest.raises(OpmixError, match="has 1 example\\(s\\): too few to hold out an eval split; fix:"):
        load_one(tokenizer, one)
    files = [write_rows(tmp_path / "a.jsonl", additions(4))]
    config = TaskConfig(name="add", files=files)
    with pytest.raises(OpmixError, match="duplicate task name\\(s\\) \\['add'\\]; fix:"):
        load_tasks([config, config], tokenizer, 64, 0.2, 0, None)
