"""Benchmark (a script, not a test): how noisy is a domain's eval loss on an eval set of n sequences, against the
differences between mixtures that the eval loss must resolve? It chooses ``DataConfig.max_eval_sequences``.

    python benchmarks/bench_eval_noise.py [--steps 120] [--branch-steps 30] [--pool 768] [--draws 400] [--threads 1]

Setting: the embedded demo corpus (code, prose, records), the byte tokenizer, seq_len 128, ``llama-1m``.
Each domain holds out a large pool (``eval_fraction`` 0.3, ``--pool`` sequences spread over it) standing in for the
domain; every pool sequence's loss is computed once per model, then eval sets of n sequences are drawn from the
pool many times (``--draws``) in two ways:

- ``contig``: n consecutive sequences from a random start (what opmix did before: the first n of the eval split);
- ``spread``: one random sequence from each of n equal strata of the pool (what opmix does now: n sequences at
  evenly spaced indices of the eval split, over a split whose documents are a random sample).

For each n it prints the standard deviation over draws of a model's eval loss (``sd L``) and of the difference
between two models' eval losses on the same draw (``sd D``: what comparing proxies, or OP-Mix with ERM, rests on),
against the difference itself (``|D|``, on the whole pool) for two pairs of models:

- ``scratch``: two models trained ``--steps`` steps from the same init, on the uniform mixture and on 60% prose;
- ``branch``: the uniform model continued ``--branch-steps`` more steps on each of the two mixtures (nearer to
  OP-Mix's proxies, which differ from one base model by a short stretch of training).

The noise is small enough when ``sd D`` is under 1/5 of ``|D|`` on every domain. About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from opmix.data.cache import prepare_domain
from opmix.data.demo import build_demo_corpus
from opmix.data.sampler import MixtureSampler
from opmix.data.tokenizer import load_tokenizer
from opmix.model import builtin_model

SEQ_LEN, BATCH, LR, EVAL_FRACTION = 128, 16, 3e-3, 0.3
SIZES = (32, 64, 128, 256)
UNIFORM = {"code": 1 / 3, "prose": 1 / 3, "records": 1 / 3}
SKEWED = {"code": 0.2, "prose": 0.6, "records": 0.2}


def train(model, train_sets, weights, steps: int, seed: int, warmup: int = 10):
    """Plain AdamW with a linear warm-up; the same seed gives the same batches."""
    sampler = MixtureSampler(train_sets, weights, BATCH, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / warmup)
        batch, _ = sampler.next_batch()
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model


@torch.no_grad()
def sequence_losses(model, sequences: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Mean next-token cross-entropy of each sequence (nats)."""
    model.eval()
    out = []
    for start in range(0, len(sequences), batch_size):
        batch = torch.as_tensor(np.asarray(sequences[start : start + batch_size], dtype=np.int64))
        logits = model(input_ids=batch).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
        out.append(loss.view(len(batch), -1).mean(dim=1).numpy())
    return np.concatenate(out)


def draws(pool: int, n: int, count: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """(count, n) indices into the pool: ``contig`` runs or ``spread`` stratified picks."""
    if how == "contig":
        starts = rng.integers(0, pool - n + 1, size=count)
        return starts[:, None] + np.arange(n)
    edges = np.arange(n + 1) * pool // n
    return edges[:-1] + (rng.random((count, n)) * (edges[1:] - edges[:-1])).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--branch-steps", type=int, default=30)
    parser.add_argument("--pool", type=int, default=768, help="eval sequences per domain standing for the domain")
    parser.add_argument("--draws", type=int, default=400)
    # one thread: on a shared 2-core machine a second thread mostly waits (measured 0.3 s/step against 0.7-5 s)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = load_tokenizer("builtin:bytes")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_demo_corpus(Path(tmp) / "corpus")
        domains = {
            name: prepare_domain(name, files, tokenizer, SEQ_LEN, Path(tmp) / "cache", eval_fraction=EVAL_FRACTION,
                                 max_eval_sequences=args.pool)
            for name, files in corpus.items()
        }
        train_sets = {name: np.asarray(d.train) for name, d in domains.items()}
        pools = {name: np.asarray(d.eval) for name, d in domains.items()}
    for name, pool in pools.items():
        print(f"{name}: pool of {len(pool)} eval sequences, {len(train_sets[name])} train sequences")

    base = builtin_model("llama-1m", vocab_size=len(tokenizer), seed=0, max_positions=SEQ_LEN)
    uniform = train(copy.deepcopy(base), train_sets, UNIFORM, args.steps, seed=1)
    skewed = train(copy.deepcopy(base), train_sets, SKEWED, args.steps, seed=1)
    uniform_more = train(copy.deepcopy(uniform), train_sets, UNIFORM, args.branch_steps, seed=2)
    skewed_more = train(copy.deepcopy(uniform), train_sets, SKEWED, args.branch_steps, seed=2)
    models = {"uniform": uniform, "skewed": skewed, "uniform+": uniform_more, "skewed+": skewed_more}
    losses = {m: {d: sequence_losses(model, pools[d]) for d in pools} for m, model in models.items()}
    pairs = {"scratch": ("uniform", "skewed"), "branch": ("uniform+", "skewed+")}
    print(f"trained and evaluated in {time.perf_counter() - started:.0f} s")

    rng = np.random.default_rng(0)
    header = f"{'domain':<8} {'n':>4} {'sd L contig':>11} {'sd L spread':>11}"
    for pair in pairs:
        header += f" | {pair:<7} {'sd D contig':>11} {'sd D spread':>11} {'sd/|D|':>7}"
    print("\n" + header)
    worst = {n: 0.0 for n in SIZES}  # the largest spread sd D / |D| over domains and pairs
    for domain, pool in pools.items():
        base_loss = losses["uniform"][domain]
        diffs = {p: losses[a][domain] - losses[b][domain] for p, (a, b) in pairs.items()}
        summary = ", ".join(f"{p} |D| {abs(d.mean()):.4f}" for p, d in diffs.items())
        print(f"{domain:<8} pool loss {base_loss.mean():.4f}; {summary}")
        for n in SIZES:
            if n > len(pool) // 2:
                continue  # the pool would stand in for the domain no better than the eval set itself
            picks = {how: draws(len(pool), n, args.draws, how, rng) for how in ("contig", "spread")}
            row = f"{'':<8} {n:>4} {base_loss[picks['contig']].mean(1).std():11.4f}"
            row += f" {base_loss[picks['spread']].mean(1).std():11.4f}"
            for p, d in diffs.items():
                sd_contig = d[picks["contig"]].mean(1).std()
                sd_spread = d[picks["spread"]].mean(1).std()
                ratio = sd_spread / abs(d.mean())
                worst[n] = max(worst[n], ratio)
                row += f" | {'':<7} {sd_contig:11.4f} {sd_spread:11.4f} {ratio:7.3f}"
            print(row)
    print("\nworst spread sd D / |D| over domains and pairs: "
          + ", ".join(f"n={n}: {r:.3f}" for n, r in worst.items() if r))
    print(f"elapsed {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
