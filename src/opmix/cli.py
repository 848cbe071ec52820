"""``opmix <command>``: pretrain, demo, check, continual, instruct, update, status, report, export, fit. Bad input exits
with code 2 and one line naming the problem and the fix."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import warnings
from datetime import datetime
from pathlib import Path

from opmix.errors import OpmixError

log = logging.getLogger("opmix")


def main(argv: list[str] | None = None) -> int:
    from opmix.cli_parser import build_parser

    parser = build_parser(__doc__)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("continual", "instruct") and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # `opmix continual demo --out DIR a.b=c`: overrides after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from opmix.progress import configure
    from opmix.run import processes

    configure(quiet=args.quiet, verbose=args.verbose)
    _silence_libraries(args.verbose)
    speaker = "opmix" if processes.is_main() else f"opmix (process {processes.rank()})"
    try:
        with _rank0_speaks():
            return HANDLERS[args.command](args)
    except OpmixError as error:
        print(f"{speaker}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = getattr(args, "resume_command", None) or "the same command"
        print(f"opmix: interrupted; run {again} to resume where it stopped", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _rank0_speaks():
    """The processes of one run (``torchrun``, ``accelerate launch``) print one summary: rank 0's."""
    from opmix.run import processes

    if processes.is_main():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _silence_libraries(verbose: bool) -> None:
    """Weight-loading bars, deprecation notices and config chatter of transformers/PEFT say nothing to an opmix
    user; ``--verbose`` keeps them."""
    if verbose:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers when it is first imported
    transformers = sys.modules.get("transformers")  # not imported here: `opmix fit` never needs its 1.3 s import
    if transformers is not None:
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def _pretrain(args: argparse.Namespace) -> int:
    from opmix.config import PretrainConfig, load_config

    overrides = list(args.overrides) + ([f"baseline={args.baseline}"] if args.baseline else [])
    overrides += ["model.trust_remote_code=true"] if args.trust_remote_code else []
    cfg = load_config(args.config, PretrainConfig, overrides)
    return _run_pretrain(cfg, args.out)


def _demo(args: argparse.Namespace) -> int:
    from opmix.config import PretrainConfig, load_config
    from opmix.demo import demo_config

    def config_for(out: Path):
        return load_config(None, PretrainConfig, list(args.overrides), raw=demo_config(out / "data"))

    out = args.out or _unfinished_demo(config_for)
    if out is None:
        out = Path.cwd() / f"opmix-demo-{datetime.now():%Y%m%d-%H%M%S}"
    elif args.out is None:
        log.info("resuming the unfinished demo run %s (give --out DIR for a new one)", out)
    args.resume_command = " ".join(["opmix", "demo", "--out", str(out), *args.overrides])
    return _run_pretrain(config_for(out), out)


def _unfinished_demo(config_for) -> Path | None:
    """The latest ./opmix-demo-* run that has not finished and was started with these same settings."""
    import yaml

    for candidate in sorted(Path.cwd().glob("opmix-demo-*"), reverse=True):
        saved = candidate / "config.yaml"
        if (candidate / "summary.json").exists() or not saved.is_file():
            continue
        try:
            same = yaml.safe_load(saved.read_text()) == yaml.safe_load(
                yaml.safe_dump(config_for(candidate).model_dump(mode="json")))
        except (OSError, yaml.YAMLError, OpmixError):
            same = False
        if same:
            return candidate
    return None


def _run_pretrain(cfg, out: Path) -> int:
    from opmix.recipes import pretrain
    from opmix.report import format_summary

    return _run_recipe(pretrain.run, cfg, out, format_summary)


def _run_recipe(run, cfg, out: Path, describe) -> int:
    """Check inputs, hold the run directory's lock, run; on a user error leave no run directory behind unless
    something finished (kept checkpoints let the user inspect or resume)."""
    from opmix.progress import run_log
    from opmix.run.rundir import RunDir
    from opmix.workspace import check_inputs

    check_inputs(cfg.model, getattr(cfg, "domains", []))  # before anything is written
    fresh = not out.exists()
    run_dir = RunDir(out)
    try:
        with run_dir.lock(), run_log(out):
            log.info("opmix %s -> %s; train.batch_size=%d sequences per process per step (global: x the number "
                     "of processes)", _recipe_name(cfg), out, cfg.train.batch_size)
            summary = run(cfg, run_dir)
    except OpmixError:
        if fresh and not run_dir.has_progress():
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(describe(summary))
    print(f"run directory: {out}")
    report = _write_report_safely(out)
    if report is not None:
        print(f"report: {report}")
    return 0


def _write_report_safely(out: Path) -> Path | None:
    """The run's results are already on disk: a report that fails to render must not fail the run."""
    from opmix.report_page import write_report

    try:
        return write_report(out)
    except Exception as exc:  # noqa: BLE001 - any failure here is reported, the run stays a success
        log.warning("the report could not be written (%s: %s); retry with: opmix report %s",
                    type(exc).__name__, exc, out)
        return None


def _recipe_name(cfg) -> str:
    if hasattr(cfg, "tasks"):
        return f"instruct ({cfg.run}, {cfg.learner})"
    return f"continual ({cfg.run})" if hasattr(cfg, "run") else "update" if hasattr(cfg, "update") else "pretrain"


def _update(args: argparse.Namespace) -> int:
    from opmix.config import load_config
    from opmix.config.update import UpdateConfig, parse_change, update_raw
    from opmix.recipes import update

    previous, result = _finished_run(args.from_run)
    changes = _changes_file(args.changes) if args.changes else []
    for kind in ("add", "remove", "partition", "revise"):
        changes += [parse_change(kind, spec) for spec in getattr(args, kind)]
    if not changes and not args.recompute:
        raise OpmixError("no change given", "give --add, --remove, --partition, --revise, --changes or --recompute")
    recompute = [name for item in args.recompute for name in item.split(",") if name]
    raw = update_raw(previous, str(args.from_run.resolve()), result["mixture"], changes, recompute,
                     not args.no_train, result.get("tokens_consumed"))
    cfg = load_config(None, UpdateConfig, list(args.overrides), raw=raw)
    return _run_recipe(update.run, cfg, args.out, update.format_update)


def _finished_run(run_dir: Path) -> tuple[dict, dict]:
    """A finished pretraining or update run's saved config and its summary."""
    import json

    import yaml

    summary, config = run_dir / "summary.json", run_dir / "config.yaml"
    if not config.is_file():
        raise OpmixError(f"--from {run_dir} is not an opmix run directory (no config.yaml)",
                         "give the --out directory of a finished opmix pretrain or update run")
    previous = yaml.safe_load(config.read_text())
    if "run" in previous:
        raise OpmixError(f"--from {run_dir} is a continual run", "give a pretraining or update run")
    if not summary.is_file() or not (run_dir / "final" / "model").is_dir():
        raise OpmixError(f"--from {run_dir} has not finished (no summary.json or final/model)",
                         "finish it first (re-run its command), then update from it")
    result = json.loads(summary.read_text())
    if result.get("trained") is False:
        raise OpmixError(f"--from {run_dir} was a --no-train update: it has no trained model",
                         "update from a run that trained (run that update without --no-train)")
    return previous, result


def _changes_file(path: Path) -> list:
    import yaml
    from pydantic import ValidationError

    from opmix.config.update import DomainChange

    if not path.is_file():
        raise OpmixError(f"--changes {path} does not exist", "give a YAML file with a list of changes")
    items = yaml.safe_load(path.read_text()) or []
    if not isinstance(items, list):
        raise OpmixError(f"--changes {path} is not a YAML list", "write one `- {kind: ..., name: ...}` per change")
    try:
        changes = [DomainChange.model_validate(item) for item in items]
    except ValidationError as error:
        raise OpmixError(f"--changes {path}: {error.errors()[0]['msg']}",
                         "each change is {kind: add|remove|partition|revise, name, files, parts}") from None
    for change in changes:  # relative paths: from the changes file's folder
        change.files = [str((path.parent / f).resolve()) for f in change.files]
        change.parts = {k: [str((path.parent / f).resolve()) for f in v] for k, v in change.parts.items()}
    return changes


def _status(args: argparse.Namespace) -> int:
    from opmix.status import format_status, run_status

    print(format_status(run_status(args.run_dir)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from opmix.report_page import write_report

    if not (args.run_dir / "config.yaml").is_file():
        raise OpmixError(f"{args.run_dir} is not an opmix run directory (no config.yaml)",
                         "give the --out directory of an opmix run")
    print(f"report: {write_report(args.run_dir)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from opmix.export import export_mixture, parse_paths
    from opmix.run.atomic import write_text

    text = export_mixture(args.run_dir, args.format, parse_paths(args.paths), which=args.which)
    if args.out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from opmix.fit_csv import format_fit, run_fit

    print(format_fit(run_fit(args.ratios, args.metrics, args.out, prior=args.prior, kl_weight=args.kl_weight,
                             tokens=args.tokens, budget=args.budget, repetition=args.repetition,
                             higher_is_better=args.higher_is_better, predict=args.predict, holdout=args.holdout,
                             seed=args.seed, jobs=args.jobs)))
    return 0


def _check(args: argparse.Namespace) -> int:
    from opmix.check import format_check, run_check

    print(format_check(run_check(args.run_dir, runs=args.runs, steps=args.steps)))
    if (args.run_dir / "report" / "index.html").is_file():
        _write_report_safely(args.run_dir)  # the report shows the check
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


def _instruct(args: argparse.Namespace) -> int:
    from opmix.config.instruct import InstructConfig
    from opmix.config.loading import load_config
    from opmix.instruct.report import format_instruct
    from opmix.recipes import instruct

    overrides = list(args.overrides)
    if overrides[:1] == ["demo"]:
        from opmix.instruct.demo import demo_instruct_config, train_demo_start_model

        out = args.out or Path.cwd() / f"opmix-instruct-demo-{datetime.now():%Y%m%d-%H%M%S}"
        start = train_demo_start_model(out)  # a small model that follows the prompt/response format
        raw, out, overrides = demo_instruct_config(out / "data", start), out / "instruct", overrides[1:]
    elif args.config is None or args.out is None:
        raise OpmixError("opmix instruct needs --config FILE and --out DIR", "pass both, or run `opmix instruct demo`")
    else:
        raw, out = None, args.out
    overrides += [f"run={args.method}"] if args.method else []
    overrides += ["model.trust_remote_code=true"] if args.trust_remote_code else []
    cfg = load_config(args.config if raw is None else None, InstructConfig, overrides, raw=raw)
    return _run_recipe(instruct.run, cfg, out, format_instruct)


HANDLERS = {
    "pretrain": _pretrain, "demo": _demo, "check": _check, "continual": _continual, "instruct": _instruct,
    "status": _status, "report": _report, "export": _export, "update": _update, "fit": _fit,
}


if __name__ == "__main__":
    sys.exit(main())
