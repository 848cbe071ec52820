"""OP-Mix against the pretraining baselines users compare with (issue 8): ERM, natural, swarm and MergeMix.

    python benchmarks/bench_pretrain.py --out DIR [--sets demo skewed] [--seeds 3] [--steps 300] [--jobs 2]

Per domain set and seed: ``opmix pretrain --baseline erm,natural,swarm,mergemix`` (the demo's model and
settings: llama-1m, byte tokenizer, 16 x 128 tokens per step, ``--steps`` of training, swarm K = 3(m+1) proxy
models of 20% of the budget each), then the simulator's fidelity check twice: ``opmix check --runs 4`` at the
probe length (the default) and at a length whose 4 runs together cost ``--check-budget`` (10%) of the final
training. Sets: ``demo`` (the embedded default's domains) and ``skewed`` (``opmix.data.testbed``: a tiny
templated log, a large generated CSV, mixed file kinds, prose: sizes, difficulty and redundancy far apart).

Tables: DIR/pretrain_runs.csv (one row per run), DIR/pretrain.md (per set: mean and spread over seeds of every
method's mean eval loss and perplexity, per-domain losses, search and total compute, OP-Mix's gain over each
baseline, the check's Spearman and cost). Re-running the same command resumes every run where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_fidelity import _cli, _domains, pretrain_config  # noqa: E402

METHODS = ["opmix", "erm", "natural", "swarm", "mergemix"]
BASELINES = "erm,natural,swarm,mergemix"


def _jobs(root: Path, args) -> list[tuple]:
    from opmix.data.demo import build_demo_corpus
    from opmix.data.testbed import DOMAIN_SETS, build_domain_set

    jobs = []
    for name in args.sets:
        corpus = (build_demo_corpus(root / "data" / "demo") if name == "demo"
                  else build_domain_set(name, root / "data" / name))
        names = list(corpus) if name == "demo" else DOMAIN_SETS[name]
        for seed in range(args.seeds):
            out = root / "runs" / f"{name}_s{seed}"
            out.parent.mkdir(parents=True, exist_ok=True)
            raw = pretrain_config(_domains(corpus, names), seed, args.steps)
            raw["data"]["max_eval_sequences"] = 256
            config = out.parent / f"{out.name}.yaml"
            config.write_text(yaml.safe_dump(raw))
            jobs.append((name, seed, config, out))
    return jobs


def _run(job, args) -> int:
    name, seed, config, out = job
    log = out.parent / f"{out.name}.log"
    code = _cli(["-q", "pretrain", "--config", str(config), "--out", str(out), "--baseline", BASELINES], log)
    final_steps = args.steps - round(0.2 * args.steps)
    cheap = max(1, math.floor(args.check_budget * final_steps / args.check_runs))
    for label, steps in (("probe", None), ("cheap", cheap)):
        kept = out / f"check_{label}.json"
        if code != 0 or kept.is_file():
            continue
        code = _cli(["-q", "check", str(out), "--runs", str(args.check_runs),
                     *([] if steps is None else ["--steps", str(steps)])], out.parent / f"{out.name}.check.log")
        if code == 0:
            shutil.copyfile(out / "check.json", kept)  # `opmix check` writes check.json: keep each variant
    return code


# -- tables ----------------------------------------------------------------------------------------------------

def run_rows(root: Path) -> list[dict]:
    rows = []
    for summary_path in sorted((root / "runs").glob("*/summary.json")):
        run = summary_path.parent
        s = json.loads(summary_path.read_text())
        name, seed = run.name.rsplit("_s", 1)
        results = {"opmix": s, **s["baselines"]}
        row = {"set": name, "seed": int(seed), "guard_fired": s["guard"].get("fired"),
               "final_flops": s["flops"]["final"]}
        for method, r in results.items():
            f = r["flops"]
            row[f"{method}_loss"] = r["mean_eval_loss"]
            row[f"{method}_ppl"] = float(np.mean([math.exp(v) for v in r["eval_loss"].values()]))
            row[f"{method}_search_flops"] = f["total"] - f.get("prefix", 0.0) - f.get("final", 0.0)
            row[f"{method}_total_flops"] = f["total"]
            for domain, loss in r["eval_loss"].items():
                row[f"{method}_loss_{domain}"] = loss
        ledger = {e["stage"]: e["flops"] for e in json.loads((run / "ledger.json").read_text())["stages"]}
        for label in ("probe", "cheap"):
            path = run / f"check_{label}.json"
            if path.is_file():
                check = json.loads(path.read_text())
                row[f"check_{label}_steps"] = check["steps"]
                row[f"check_{label}_spearman"] = check["spearman"]
                row[f"check_{label}_cost_pct_of_final"] = 100 * sum(
                    ledger[r["step"]] for r in check["runs"]) / s["flops"]["final"]
        rows.append(row)
    return rows


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _pct(values) -> str:
    values = list(values)
    sd = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
    return f"{np.mean(values):+.2f}%{sd} ({', '.join(f'{v:+.2f}' for v in values)})"


def markdown(rows: list[dict]) -> str:
    out = ["# Pretraining: OP-Mix against ERM, natural, swarm and MergeMix", ""]
    for name in dict.fromkeys(r["set"] for r in rows):
        runs = [r for r in rows if r["set"] == name]
        methods = [m for m in METHODS if f"{m}_loss" in runs[0]]
        out += [f"## {name} ({len(runs)} seeds)", "",
                "| method | mean eval loss | mean perplexity | search FLOPs / OP-Mix's | total FLOPs / OP-Mix's "
                "| OP-Mix's gain over it (mean ± sd, per seed) |", "|---|---|---|---|---|---|"]
        for m in methods:
            search = np.median([r[f"{m}_search_flops"] / r["opmix_search_flops"] for r in runs])
            total = np.median([r[f"{m}_total_flops"] / r["opmix_total_flops"] for r in runs])
            gain = "-" if m == "opmix" else _pct(100 * (r[f"{m}_loss"] - r["opmix_loss"]) / r[f"{m}_loss"]
                                                 for r in runs)
            out.append(f"| {m} | {_mean_sd(r[f'{m}_loss'] for r in runs)} | {_mean_sd(r[f'{m}_ppl'] for r in runs)} "
                       f"| {search:.2f} | {total:.2f} | {gain} |")
        domains = [k[len("opmix_loss_"):] for k in runs[0] if k.startswith("opmix_loss_")]
        out += ["", "Per-domain eval loss (mean over seeds):", "",
                "| method | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
        for m in methods:
            out.append(f"| {m} | " + " | ".join(f"{np.mean([r[f'{m}_loss_{d}'] for r in runs]):.4f}"
                                                 for d in domains) + " |")
        out += ["", "Fidelity check (4 real runs from the prefix, proposal included):", ""]
        for label in ("probe", "cheap"):
            if f"check_{label}_spearman" in runs[0]:
                spearman = [r.get(f"check_{label}_spearman") for r in runs]
                cost = [r.get(f"check_{label}_cost_pct_of_final") for r in runs if f"check_{label}_steps" in r]
                out.append(f"- {runs[0][f'check_{label}_steps']} steps per run: Spearman per seed "
                           f"{', '.join('-' if v is None else f'{v:+.2f}' for v in spearman)}; "
                           f"cost {np.mean(cost):.1f}% of the final training")
        fired = sum(bool(r["guard_fired"]) for r in runs)
        out += [f"- guard fell back to the safe mixture in {fired} of {len(runs)} runs", ""]
    return "\n".join(out)


def write_tables(root: Path) -> None:
    rows = run_rows(root)
    if not rows:
        print("no finished runs yet")
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(root / "pretrain_runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows)
    (root / "pretrain.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", nargs="+", default=["demo", "skewed"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--check-runs", type=int, default=4)
    parser.add_argument("--check-budget", type=float, default=0.1, help="the cheap check's cost / final training")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not args.tables_only:
        jobs = _jobs(root, args)
        with ThreadPoolExecutor(args.jobs) as pool:
            for job, code in zip(jobs, pool.map(lambda j: _run(j, args), jobs)):
                print(f"{job[0]} seed {job[1]}: exit {code}", flush=True)
    write_tables(root)


if __name__ == "__main__":
    main()
