"""``opmix <command>``: pretrain, demo, check, continual. Bad input exits with code 2 and one line naming the problem and
the fix."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import warnings
from datetime import datetime
from pathlib import Path

from opmix.errors import OpmixError

log = logging.getLogger("opmix")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "continual" and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # `opmix continual demo --out DIR a.b=c`: overrides after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(message)s")
    # deprecation notices that PEFT triggers inside transformers say nothing to an opmix user
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    try:
        return args.handler(args)
    except OpmixError as error:
        print(f"opmix: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("opmix: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opmix", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    commands = parser.add_subparsers(dest="command", required=True)

    pretrain = commands.add_parser("pretrain", help="OP-Mix for pretraining (SPEC section 3)")
    pretrain.add_argument("--config", "-c", type=Path, required=True, help="YAML config (see examples/)")
    pretrain.add_argument("--out", "-o", type=Path, required=True, help="run directory (re-run to resume)")
    pretrain.add_argument("--baseline", default=None, metavar="NAMES",
                          help="also train these baselines under the same budget: erm, natural, swarm, mergemix "
                               "(comma-separated)")
    pretrain.add_argument("--trust-remote-code", action="store_true",
                          help="allow running the model directory's own Python code (auto_map); review it first")
    pretrain.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=2000")
    pretrain.set_defaults(handler=_pretrain)

    demo = commands.add_parser("demo", help="the whole recipe + ERM on the embedded default (CPU, offline)")
    demo.add_argument("--out", "-o", type=Path, default=None, help="run directory (default: ./opmix-demo-<time>)")
    demo.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=200")
    demo.set_defaults(handler=_demo)

    check = commands.add_parser("check", help="fidelity check: real short runs vs the simulator's predictions")
    check.add_argument("run_dir", type=Path, help="an `opmix pretrain` run directory (after its proposal step)")
    check.add_argument("--runs", type=int, default=4, help="real runs, the proposed mixture included (default 4)")
    check.add_argument("--steps", type=int, default=None, help="steps per run (default: the probe length)")
    check.set_defaults(handler=_check)

    continual = commands.add_parser(
        "continual", help="OP-Mix for continual midtraining (SPEC section 3); `opmix continual demo` runs the demo",
        usage="opmix continual (--config FILE --out DIR [--method M] | demo [--out DIR]) [overrides ...]")
    continual.add_argument("--config", "-c", type=Path, default=None, help="YAML config (see examples/)")
    continual.add_argument("--out", "-o", type=Path, default=None, help="run directory (re-run to resume)")
    continual.add_argument("--method", default=None, choices=["opmix", "sequential", "replay", "fifty", "retrain",
                                                              "lora-merge", "grid"], help="OP-Mix or a baseline")
    continual.add_argument("--trust-remote-code", action="store_true",
                           help="allow running the model directory's own Python code (auto_map); review it first")
    continual.add_argument("overrides", nargs="*", help="`demo`, then config overrides, e.g. train.steps=200")
    continual.set_defaults(handler=_continual)
    return parser


def _pretrain(args: argparse.Namespace) -> int:
    from opmix.config import PretrainConfig, load_config

    overrides = list(args.overrides) + ([f"baseline={args.baseline}"] if args.baseline else [])
    overrides += ["model.trust_remote_code=true"] if args.trust_remote_code else []
    cfg = load_config(args.config, PretrainConfig, overrides)
    return _run_pretrain(cfg, args.out)


def _demo(args: argparse.Namespace) -> int:
    from opmix.config import PretrainConfig, load_config
    from opmix.demo import demo_config

    out = args.out or Path.cwd() / f"opmix-demo-{datetime.now():%Y%m%d-%H%M%S}"
    raw = demo_config(out / "data")
    cfg = load_config(None, PretrainConfig, list(args.overrides), raw=raw)
    return _run_pretrain(cfg, out)


def _run_pretrain(cfg, out: Path) -> int:
    from opmix.recipes import pretrain
    from opmix.report import format_summary

    return _run_recipe(pretrain.run, cfg, out, format_summary)


def _run_recipe(run, cfg, out: Path, describe) -> int:
    """Check inputs, hold the run directory's lock, run; on a user error leave no run directory behind unless
    something finished (kept checkpoints let the user inspect or resume)."""
    from opmix.run.rundir import RunDir
    from opmix.workspace import check_inputs

    check_inputs(cfg.model, cfg.domains)  # before anything is written
    fresh = not out.exists()
    run_dir = RunDir(out)
    try:
        with run_dir.lock():
            summary = run(cfg, run_dir)
    except OpmixError:
        if fresh and not run_dir.has_progress():
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(describe(summary))
    print(f"run directory: {out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from opmix.check import format_check, run_check

    print(format_check(run_check(args.run_dir, runs=args.runs, steps=args.steps)))
    return 0


def _continual(args: argparse.Namespace) -> int:
    from opmix.config.continual import ContinualConfig
    from opmix.config.loading import load_config

    overrides = list(args.overrides)
    if overrides[:1] == ["demo"]:
        from opmix.config import PretrainConfig
        from opmix.continual.demo import demo_continual_config, demo_pretrain_config

        out = args.out or Path.cwd() / f"opmix-continual-demo-{datetime.now():%Y%m%d-%H%M%S}"
        start = out / "pretrain"  # the start model: the pretraining recipe on the embedded demo corpus
        _run_pretrain(load_config(None, PretrainConfig, raw=demo_pretrain_config(out / "data")), start)
        raw, out, overrides = demo_continual_config(out / "data-continual", start), out / "continual", overrides[1:]
    elif args.config is None or args.out is None:
        raise OpmixError("opmix continual needs --config FILE and --out DIR", "pass both, or run `opmix continual demo`")
    else:
        raw, out = None, args.out
    overrides += [f"run={args.method}"] if args.method else []
    overrides += ["model.trust_remote_code=true"] if args.trust_remote_code else []
    cfg = load_config(args.config if raw is None else None, ContinualConfig, overrides, raw=raw)
    return _run_continual(cfg, out)


def _run_continual(cfg, out: Path) -> int:
    from opmix.continual.report import format_continual
    from opmix.recipes import continual, continual_baselines

    recipe = continual if cfg.run in ("opmix", "grid") else continual_baselines
    return _run_recipe(recipe.run, cfg, out, format_continual)


if __name__ == "__main__":
    sys.exit(main())
