"""How an instruction example becomes the student's prompt, the response and the teacher's context (as text).

With a tokenizer that has a chat template (Hugging Face ``tokenizer.chat_template``), the prompt is the model's own
format: ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``; the response is the assistant
content followed by the EOS token.

Without one, ONE plain template is used (``PLAIN_PROMPT``), the response again being its text followed by EOS::

    ### Instruction:
    {prompt}
    ### Response:
    {response}<EOS>

The teacher of self-distillation (SDFT, Shenfeld et al.) is the same model shown a gold demonstration before it
answers. Its context is, without a chat template (``PLAIN_TEACHER``)::

    ### Instruction:
    {prompt}
    ### Example answer:
    {demonstration}
    ### Response:

and with one, the prompt's last user message rewritten as ``CHAT_TEACHER`` (``{prompt}`` is that message), then the
chat template as for the student. The plain teacher ends with the student's own ``### Response:`` cue, so both
answer in the same format, and it stays short: a byte-level demo model at ``seq_len`` 96 must fit the teacher's
context and the response in one row.

A conversation of several turns, under the plain template, is written one message per line as ``role: content``;
a lone user message is written as its content.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAIN_PROMPT = "### Instruction:\n{prompt}\n### Response:\n"
PLAIN_TEACHER = "### Instruction:\n{prompt}\n### Example answer:\n{demonstration}\n### Response:\n"
CHAT_TEACHER = "{prompt}\n\nExample answer:\n{demonstration}\n\nNow answer it yourself."
# a model that has not learned to stop may start the next example: generation stops there
PLAIN_STOP_STRINGS = ("\n### Instruction:",)


@dataclass(frozen=True)
class Example:
    """One example as read from its file: the conversation before the answer, the answer, the demonstration."""

    messages: tuple[dict, ...]  # {"role", "content"} dicts; a prompt/response row is one user message
    response: str
    demonstration: str  # what the SDFT teacher is shown; the response unless the row gives its own
    source: str  # "file line N", for error messages


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(messages) -> str:
    """The conversation as plain text: a lone user message is its content, more turns ``role: content`` lines."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def render_prompt(tokenizer, messages) -> str:
    """The student's context: everything before its answer."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return PLAIN_PROMPT.format(prompt=prompt_text(messages))


def render_teacher(tokenizer, messages, demonstration: str) -> str:
    """The teacher's context: the prompt with the gold demonstration shown before the answer."""
    if not has_chat_template(tokenizer):
        return PLAIN_TEACHER.format(prompt=prompt_text(messages), demonstration=demonstration)
    messages = [dict(m) for m in messages]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if users:
        last = messages[users[-1]]
        last["content"] = CHAT_TEACHER.format(prompt=last["content"], demonstration=demonstration)
    else:  # a prompt of system turns only: the demonstration comes as a user turn of its own
        messages.append({"role": "user", "content": CHAT_TEACHER.format(prompt="", demonstration=demonstration)
                         .lstrip()})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_strings(tokenizer) -> tuple[str, ...]:
    """Where generation stops besides EOS: the plain template's next instruction; nothing with a chat template."""
    return () if has_chat_template(tokenizer) else PLAIN_STOP_STRINGS
