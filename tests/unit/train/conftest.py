"""Tiny instruction examples in the ``(3, T)`` row layout, tokenized with the built-in byte tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

SEQ_LEN = 24
VOCAB = 257  # the byte tokenizer: 256 bytes, then EOS (256)
EOS = 256


def instruction_rows(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3, SEQ_LEN)`` sums: prompt "a+b=", response the answer then EOS, teacher context a worked example
    (the demonstration) before the prompt. Prompt and context lengths vary, so padding is exercised."""
    from opmix.data.tokenizer import load_tokenizer
    from opmix.instruct.examples import pack_example

    tokenizer = load_tokenizer("builtin:bytes")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, 60, size=2))
        prompt = tokenizer.encode(f"{a}+{b}=")
        response = tokenizer.encode(str(a + b)) + [EOS]
        teacher = tokenizer.encode(f"{a}+{b}={a + b}\n{a}+{b}=")
        rows.append(pack_example(prompt, response, teacher, SEQ_LEN))
    return np.stack(rows)


@pytest.fixture
def make_rows():
    """``make_rows(n, seed=0)``: ``instruction_rows`` (``SEQ_LEN`` = 24, byte ids, EOS = 256)."""
    return instruction_rows


@pytest.fixture
def instruct_tasks() -> dict[str, np.ndarray]:
    return {"sums": instruction_rows(32, seed=0), "more": instruction_rows(32, seed=1)}
