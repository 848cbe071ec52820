"""What the laws of instruction tuning are fitted on (SPEC section 3): each task's error rate, 1 - accuracy of
greedy generations under the task's scorer, or (``metric: loss``) the cross-entropy of the gold responses.

Measured at the end of a training step (``final``), a model gets both figures per task, so a run fitted on loss
still reports accuracy. Compute: prompts are evaluation (2 N per token), generated tokens 2 N each (SPEC section 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from opmix.instruct.generate import score_task
from opmix.run.ledger import eval_flops, generation_flops
from opmix.train.learners import IGNORE_INDEX, sft_inputs
from opmix.workspace import Measured


class TaskMetric:
    def __init__(self, tasks: Mapping, tokenizer, kind: str, batch_size: int, n_params: int, pad_id: int):
        self.tasks, self.tokenizer, self.kind = tasks, tokenizer, kind
        self.batch_size, self.n_params, self.pad_id = batch_size, n_params, pad_id

    def __call__(self, model: torch.nn.Module, names: Sequence[str], final: bool = False) -> Measured:
        values, extra, flops, tokens = {}, {}, 0.0, 0
        for name in names:
            task, figures = self.tasks[name], {}
            if self.kind == "error_rate" or final:
                score = score_task(model, self.tokenizer, task, self.batch_size)
                generated = score["generated_tokens"]
                flops += eval_flops(self.n_params, score["prompt_tokens"]) + generation_flops(self.n_params, generated)
                tokens += score["prompt_tokens"] + generated
                figures.update(accuracy=score["accuracy"], error_rate=score["error_rate"])
            if self.kind == "loss" or final:
                loss, read = response_loss(model, task.eval, self.batch_size, self.pad_id)
                flops += eval_flops(self.n_params, read)
                tokens += read
                figures["response_loss"] = loss
            values[name] = figures["error_rate" if self.kind == "error_rate" else "response_loss"]
            extra[name] = figures
        return Measured(values, flops, tokens, extra if final else {})


@torch.no_grad()
def response_loss(model: torch.nn.Module, rows, batch_size: int, pad_id: int) -> tuple[float, int]:
    """Mean cross-entropy (nats) of the gold response tokens given their prompts, over (n, 3, T) example rows (the
    SFT learner's own inputs and masking); and the tokens read (prompts and responses)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, read = 0.0, 0, 0
    for start in range(0, len(rows), batch_size):
        batch = torch.as_tensor(rows[start:start + batch_size], device=device)
        input_ids, attention_mask, labels = sft_inputs(batch, pad_id)
        scored = int((labels[:, 1:] != IGNORE_INDEX).sum())  # the model shifts labels by one
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        total += float(loss) * scored
        count += scored
        read += int(attention_mask.sum())
    model.train(was_training)
    return total / max(count, 1), read
