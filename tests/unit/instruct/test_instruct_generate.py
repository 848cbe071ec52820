"""Batched generation on the built-in tiny Llama: equal to one-by-one greedy, EOS and stop-string cuts, seeded
sampling, mode restored, and scoring a task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opmix.data.tokenizer import build_byte_tokenizer
from opmix.instruct.examples import pack_example
from opmix.instruct.generate import cut_at_stop, generate, score_task
from opmix.instruct.scorers import make_scorer
from opmix.instruct.tasks import TaskConfig, TaskData
from opmix.model import builtin_model

TEXTS = ["hello", "a", "### Instruction:\n12+3=\n### Response:\n", "xyz xyz", "the quick brown fox"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """A random tiny Llama that only ever picks printable ASCII bytes: zero logits for every other token (EOS
    included) lose to the largest of 95 random ones, so decoded outputs are plain text."""
    model = builtin_model("llama-tiny", vocab_size=len(tokenizer), seed=0, max_positions=128)
    with torch.no_grad():
        keep = torch.zeros(len(tokenizer), dtype=torch.bool)
        keep[0x20:0x7F] = True
        model.lm_head.weight[~keep] = 0.0
    return model


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


def test_batched_generation_equals_one_by_one(model, tokenizer, prompts):
    batched = generate(model, tokenizer, prompts, 10, batch_size=3)
    singles = [generate(model, tokenizer, [p], 10)[0] for p in prompts]
    assert batched == singles
    assert all(len(ids) == 10 for ids in batched)
    assert batched.generated_tokens == 10 * len(prompts)
    assert batched.prompt_tokens == sum(len(p) for p in prompts)


def test_stop_strings_cut_the_output_and_end_generation(model, tokenizer, prompts):
    full = generate(model, tokenizer, prompts[:1], 16)
    text = tokenizer.decode(full[0])
    stop = text[5:7]
    start = text.find(stop)  # the stop string may occur before position 5 too: the first one counts
    cut = generate(model, tokenizer, prompts[:1], 16, stop_strings=[stop])
    assert cut[0] == full[0][:start]  # ASCII bytes: one token per character
    assert cut.generated_tokens == start + len(stop) < 16  # the row stopped once the stop string was complete
    assert cut_at_stop(full[0], tokenizer, ["not in there"]) == full[0]


def test_eos_of_the_model_config_ends_and_cuts(model, tokenizer, prompts):
    full = generate(model, tokenizer, prompts[:2], 12)
    eos = full[0][4]
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        cut = generate(model, tokenizer, prompts[:2], 12)
    finally:
        model.generation_config.eos_token_id = original
    assert cut[0] == full[0][: full[0].index(eos)]
    assert cut[1] == full[1][: full[1].index(eos)] if eos in full[1] else cut[1] == full[1]


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng(model, tokenizer, prompts):
    state = torch.get_rng_state()
    first = generate(model, tokenizer, prompts, 12, do_sample=True, seed=1)
    again = generate(model, tokenizer, prompts, 12, do_sample=True, seed=1)
    other = generate(model, tokenizer, prompts, 12, do_sample=True, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == again and first != other
    assert first != generate(model, tokenizer, prompts, 12)  # sampling, not greedy


def test_training_mode_is_restored(model, tokenizer, prompts):
    model.train()
    generate(model, tokenizer, prompts[:1], 2)
    assert model.training
    model.eval()
    generate(model, tokenizer, prompts[:1], 2)
    assert not model.training


def test_score_task_accuracy_against_gold(model, tokenizer, prompts):
    answers = [tokenizer.decode(ids) for ids in generate(model, tokenizer, prompts[:2], 6)]
    gold = [answers[0], "certainly not this"]
    rows = np.stack([pack_example(p, [*tokenizer(g)["input_ids"], tokenizer.eos_token_id], p, seq_len=64)
                     for p, g in zip(prompts[:2], gold)])  # (2, 3, 64)
    scorer = make_scorer(TaskConfig(name="t", files=["x.jsonl"]), eos_token=tokenizer.eos_token)
    task = TaskData("t", train=rows, eval=rows, scorer=scorer, max_new_tokens=6,
                    eval_texts=[(TEXTS[0], gold[0]), (TEXTS[1], gold[1])], train_tokens=0)
    result = score_task(model, tokenizer, task, batch_size=2)
    assert result == {"accuracy": 0.5, "error_rate": 0.5, "n": 2, "generated_tokens": 12,
                      "prompt_tokens": len(prompts[0]) + len(prompts[1])}
