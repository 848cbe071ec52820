"""Continual instruction-tuning benchmark on the demo tasks (``opmix instruct demo``'s): per method and seed, every
task's final accuracy, the forgetting of T1, the average final accuracy and the compute by kind; OP-Mix against
the grid of new-task fractions at every stage; batched greedy decoding against the model's own ``generate``.

    python benchmarks/bench_instruct.py --out DIR [--seeds 0,1] [--jobs 2]

1. The start model: the demo's warm-up (a small byte-level Llama that learned the prompt/response format), once.
2. Runs (each its own CLI run, resumable): SFT sequential, SFT replay, SFT grid (OP-Mix plus the grid, so OP-Mix's
   rows come from it), SDFT sequential, SDFT OP-Mix; ``--jobs`` worker processes of one thread each.
3. Tables: DIR/instruct_bench.md and .csv, and the targets of issue 11 checked against them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

RUNS = (("sft", "grid"), ("sft", "sequential"), ("sft", "replay"), ("sdft", "sequential"), ("sdft", "opmix"))


def _cli(args: list[str], log: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.run([sys.executable, "-m", "opmix.cli", "-q", *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode


def _label(learner: str, method: str) -> str:
    return f"{learner.upper()} {'OP-Mix' if method in ('opmix', 'grid') else method}"


def generation_speed(data_dir: Path, repeats: int = 7, new_tokens: int = 32) -> dict:
    """Tokens/s of ``opmix.instruct.generate.generate`` against ``model.generate`` called directly on the same
    left-padded batch (64 eval prompts of the first demo task), interleaved, medians. The model is the demo's
    architecture at random init, which rarely ends an answer early, so both decode ``new_tokens`` tokens a row."""
    import torch

    from opmix.data.tokenizer import load_tokenizer
    from opmix.instruct.demo import MODEL, ORDER
    from opmix.instruct.examples import prompts
    from opmix.instruct.generate import generate
    from opmix.instruct.tasks import TaskConfig, load_tasks
    from opmix.model import builtin_model

    tokenizer = load_tokenizer("builtin:bytes")
    model = builtin_model(MODEL, vocab_size=len(tokenizer), seed=0, max_positions=128).eval()
    folder = data_dir / ORDER[0]
    task = load_tasks([TaskConfig(name=ORDER[0], files=[str(folder / "train.jsonl")],
                                  eval_files=[str(folder / "eval.jsonl")])], tokenizer, 96, 0.1, 0, 64)[ORDER[0]]
    batch = prompts(task.eval)
    width, pad = max(map(len, batch)), tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    ours, direct = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(model, tokenizer, batch, max_new_tokens=new_tokens, batch_size=len(batch))
        ours.append(out.generated_tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        with torch.no_grad():
            raw = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        seconds = time.perf_counter() - start
        new = raw[:, width:]
        tokens = sum(int((row != pad).cumprod(0).sum()) for row in new)  # up to the first EOS/pad, as ours counts
        direct.append(tokens / seconds)
    return {"ours_tokens_per_s": statistics.median(ours), "direct_tokens_per_s": statistics.median(direct),
            "ratio": statistics.median(ours) / statistics.median(direct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tables-only", action="store_true", help="only tabulate the runs that finished")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from opmix.instruct.demo import demo_instruct_config, train_demo_start_model

    args.out.mkdir(parents=True, exist_ok=True)
    start = train_demo_start_model(args.out / "start")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = []
    for seed in seeds:
        config = args.out / f"config_s{seed}.yaml"
        config.write_text(yaml.safe_dump(demo_instruct_config(args.out / "start" / "data", start, seed)))
        for learner, method in RUNS:
            out = args.out / f"s{seed}" / f"{learner}-{method}"
            out.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((seed, learner, method, out, ["instruct", "--config", str(config), "--out", str(out),
                                                      "--method", method, f"learner={learner}"]))
    if args.tables_only:
        codes = [0 if (job[3] / "summary.json").is_file() else -1 for job in jobs]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(lambda job: _cli(job[4], job[3].with_suffix(".log")), jobs))
    rows, grid_rows = [], []
    for (seed, learner, method, out, _), code in zip(jobs, codes):
        if code != 0:
            print(f"{'not finished' if code == -1 else f'FAILED ({code})'}: {out}; see {out.with_suffix('.log')}")
            continue
        summary = json.loads((out / "summary.json").read_text())
        tasks = summary["domains"]
        accuracy = {f"acc_{t}": summary["accuracy"][t] for t in tasks}
        rows.append({"seed": seed, "method": _label(learner, method), **accuracy,
                     "forgetting_T1": summary["forgetting"][tasks[0]], "mean_accuracy": summary["mean_accuracy"],
                     "flops": sum(v for k, v in summary["flops_by_kind"].items()),
                     **{f"flops_{k}": v for k, v in summary["flops_by_kind"].items()}})
        for stage in summary["stages"]:
            grid = stage.get("grid")
            if grid:
                best, chosen = 1 - grid["best_loss"], 1 - grid["chosen_loss"]
                grid_rows.append({"seed": seed, "stage": stage["stage"], "best_r": grid["best_r"],
                                  "best_mean_accuracy": best, "chosen_r": grid["chosen_r"],
                                  "opmix_mean_accuracy": chosen, "gap_points": 100 * (best - chosen)})
    speed = generation_speed(args.out / "start" / "data")
    write_tables(args.out, rows, grid_rows, speed)


def write_tables(out: Path, rows: list[dict], grid_rows: list[dict], speed: dict) -> None:
    with open(out / "instruct_bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}, key=lambda k: (k != "seed", k)))
        writer.writeheader()
        writer.writerows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    accuracy_keys = [k for k in rows[0] if k.startswith("acc_")] if rows else []
    lines = ["# Continual instruction tuning on the demo tasks", "",
             "| method | " + " | ".join(k[4:] for k in accuracy_keys) + " | average | forgetting T1 | FLOPs | "
             "generation | teacher |", "|---" * (len(accuracy_keys) + 6) + "|"]
    mean = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        avg = {k: statistics.mean(r[k] for r in mine) for k in mine[0] if k not in ("seed", "method")}
        mean[method] = avg
        lines.append(f"| {method} ({len(mine)} seeds) | " + " | ".join(f"{avg[k]:.3f}" for k in accuracy_keys)
                     + f" | {avg['mean_accuracy']:.3f} | {avg['forgetting_T1']:+.3f} | {avg['flops']:.3e} | "
                     f"{avg.get('flops_generation', 0):.2e} | {avg.get('flops_teacher', 0):.2e} |")
    lines += ["", "OP-Mix against the grid (mean accuracy over the seen tasks, SFT):", "",
              "| seed | stage | best r | best | OP-Mix r | OP-Mix | gap (points) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {g['seed']} | {g['stage']} | {g['best_r']:.2f} | {g['best_mean_accuracy']:.3f} | {g['chosen_r']:.3f} "
              f"| {g['opmix_mean_accuracy']:.3f} | {g['gap_points']:+.1f} |" for g in grid_rows]
    lines += ["", f"Batched greedy decoding: {speed['ours_tokens_per_s']:.0f} tokens/s against "
              f"{speed['direct_tokens_per_s']:.0f} for model.generate directly: {speed['ratio']:.2f}x (target >= 0.9x)"]
    checks = []
    if {"SFT OP-Mix", "SDFT sequential"} <= set(mean):
        a, b = mean["SFT OP-Mix"], mean["SDFT sequential"]
        checks.append(f"SFT + OP-Mix average {a['mean_accuracy']:.3f} vs SDFT sequential {b['mean_accuracy']:.3f}, "
                      f"at {a['flops'] / b['flops']:.1%} of its compute (target: >=, at <= 15%)")
    for learner in ("SFT", "SDFT"):
        if {f"{learner} OP-Mix", f"{learner} sequential"} <= set(mean):
            gain = mean[f"{learner} OP-Mix"]["mean_accuracy"] - mean[f"{learner} sequential"]["mean_accuracy"]
            checks.append(f"{learner}: OP-Mix over sequential {100 * gain:+.1f} points (target >= +5)")
    if grid_rows:
        checks.append(f"OP-Mix vs grid best: worst gap {max(g['gap_points'] for g in grid_rows):+.1f} points "
                      "(target <= 2)")
    lines += ["", *[f"- {c}" for c in checks]]
    (out / "instruct_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
