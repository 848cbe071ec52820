"""The ``opmix`` command line: every subcommand's arguments, help and examples (the handlers: ``opmix.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = {
    "pretrain": "example:\n  opmix pretrain --config examples/pretrain.yaml --out runs/mix1 --baseline erm,natural",
    "demo": "example:\n  opmix demo                      # resumes the latest unfinished ./opmix-demo-* run\n"
            "  opmix demo --out runs/demo train.steps=200",
    "check": "example:\n  opmix check runs/mix1 --runs 4",
    "instruct": "examples:\n  opmix instruct --config examples/instruct.yaml --out runs/inst1 learner=sdft\n"
                "  opmix instruct --config examples/instruct.yaml --out runs/inst-seq --method sequential\n"
                "  opmix instruct demo --out runs/inst-demo",
    "continual": "examples:\n  opmix continual --config examples/continual.yaml --out runs/cont1\n"
                 "  opmix continual demo --out runs/cont-demo",
    "status": "example:\n  opmix status runs/mix1          # while the run works, from another shell",
    "report": "example:\n  opmix report runs/mix1          # writes runs/mix1/report/index.html",
    "export": "examples:\n  opmix export runs/mix1 --format hf --paths code=data/code.jsonl prose=data/prose.txt\n"
              "  opmix export runs/mix1 --format megatron --paths code=/data/code_text_document "
              "prose=/data/prose_text_document",
    "update": "examples:\n  opmix update --from runs/mix1 --out runs/mix2 --add math=data/math.jsonl\n"
              "  opmix update --from runs/mix2 --out runs/mix3 --partition web=news:data/news,forums:data/forums "
              "--remove legacy --no-train",
    "fit": "examples:\n  opmix fit --ratios swarm/ratios.csv --metrics swarm/metrics.csv --out fits/swarm1\n"
           "  opmix fit --ratios r.csv --metrics m.csv --tokens tokens.csv --budget 1e12 --higher-is-better acc "
           "--predict new_mixes.csv --holdout 0.2 --out fits/swarm2",
}


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of every subcommand; ``args.command`` names the one given."""
    common = argparse.ArgumentParser(add_help=False)  # -q/-v before or after the command
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and the result")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="everything, including the libraries' own messages")
    parser = argparse.ArgumentParser(prog="opmix", description=description, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(quiet=False, verbose=False)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=EXAMPLES[name], parents=[common],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    pretrain = command("pretrain", "OP-Mix for pretraining (docs/METHOD.md)")
    pretrain.add_argument("--config", "-c", type=Path, required=True, help="YAML config (see examples/)")
    pretrain.add_argument("--out", "-o", type=Path, required=True, help="run directory (re-run to resume)")
    pretrain.add_argument("--baseline", default=None, metavar="NAMES",
                          help="also train these baselines under the same budget: erm, natural, swarm, mergemix "
                               "(comma-separated)")
    pretrain.add_argument("--trust-remote-code", action="store_true",
                          help="allow running the model directory's own Python code (auto_map); review it first")
    pretrain.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=2000")

    demo = command("demo", "the whole recipe + ERM on the embedded default (CPU, offline)")
    demo.add_argument("--out", "-o", type=Path, default=None,
                      help="run directory (default: resume the latest unfinished ./opmix-demo-<time>, else a new one)")
    demo.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=200")

    check = command("check", "fidelity check: real short runs vs the simulator's predictions")
    check.add_argument("run_dir", type=Path, help="an `opmix pretrain` run directory (after its proposal step)")
    check.add_argument("--runs", type=int, default=4, help="real runs, the proposed mixture included (default 4)")
    check.add_argument("--steps", type=int, default=None, help="steps per run (default: the probe length)")

    continual = command("continual", "OP-Mix for continual midtraining; `opmix continual demo` runs the demo")
    continual.usage = "opmix continual (--config FILE --out DIR [--method M] | demo [--out DIR]) [overrides ...]"
    continual.add_argument("--config", "-c", type=Path, default=None, help="YAML config (see examples/)")
    continual.add_argument("--out", "-o", type=Path, default=None, help="run directory (re-run to resume)")
    continual.add_argument("--method", default=None, choices=["opmix", "sequential", "replay", "fifty", "retrain",
                                                              "lora-merge", "grid"], help="OP-Mix or a baseline")
    continual.add_argument("--trust-remote-code", action="store_true",
                           help="allow running the model directory's own Python code (auto_map); review it first")
    continual.add_argument("overrides", nargs="*", help="`demo`, then config overrides, e.g. train.steps=200")

    instruct = command("instruct", "OP-Mix for continual instruction tuning; `opmix instruct demo` runs the demo")
    instruct.usage = ("opmix instruct (--config FILE --out DIR [--method M] | demo [--out DIR]) [learner=sft|sdft] "
                      "[overrides ...]")
    instruct.add_argument("--config", "-c", type=Path, default=None, help="YAML config (see examples/)")
    instruct.add_argument("--out", "-o", type=Path, default=None, help="run directory (re-run to resume)")
    instruct.add_argument("--method", default=None, choices=["opmix", "sequential", "replay", "grid"],
                          help="the method to train (default: the config's `run`, opmix)")
    instruct.add_argument("--trust-remote-code", action="store_true",
                          help="allow a model directory's own Python code (only for models you trust)")
    instruct.add_argument("overrides", nargs="*", help="`demo`, then config overrides, e.g. learner=sdft")

    status = command("status", "each step of a run: done, running (with its progress) or pending")
    status.add_argument("run_dir", type=Path, help="a run directory (it may be running in another process)")

    report = command("report", "write the run's HTML report and PNG figures (RUN_DIR/report/)")
    report.add_argument("run_dir", type=Path, help="a run directory")

    export = command("export", "the run's mixture in the format of the trainer you use")
    export.add_argument("run_dir", type=Path, help="a finished run directory")
    export.add_argument("--format", "-f", required=True, help="json, olmix, hf, megatron or olmo-core")
    export.add_argument("--paths", nargs="+", default=[], metavar="DOMAIN=PATH",
                        help="where each domain's data lives for that trainer (default: the run's files)")
    export.add_argument("--which", default="opmix", help="opmix (default) or a baseline of the run, e.g. erm")
    export.add_argument("--out", "-o", type=Path, default=None, help="write to this file instead of printing")

    update = command("update", "reuse a finished run's mixture on a changed domain set (probes only for the change)")
    update.add_argument("--from", dest="from_run", type=Path, required=True,
                        help="the finished run (pretraining or update) whose final model and mixture to start from")
    update.add_argument("--out", "-o", type=Path, required=True, help="the update's run directory (re-run to resume)")
    update.add_argument("--add", action="append", default=[], metavar="NAME=PATH", help="a new domain")
    update.add_argument("--remove", action="append", default=[], metavar="NAME", help="drop a domain")
    update.add_argument("--partition", action="append", default=[], metavar="NAME=PART:PATH,PART:PATH",
                        help="split a domain into parts, each with its files")
    update.add_argument("--revise", action="append", default=[], metavar="NAME=PATH", help="new data for a domain")
    update.add_argument("--changes", type=Path, default=None,
                        help="YAML list of changes ({kind: add|remove|partition|revise, name, files, parts}), "
                             "applied before the flags")
    update.add_argument("--recompute", action="append", default=[], metavar="NAME[,NAME...]",
                        help="unchanged domains to search again (partial reuse); repeat or comma-separate")
    update.add_argument("--no-train", action="store_true", help="propose the mixture only")
    update.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=2000")

    fit = command("fit", "fit mixing laws on an Olmix-style swarm (ratios + metrics CSVs) and propose a mixture")
    fit.add_argument("--ratios", type=Path, required=True, help="CSV: a run column, one column per domain")
    fit.add_argument("--metrics", type=Path, required=True, help="CSV: a run column, one column per metric")
    fit.add_argument("--out", "-o", type=Path, required=True, help="folder for mixture.json, laws.json, mixture.yaml")
    fit.add_argument("--prior", default=None, help="uniform, natural (token shares) or a CSV/JSON of domain weights "
                                                   "(default: natural with --tokens, else uniform)")
    fit.add_argument("--kl-weight", type=float, default=0.05, help="KL weight lambda toward the prior (default 0.05)")
    fit.add_argument("--tokens", type=Path, default=None, help="CSV of domain,tokens rows")
    fit.add_argument("--budget", type=float, default=None, help="tokens R of the target run: caps x_d <= k N_d / R")
    fit.add_argument("--repetition", type=float, default=4.0, help="repetition factor k of the caps (default 4)")
    fit.add_argument("--higher-is-better", nargs="+", default=[], metavar="COL",
                     help="score columns, higher is better (fitted as 1 - score)")
    fit.add_argument("--predict", type=Path, default=None, help="CSV of mixtures (ratios layout): predictions.csv")
    fit.add_argument("--holdout", type=float, default=None, help="hold out this fraction of runs: Spearman, RMSE")
    fit.add_argument("--seed", type=int, default=0, help="seed of the law fits and the holdout split (default 0)")
    fit.add_argument("--jobs", type=int, default=None, help="processes fitting laws (default: the CPUs available)")
    return parser
