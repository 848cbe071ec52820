"""Benchmark ProxyModel (a script, not a test): speed against an explicitly merged model, and peak memory.

    python benchmarks/bench_proxy.py [--device cpu|cuda] [--reps 7] [--batch 8] [--seq 256]

1. Throughput: tokens/s of a proxy forward (4 probes, r=16, merged per forward) against a forward of a deep copy
   with the same weights merged in; medians of interleaved repetitions. Target: ratio >= 0.85.
2. Peak memory of evaluating 12 proxies (Dirichlet weights) against evaluating the base model once, each in a
   fresh child process, counted from just after the model is built (probe factors count against the proxy);
   12 forwards of the base model are shown too, to separate allocator growth from the proxy's own cost.
   CPU: peak RSS (VmHWM, reset after the build; MALLOC_MMAP_THRESHOLD_ set, see memory());
   CUDA: torch.cuda.max_memory_allocated. Target: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opmix.probes import ProbeDelta, ProxyModel

N_PROBES, RANK, N_PROXIES = 4, 16, 12


def build_model(device: str, dtype: str = "float32") -> LlamaForCausalLM:
    """~17M parameters: 6 layers, hidden 384, vocabulary 8192, random init (no download)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024)
    return LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()


def random_probes(model, device: str) -> list[ProbeDelta]:
    gen = torch.Generator().manual_seed(1)
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    probes = []
    for _ in range(N_PROBES):
        factors = {}
        for name in targets:
            out_features, in_features = model.get_submodule(name).weight.shape
            lora_a = torch.randn(RANK, in_features, generator=gen) * 0.02  # (r, in)
            lora_b = torch.randn(out_features, RANK, generator=gen) * 0.02  # (out, r)
            factors[name] = (lora_a.to(device), lora_b.to(device), 2.0)
        probes.append(ProbeDelta(factors=factors))
    return probes


def batch(args, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, 8192, (args.batch, args.seq), generator=gen).to(device)  # (B, T)


def timed_loss(model, ids, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.item()  # .item() waits for the device
    return time.perf_counter() - start


@torch.no_grad()
def throughput(args) -> None:
    device = args.device
    model, ids = build_model(device, args.dtype), batch(args, device)
    probes = random_probes(model, device)
    x = [0.4, 0.3, 0.2, 0.1]
    merged = copy.deepcopy(model)
    for name in probes[0].factors:
        layer = merged.get_submodule(name)  # merge in float32, round once to the model's dtype
        layer.weight.copy_(layer.weight.float() + sum(w * p.delta(name) for w, p in zip(x, probes)))
    proxy = ProxyModel(model, probes)
    proxy.set_weights(x)
    times = {"base": [], "proxy": [], "merged": []}
    for _ in range(2):  # warm-up
        timed_loss(merged, ids, device), timed_loss(model, ids, device)
    for _ in range(args.reps):  # interleaved, so drift (thermal, other load) hits all three alike
        times["base"].append(timed_loss(model, ids, device))
        with proxy:
            times["proxy"].append(timed_loss(model, ids, device))
        times["merged"].append(timed_loss(merged, ids, device))
    with proxy:
        gap = (model(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max().item()
    tokens = ids.numel()
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{device}, {args.dtype}] model {n_params / 1e6:.1f}M params, batch {tuple(ids.shape)}, "
          f"{N_PROBES} probes r={RANK}, {args.reps} reps (median)")
    for k, v in rate.items():
        print(f"  {k:>6}: {v:10.0f} tokens/s  ({statistics.median(times[k]) * 1e3:.1f} ms/batch)")
    print(f"  proxy / merged throughput: {rate['proxy'] / rate['merged']:.3f}x (target >= 0.85); "
          f"max |logit gap| {gap:.2e}")


def proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # reported in kB


def reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0), so the peak of model building (random init holds
    temporaries) does not mask the evaluation's; return the current RSS. ru_maxrss cannot be reset."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return proc_status_bytes("VmRSS")


@torch.no_grad()
def child(args) -> None:
    """One measurement in a fresh process; prints JSON {"base_bytes": ..., "peak_bytes": ...}."""
    device, (kind, repeats) = args.device, args.child.split(":")
    model, ids = build_model(device, args.dtype), batch(args, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = reset_peak_rss()
    proxy = ProxyModel(model, random_probes(model, device)) if kind == "proxy" else None
    gen = torch.Generator().manual_seed(3)
    for _ in range(int(repeats)):
        if proxy is not None:
            x = torch.rand(N_PROBES, generator=gen).log().neg()  # Exp(1) draws; normalised: Dirichlet(1)
            proxy.set_weights((x / x.sum()).tolist())
            proxy.attach()
        model(input_ids=ids, labels=ids).loss.item()
        if proxy is not None:
            proxy.detach()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else proc_status_bytes("VmHWM")
    print(json.dumps({"base_bytes": baseline, "peak_bytes": peak}))


def memory(args) -> None:
    # glibc keeps freed blocks and fragments over repeated forwards (RSS of the *base* model alone grows ~25% over
    # 12 forwards); serving blocks >= 64 KiB by mmap returns them to the OS, so RSS tracks live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    extra = {}
    for kind in ("base:1", f"base:{N_PROXIES}", f"proxy:{N_PROXIES}"):
        cmd = [sys.executable, __file__, "--child", kind, "--device", args.device, "--batch", str(args.batch),
               "--dtype", args.dtype, "--seq", str(args.seq)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1]
        result = json.loads(out)
        extra[kind] = (result["peak_bytes"] - result["base_bytes"]) / 2**20
    unit = "allocated" if args.device == "cuda" else "RSS"
    proxies, once, repeated = extra[f"proxy:{N_PROXIES}"], extra["base:1"], extra[f"base:{N_PROXIES}"]
    print(f"[{args.device}] peak {unit} above the built model: base x1 {once:.1f} MiB, base x{N_PROXIES} "
          f"{repeated:.1f} MiB, {N_PROXIES} proxies {proxies:.1f} MiB (incl. {N_PROBES} probes' factors)")
    print(f"  {N_PROXIES} proxies / base x1: {proxies / once:.3f}x (target <= 1.3); "
          f"/ base x{N_PROXIES}: {proxies / repeated:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is available)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "base:N" or "proxy:N", N forwards
    args = parser.parse_args()
    if args.child:
        return child(args)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        args.device = device
        throughput(args)
        memory(args)


if __name__ == "__main__":
    main()
