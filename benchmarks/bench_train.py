"""Training-loop throughput against a bare PyTorch loop, and LoRA probe step time against a full step.

    python benchmarks/bench_train.py [--model llama-5m] [--probe-model llama-30m] [--rounds 5]

Both sides run in the same process, interleaved in rounds; the script prints medians and ratios.
Targets: opmix loop >= 0.9x the bare loop's tokens/s; a probe step <= 0.8x a full step at ~30M parameters.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from opmix.data.sampler import MixtureSampler
from opmix.model import builtin_model, parameter_count
from opmix.probes.lora import make_probe
from opmix.train.loop import Trainer, make_accelerator
from opmix.train.schedule import WSDSchedule


def bare_loop(model, batches, steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def run():
        for i in range(steps):
            x = batches[i % len(batches)]
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def opmix_loop(model, data, batch, steps, seed=0):
    sampler = MixtureSampler(data, {k: 1 / len(data) for k in data}, batch, seed=seed)
    schedule = WSDSchedule(10**9, 0, 1, 0.1)
    trainer = Trainer(model, sampler, schedule, 1e-4, make_accelerator("auto"), stage="bench")

    def run():
        trainer.train_until(trainer.step + steps)

    return run


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-5m")
    parser.add_argument("--probe-model", default="llama-30m")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    data = {f"d{i}": rng.integers(0, args.vocab, size=(64, args.seq), dtype=np.int64) for i in range(3)}
    batches = [torch.as_tensor(data["d0"][i : i + args.batch], device=device) for i in range(0, 64, args.batch)]
    tokens = args.batch * args.seq * args.steps

    # 1. loop overhead: same model size, same batch, bare loop vs opmix Trainer
    ours = opmix_loop(builtin_model(args.model, args.vocab, seed=0).to(device), data, args.batch, args.steps)
    bare = bare_loop(builtin_model(args.model, args.vocab, seed=0).to(device), batches, args.steps)
    ours(), bare()  # warm-up
    t_ours, t_bare = [], []
    for _ in range(args.rounds):
        t_ours.append(timed(ours))
        t_bare.append(timed(bare))
    tps_ours, tps_bare = tokens / statistics.median(t_ours), tokens / statistics.median(t_bare)
    print(f"[loop] model {args.model}, batch {args.batch}x{args.seq}, {device}")
    print(f"  opmix Trainer {tps_ours:10.0f} tok/s | bare PyTorch {tps_bare:10.0f} tok/s | "
          f"ratio {tps_ours / tps_bare:.3f} (target >= 0.9)")

    # 2. LoRA probe step vs full step at ~30M parameters, both through the opmix Trainer, on two shapes:
    #    a Pythia-31M-like model (hidden 256, 6 layers, vocabulary 50304, untied: most parameters in the
    #    embeddings, as usual at this size) and llama-30m with a small vocabulary (most parameters in the blocks).
    shapes = {
        "pythia-31m-shape": (lambda: _pythia_like(), 50304),
        f"{args.probe_model} (vocab {args.vocab})": (lambda: builtin_model(args.probe_model, args.vocab, seed=0),
                                                     args.vocab),
    }
    for name, (build, vocab) in shapes.items():
        shape_data = {k: v % vocab for k, v in data.items()}
        full_model = build().to(device)
        n = parameter_count(full_model)
        full = opmix_loop(full_model, shape_data, args.batch, args.steps)
        probe = opmix_loop(make_probe(build()).to(device), shape_data, args.batch, args.steps)
        full(), probe()
        t_full, t_probe = [], []
        for _ in range(args.rounds):
            t_full.append(timed(full))
            t_probe.append(timed(probe))
        ratio = statistics.median(t_probe) / statistics.median(t_full)
        print(f"[probe] {name} ({n / 1e6:.1f}M params), batch {args.batch}x{args.seq}, {device}")
        print(f"  full step {1000 * statistics.median(t_full) / args.steps:8.1f} ms | LoRA probe step "
              f"{1000 * statistics.median(t_probe) / args.steps:8.1f} ms | ratio {ratio:.3f} (target <= 0.8)")
        del full_model, full, probe


def _pythia_like():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50304, hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


if __name__ == "__main__":
    main()
