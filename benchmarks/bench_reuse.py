"""Mixture reuse on domain-set updates (issue 10): reuse against full recomputation and against no mixing.

    python benchmarks/bench_reuse.py --out DIR [--steps 300] [--update-steps 150] [--seed 0]

One pretraining run on the demo domains (code, prose, records), then a chain of four updates, each from the
previous update's reuse run: add `logs` (a templated log domain of the test beds), revise `code` (C++ sources),
partition `records` into two halves, remove `prose`. At every update, from the same model and for the same final
budget (``--update-steps``):

- reuse: ``opmix update`` (probes for `existing` and the changed domains only, 2(k+1) proxies);
- recompute: the same update with ``--recompute`` on every unchanged domain (OP-Mix over all current domains);
- uniform: no mixing; the recomputation's search with a KL weight of 1e6, so the proposal is the uniform prior
  (its probes come from the probe cache; its search compute is not counted, only its eval loss is used).

Search compute = the ledger's probes + proxy evaluation + fit/propose. Prints and writes DIR/reuse.md: search
FLOPs, reuse/recompute, mean eval loss over the current domains, and reuse's share of recomputation's gain over
uniform. Targets: >= 60% less search compute than recomputation, >= 90% of its gain (Olmix: 74% and 95%).
Re-running the same command resumes every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_fidelity import _cli, _domains, pretrain_config  # noqa: E402

ARMS = ("reuse", "recompute", "uniform")


def _data(root: Path) -> tuple[dict, list[tuple[str, list[str]]]]:
    from opmix.data.demo import build_demo_corpus
    from opmix.data.testbed import build_domain_set

    demo = build_demo_corpus(root / "data" / "demo")
    skewed = build_domain_set("skewed", root / "data" / "skewed")
    code_kinds = build_domain_set("code-kinds", root / "data" / "code-kinds")
    halves = []
    text = "".join(Path(p).read_text(encoding="utf-8") for p in demo["records"])
    lines = text.splitlines(keepends=True)
    for i, part in enumerate((lines[: len(lines) // 2], lines[len(lines) // 2:])):
        path = root / "data" / f"records_{'ab'[i]}.txt"
        path.write_text("".join(part), encoding="utf-8")
        halves.append(str(path))
    updates = [
        ("add", ["--add", f"logs={skewed['logs'][0]}"]),
        ("revise", ["--revise", f"code={Path(code_kinds['cpp'][0]).parent}"]),
        ("partition", ["--partition", f"records=records_a:{halves[0]},records_b:{halves[1]}"]),
        ("remove", ["--remove", "prose"]),
    ]
    return demo, updates


def _search_flops(run: Path) -> float:
    stages = json.loads((run / "ledger.json").read_text())["stages"]
    return sum(s["flops"] for s in stages if s["stage"].startswith("probe_") or s["stage"] in ("proxies", "propose"))


def run_chain(root: Path, args) -> list[dict]:
    demo, updates = _data(root)
    base = root / "base"
    config = root / "base.yaml"
    config.write_text(yaml.safe_dump(pretrain_config(_domains(demo, list(demo)), args.seed, args.steps)))
    if _cli(["-q", "pretrain", "--config", str(config), "--out", str(base)], root / "base.log") != 0:
        raise SystemExit(f"the base run failed: see {root / 'base.log'}")
    rows, previous = [], base
    for i, (kind, flags) in enumerate(updates, start=1):
        domains = json.loads((previous / "summary.json").read_text())["mixture"]
        changed = {f.split("=")[0] for f in flags[1:]}
        unchanged = [d for d in domains if d not in changed]
        common = ["update", "--from", str(previous), *flags, "-q"]
        overrides = [f"train.steps={args.update_steps}", f"method.probe_cache.path={root / 'probe-cache'}"]
        everything = ["--recompute", ",".join(unchanged)] if unchanged else []
        arm_flags = {"reuse": [*overrides], "recompute": [*everything, *overrides],
                     "uniform": [*everything, *overrides, "method.proposer.kl_weight=1e6",
                                 "method.guard.enabled=false"]}
        row = {"update": f"{i}: {kind}"}
        for arm in ARMS:
            out = root / f"u{i}_{arm}"
            if _cli([*common, *arm_flags[arm], "--out", str(out)], root / f"u{i}_{arm}.log") != 0:
                raise SystemExit(f"update {i} ({arm}) failed: see {root / f'u{i}_{arm}.log'}")
            summary = json.loads((out / "summary.json").read_text())
            row[f"{arm}_loss"] = summary["mean_eval_loss"]
            row[f"{arm}_search"] = _search_flops(out)
            row[f"{arm}_mixture"] = summary["mixture"]
        rows.append(row)
        previous = root / f"u{i}_reuse"
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["# Mixture reuse across domain-set updates", "",
           "| update | search FLOPs reuse | recompute | reuse / recompute | mean eval loss reuse | recompute "
           "| uniform | reuse's share of recompute's gain over uniform |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["reuse_search"] / r["recompute_search"] if r["recompute_search"] else float("nan")
        gain = r["uniform_loss"] - r["recompute_loss"]
        share = (r["uniform_loss"] - r["reuse_loss"]) / gain if abs(gain) > 1e-12 else float("nan")
        out.append(f"| {r['update']} | {r['reuse_search']:.3e} | {r['recompute_search']:.3e} | {ratio:.2f} "
                   f"| {r['reuse_loss']:.4f} | {r['recompute_loss']:.4f} | {r['uniform_loss']:.4f} "
                   f"| {share:.2f} (gain {gain:+.4f}) |")
    total_reuse = sum(r["reuse_search"] for r in rows)
    total_recompute = sum(r["recompute_search"] for r in rows)
    out += ["", f"Over the chain: reuse spent {total_reuse:.3e} search FLOPs, recomputation {total_recompute:.3e} "
                f"({100 * (1 - total_reuse / total_recompute):.0f}% less)."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300, help="the base pretraining run's steps")
    parser.add_argument("--update-steps", type=int, default=150, help="each update's final-training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_chain(args.out, args)
    (args.out / "reuse.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows)
    (args.out / "reuse.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
