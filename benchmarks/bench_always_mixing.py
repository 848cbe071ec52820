"""Always mixing: one Hugging Face Trainer run with OPMixCallback against static mixtures, at equal total compute.

    python benchmarks/bench_always_mixing.py --out DIR [--seeds 2] [--steps 400] [--remix-every 100]

On the demo domains (``opmix.data.demo``), for each seed, three ``transformers.Trainer`` runs of the same model from
the same initialisation, each ending at the same total FLOPs (training 6 N T, plus each method's search):

- ``always``: ``--steps`` steps with ``OPMixCallback`` re-mixing every ``--remix-every`` steps from uniform
  (default settings but ``--probe-steps``, ``--proxies``; searches over the 15% compute cap are skipped). Its
  total compute C = training + searches.
- ``uniform``: the uniform mixture for C / (FLOPs per step) steps.
- ``oneshot``: the mixture ``opmix pretrain`` proposes (a run of ``--steps`` steps on the same data and model,
  guard off), for (C - that run's search FLOPs) / (FLOPs per step) steps.

Each run ends with the Trainer's linear decay over its own length. Reported: mean and per-domain eval loss (each
domain's held-out split), per seed and averaged, in DIR/always_mixing.{csv,md}; and the callback's overhead with
remixing off (time in its hooks per step / step time).
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
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models run best on one thread per process

import yaml  # noqa: E402

import opmix  # noqa: E402
from opmix.data.demo import build_demo_corpus  # noqa: E402

SEQ, BATCH, LR = 64, 16, 3e-3


def trainer_run(model, dataset, out: Path, steps: int, seed: int, callbacks=()):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                             learning_rate=LR, warmup_steps=max(1, steps // 50), weight_decay=0.1,
                             save_strategy="no", logging_steps=max(1, steps // 10), report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=seed, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=opmix.MixtureDataset.collate,
                      callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - started


def oneshot_mixture(files, out: Path, steps: int, seed: int, n_proxies: int) -> tuple[dict, float]:
    """The mixture `opmix pretrain` proposes at this budget, and its search FLOPs (all but prefix and final)."""
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        config = {
            "seed": seed, "model": {"builtin": "llama-tiny"}, "tokenizer": "builtin:bytes",
            "domains": [{"name": n, "files": [str(p) for p in paths]} for n, paths in files.items()],
            "data": {"seq_len": SEQ, "eval_fraction": 0.05, "max_eval_sequences": 64},
            "train": {"steps": steps, "batch_size": BATCH, "lr": LR},
            "method": {"n_proxies": n_proxies, "lora": {"r": 8, "alpha": 16}, "guard": {"enabled": False}},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        config_path = out.parent / f"{out.name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        subprocess.run([sys.executable, "-m", "opmix.cli", "-q", "pretrain", "--config", str(config_path), "--out",
                        str(out)], check=True)
    summary = json.loads(summary_path.read_text())
    flops = summary["flops"]
    search = sum(v for k, v in flops.items() if k not in ("prefix", "final", "total"))
    return summary["mixture"], search


def overhead(domains, root: Path, steps: int) -> float:
    """Seconds in the callback's hooks per step / seconds per step, with remixing off."""
    from opmix.callback import OPMixCallback

    dataset = opmix.MixtureDataset(domains, seed=0)
    callback = OPMixCallback(dataset, remix_every=10 * steps)
    spent = [0.0]
    for hook in ("on_step_end", "on_save"):
        original = getattr(callback, hook)

        def timed(*a, _original=original, **k):
            started = time.perf_counter()
            result = _original(*a, **k)
            spent[0] += time.perf_counter() - started
            return result

        setattr(callback, hook, timed)
    model = opmix.builtin_model("llama-tiny", vocab_size=260, seed=0, max_positions=SEQ)
    _, seconds = trainer_run(model, dataset, root / "overhead", steps, 0, [callback])
    return spent[0] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--remix-every", type=int, default=100)
    parser.add_argument("--probe-steps", type=int, default=5)
    parser.add_argument("--proxies", type=int, default=10)
    parser.add_argument("--search-eval-sequences", type=int, default=16)
    parser.add_argument("--max-bytes", type=int, default=400_000)
    args = parser.parse_args()
    import torch

    from opmix.callback import OPMixCallback
    from opmix.run.ledger import count_params, train_flops

    torch.set_num_threads(1)
    root = args.out
    files = build_demo_corpus(root / "data", max_bytes=args.max_bytes)
    domains = opmix.load_domains(files, "builtin:bytes", seq_len=SEQ, cache_dir=root / "cache", eval_fraction=0.05,
                                 max_eval_sequences=64)
    names = list(domains)
    eval_sets = {d: domains[d].eval for d in names}
    search_eval = {d: domains[d].eval[: args.search_eval_sequences] for d in names}
    rows = []
    for seed in range(args.seeds):
        def fresh():
            return opmix.builtin_model("llama-tiny", vocab_size=260, seed=seed, max_positions=SEQ)

        step_flops = train_flops(count_params(fresh()), BATCH * SEQ)
        dataset = opmix.MixtureDataset(domains, seed=seed)
        callback = OPMixCallback(dataset, remix_every=args.remix_every, eval_sets=search_eval,
                                 probe_steps=args.probe_steps, n_proxies=args.proxies, lora={"r": 8, "alpha": 16},
                                 seed=seed)
        trainer, seconds = trainer_run(fresh(), dataset, root / f"s{seed}" / "always", args.steps, seed, [callback])
        total = step_flops * args.steps + callback.search_flops
        callback.to_csv(root / f"s{seed}" / "always_history.csv")
        callback.plot(root / f"s{seed}" / "always_history.png")
        runs = {"always": (trainer.model, args.steps, callback.search_flops, seconds, dataset.weights)}

        uniform_steps = round(total / step_flops)
        dataset = opmix.MixtureDataset(domains, seed=seed)
        trainer, seconds = trainer_run(fresh(), dataset, root / f"s{seed}" / "uniform", uniform_steps, seed)
        runs["uniform"] = (trainer.model, uniform_steps, 0.0, seconds, dataset.weights)

        mixture, search = oneshot_mixture(files, root / f"s{seed}" / "pretrain", args.steps, seed, args.proxies)
        oneshot_steps = max(1, round((total - search) / step_flops))
        dataset = opmix.MixtureDataset(domains, mixture, seed=seed)
        trainer, seconds = trainer_run(fresh(), dataset, root / f"s{seed}" / "oneshot", oneshot_steps, seed)
        runs["oneshot"] = (trainer.model, oneshot_steps, search, seconds, dataset.weights)

        for name, (model, steps, search_flops, seconds, weights) in runs.items():
            losses = opmix.evaluate(model, eval_sets)
            rows.append({"seed": seed, "method": name, "steps": steps, "search_flops": search_flops,
                         "total_flops": step_flops * steps + search_flops, "seconds": round(seconds, 1),
                         "mean_loss": statistics.fmean(losses.values()),
                         **{f"loss_{d}": losses[d] for d in names}, **{f"w_{d}": weights[d] for d in names}})
            print(json.dumps(rows[-1]), flush=True)
        events = [(e["step"], e["event"]) for e in callback.history()]
        print(f"seed {seed}: callback events {events}", flush=True)

    with open(root / "always_mixing.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| method | steps | search share | mean eval loss | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for method in ("always", "uniform", "oneshot"):
        mine = [r for r in rows if r["method"] == method]
        share = statistics.fmean(r["search_flops"] / r["total_flops"] for r in mine)
        per_domain = " | ".join(f"{statistics.fmean(r[f'loss_{d}'] for r in mine):.4f}" for d in names)
        seeds = ", ".join(f"{r['mean_loss']:.4f}" for r in mine)
        lines.append(f"| {method} | {'/'.join(str(r['steps']) for r in mine)} | {share:.1%} | "
                     f"{statistics.fmean(r['mean_loss'] for r in mine):.4f} ({seeds}) | {per_domain} |")
    ratio = overhead(domains, root, 100)
    lines.append("")
    lines.append(f"Callback overhead with remixing off: {ratio:.3%} of training time (time in its hooks / run time).")
    (root / "always_mixing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
