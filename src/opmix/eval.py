"""Per-domain evaluation: mean token cross-entropy on each domain's held-out sequences."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


@torch.no_grad()
def evaluate(model, eval_sets: Mapping[str, np.ndarray], batch_size: int = 16) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) per domain; every sequence has the same length, so the mean over
    batches weighted by batch size is the mean over tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False
    )
    losses: dict[str, float] = {}
    for name, sequences in eval_sets.items():
        total, count = 0.0, 0
        for start in range(0, len(sequences), batch_size):
            batch = torch.as_tensor(np.asarray(sequences[start : start + batch_size], dtype=np.int64), device=device)
            with autocast:
                loss = model(input_ids=batch, labels=batch).loss  # mean over the batch's B*(T-1) tokens
            total += loss.float().item() * len(batch)
            count += len(batch)
        losses[name] = total / count
    model.train(was_training)
    return losses


def mean_loss(losses: Mapping[str, float]) -> float:
    return float(np.mean(list(losses.values())))
