"""How one instruction example is laid out as a token array, so that the mixture sampler, the learners and the
scorers share one format.

An example is a ``(3, T)`` int64 row (a task's train or eval split is ``(n, 3, T)``; ``T`` = ``data.seq_len``):

    row[STUDENT]  prompt tokens then response tokens (the response ends with EOS), then PAD_ID
    row[ROLE]     ROLE_PROMPT over the prompt, ROLE_RESPONSE over the response, ROLE_PAD after
    row[TEACHER]  the teacher's context for self-distillation: the prompt rendered with the demonstration
                  (see ``opmix.instruct.tasks``), then PAD_ID; SFT ignores it

``PAD_ID`` (-1) is never a token id, so a row's lengths are read from the row itself; the learners replace it by
the tokenizer's pad id (or 0) before any forward pass and never train on it.
"""

from __future__ import annotations

import numpy as np
import torch

STUDENT, ROLE, TEACHER = 0, 1, 2
ROLE_PAD, ROLE_PROMPT, ROLE_RESPONSE = 0, 1, 2
PAD_ID = -1


def pack_example(prompt: list[int], response: list[int], teacher_prompt: list[int], seq_len: int) -> np.ndarray:
    """One ``(3, seq_len)`` row; the caller has checked that prompt + response and the teacher's prompt fit."""
    if len(prompt) + len(response) > seq_len or len(teacher_prompt) > seq_len:
        raise ValueError(f"example of {len(prompt)} + {len(response)} tokens does not fit seq_len={seq_len}")
    row = np.full((3, seq_len), PAD_ID, dtype=np.int64)
    row[ROLE] = ROLE_PAD
    n_prompt, n_total = len(prompt), len(prompt) + len(response)
    row[STUDENT, :n_total] = [*prompt, *response]
    row[ROLE, :n_prompt] = ROLE_PROMPT
    row[ROLE, n_prompt:n_total] = ROLE_RESPONSE
    row[TEACHER, : len(teacher_prompt)] = teacher_prompt
    return row


def prompt_lengths(batch: torch.Tensor | np.ndarray) -> list[int]:
    """Prompt length of each row of a ``(B, 3, T)`` batch."""
    roles = np.asarray(batch[:, ROLE])
    return [int(n) for n in (roles == ROLE_PROMPT).sum(axis=1)]


def prompts(batch: torch.Tensor | np.ndarray) -> list[list[int]]:
    """The prompt tokens of each row (the student's context before its response)."""
    student = np.asarray(batch[:, STUDENT])
    return [student[i, :n].tolist() for i, n in enumerate(prompt_lengths(batch))]


def responses(batch: torch.Tensor | np.ndarray) -> list[list[int]]:
    """The gold response tokens of each row (EOS included)."""
    student, roles = np.asarray(batch[:, STUDENT]), np.asarray(batch[:, ROLE])
    return [student[i, roles[i] == ROLE_RESPONSE].tolist() for i in range(len(student))]


def teacher_prompts(batch: torch.Tensor | np.ndarray) -> list[list[int]]:
    """The teacher's context of each row (prompt with the demonstration)."""
    teacher = np.asarray(batch[:, TEACHER])
    return [row[row != PAD_ID].tolist() for row in teacher]
