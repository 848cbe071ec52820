"""Where does the simulator depart from full training? One continual stage, taken apart (issue 7, docs/FIDELITY.md).

    python benchmarks/bench_simulator.py --run DIR --stage K [--out DIR2] [--ranks 4 16]

DIR is a finished ``opmix continual --method grid`` run (its grid of full stage runs is the truth). From the same
checkpoint stage K starts from, at every grid fraction r, this measures the stage's mean eval loss over the seen
domains five ways, each one step closer to what the proxies do, and ranks each against the grid (Spearman):

    grid        full training for the whole stage (from DIR)                          the truth
    short       the first probe-length steps of that same run (stage schedule, optimizer state kept)
                -> what a shorter horizon alone changes
    short+cool  the same, then a linear decay of its own over a quarter of its length before the eval
    guard+cool  the guard's check: the first 10% of the stage, then that cool-down
    fullprobe   full-rank training from the stage's weights with the probes' recipe (fresh AdamW, 2x rate,
                no warmup, short decay), probe length -> the probe recipe without LoRA
    lora        a LoRA trained directly on mixture r with the probes' recipe -> LoRA capacity, no interpolation
    proxy-r<R>  the method: theta_0 + (1-a) Delta_old + a Delta_new with rank-R probes (R = the run's rank is
                recomputed here too, so every row is from this process)  -> linearity of the interpolation
    proxy-r<R>-lr<M>x  the same with the probes at M x the full-training rate (the run's is 2x)

Writes DIR2/simulator_stage<K>.{json,md}. Runs are resumable steps under DIR2 (tokens come from DIR's cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr


def main() -> int:
    from opmix.config.continual import ContinualConfig
    from opmix.config.loading import load_config
    from opmix.continual.segment import (
        effective_new_fraction,
        probe_mixtures,
        proxy_weights,
        segment_points,
        stage_mixture,
    )
    from opmix.continual.training import StageSchedule
    from opmix.domains import OLD
    from opmix.eval import mean_loss
    from opmix.run.rundir import RunDir
    from opmix.stages import evaluate_proxies, train_full, train_probe
    from opmix.train.schedule import CoolDown
    from opmix.workspace import open_workspace

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ranks", type=int, nargs="*", default=[4, 16])
    parser.add_argument("--lr-multipliers", type=float, nargs="*", default=[4.0, 8.0],
                        help="probe learning-rate multipliers to try besides the run's (rank = the run's)")
    args = parser.parse_args()
    run = args.run.resolve()
    out = (args.out or run.parent / f"{run.name}_simulator_s{args.stage}").resolve()
    summary = json.loads((run / "summary.json").read_text())
    k = args.stage
    record = next(s for s in summary["stages"] if s["stage"] == k)
    previous = next(s for s in summary["stages"] if s["stage"] == k - 1)
    cfg = load_config(run / "config.yaml", ContinualConfig, [f"data.cache_dir={run / 'cache'}"])
    method, t, S = cfg.method, cfg.train, cfg.train.steps
    seen = cfg.domain_names[:k]  # summary.json's dicts are key-sorted: the order comes from the config
    new, p = record["domain"], previous["mixture"]
    grid = record["grid"]
    R = np.array(grid["r"])
    truth = np.array(grid["mean_eval_loss"])
    start = run / f"s{k - 1}_train" / "checkpoint"
    probe_steps = cfg.probe_steps

    rundir = RunDir(out)
    with rundir.lock():
        ws = open_workspace(rundir, cfg.model, cfg.tokenizer, cfg.domains, cfg.data, cfg.train, cfg.seed)
        schedule = StageSchedule.for_stage((k - 1) * S, S, t.warmup_fraction, t.decay_fraction, t.final_lr_ratio)

        def objective(step: str) -> float:
            losses = ws.run.step_info(step)["eval_loss"]
            return mean_loss({d: losses[d] for d in seen})

        rows: dict[str, list[float]] = {"grid": truth.tolist()}
        rows["short"] = []
        for r in R:
            step = f"short_r{r:.2f}"
            train_full(ws, step, stage_mixture(r, p, new, seen), schedule, end_step=(k - 1) * S + probe_steps,
                       start_from=start)
            rows["short"].append(objective(step))
        # the same runs, cooled down: a short linear decay of their own (a quarter of their length) before the eval
        for name, length in (("short+cool", probe_steps), ("guard+cool", max(1, round(0.1 * S)))):
            rows[name] = []
            for r in R:
                head = f"{name.split('+')[0]}_r{r:.2f}"
                if name.startswith("guard"):
                    train_full(ws, head, stage_mixture(r, p, new, seen), schedule, end_step=(k - 1) * S + length,
                               start_from=start)
                step = f"{head}_cool"
                cool = max(1, round(0.25 * length))
                train_full(ws, step, stage_mixture(r, p, new, seen),
                           CoolDown(schedule, (k - 1) * S + length, cool, t.final_lr_ratio),
                           end_step=(k - 1) * S + length + cool, start_from=ws.run.path(head, "checkpoint"))
                rows[name].append(objective(step))
        rows["fullprobe"] = [full_rank_probe(ws, f"fullprobe_r{r:.2f}", start, stage_mixture(r, p, new, seen),
                                             probe_steps, method, t, seen) for r in R]
        lora = method.lora.model_dump()
        lora_rows = []
        for i, r in enumerate(R):
            step = f"lora_r{r:.2f}"
            adapter = train_probe(ws, step, start, stage_mixture(r, p, new, seen), probe_steps,
                                  lr=method.probe_lr_multiplier * t.lr, decay_fraction=method.probe_decay_fraction,
                                  lora=lora, sampler_offset=5000 + i)
            Y = evaluate_proxies(ws, f"{step}_eval", start, [adapter], ["probe"], np.ones((1, 1)),
                                 table=ws.run.path(f"{step}_eval", "proxies.csv"), eval_domains=seen)
            lora_rows.append(float(Y[0].mean()))
        rows["lora"] = lora_rows
        a = segment_points(method.n_proxies)
        r_proxy = effective_new_fraction(a, method.old_probe_share, method.new_probe_share)
        data = probe_mixtures(p, new, method.old_probe_share, method.new_probe_share)
        variants = [(rank, method.probe_lr_multiplier) for rank in args.ranks]
        variants += [(method.lora.r, m) for m in args.lr_multipliers if m != method.probe_lr_multiplier]
        for rank, multiplier in variants:
            tag = f"{rank}" if multiplier == method.probe_lr_multiplier else f"{rank}_lr{multiplier:g}"
            adapters = [
                train_probe(ws, f"probe{tag}_{name}", start, data[c], probe_steps,
                            lr=multiplier * t.lr, decay_fraction=method.probe_decay_fraction,
                            lora={**lora, "r": rank, "alpha": 2 * rank}, sampler_offset=1000 * k + i)
                for i, (name, c) in enumerate([("old", OLD), ("new", new)])
            ]
            Y = evaluate_proxies(ws, f"proxies{tag}", start, adapters, ["probe_old", "probe_new"], proxy_weights(a),
                                 table=ws.run.path(f"proxies{tag}", "proxies.csv"), eval_domains=seen)
            at_grid = [float(Y[np.isclose(r_proxy, r)][0].mean()) for r in R]
            name = f"proxy-r{rank}" + ("" if multiplier == method.probe_lr_multiplier else f"-lr{multiplier:g}x")
            rows[name] = at_grid
        result = {"run": str(run), "stage": k, "new": new, "r": R.tolist(), "probe_steps": probe_steps,
                  "grid_seed_std": grid["seed_std"], "rows": rows,
                  "spearman": {n: float(spearmanr(v, truth).statistic) for n, v in rows.items()},
                  "pearson": {n: float(pearsonr(v, truth).statistic) for n, v in rows.items()},
                  "argmin_r": {n: float(R[int(np.argmin(v))]) for n, v in rows.items()}}
    (out / f"simulator_stage{k}.json").write_text(json.dumps(result, indent=1))
    lines = [f"stage {k} (new domain {new!r}) of {run}; probe length {probe_steps} steps", "",
             "| measure | " + " | ".join(f"r={r:.1f}" for r in R) + " | argmin r | Spearman vs grid | Pearson |",
             "|---|" + "---|" * (len(R) + 3)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) +
                     f" | {result['argmin_r'][name]:.1f} | {result['spearman'][name]:+.2f} | "
                     f"{result['pearson'][name]:+.2f} |")
    (out / f"simulator_stage{k}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def full_rank_probe(ws, step, base, mixture, steps, method, t, seen) -> float:
    """Full-rank training with the probes' recipe (weights of ``base``, fresh AdamW, 2x rate, no warmup, short
    decay); returns the mean eval loss over ``seen``. Not a resumable step: it takes seconds at this size."""
    from opmix.data.sampler import MixtureSampler
    from opmix.eval import evaluate, mean_loss
    from opmix.stages import load_weights
    from opmix.train.loop import Trainer
    from opmix.train.schedule import WSDSchedule

    model = load_weights(ws, base)
    sampler = MixtureSampler(ws.train_sets(), dict(mixture), t.batch_size, seed=ws.sampler_seed(7000))
    schedule = WSDSchedule(steps, 0, round(method.probe_decay_fraction * steps), t.final_lr_ratio)
    trainer = Trainer(model, sampler, schedule, method.probe_lr_multiplier * t.lr, ws.accelerator,
                      weight_decay=t.weight_decay, betas=t.betas, grad_clip=t.grad_clip, stage=step, seed=7000)
    trainer.train_until(steps)
    losses = evaluate(trainer.unwrapped_model(), {d: ws.domains[d].eval for d in seen}, t.eval_batch_size)
    return mean_loss(losses)


if __name__ == "__main__":
    sys.exit(main())
