"""``opmix status RUN_DIR``: each step of a run, done, running (with its progress), interrupted or pending, with
its compute and time. Reads only files, so it works while another process is running the run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from opmix.errors import OpmixError
from opmix.progress import PROGRESS_FILE, _plural, format_seconds

DONE, RUNNING, INTERRUPTED, PENDING, SKIPPED = "done", "running", "interrupted", "pending", "skipped"


def run_status(run_dir: Path) -> dict:
    """``{"run", "recipe", "state", "steps": [{"step", "state", "flops", "seconds", "finished_at", "progress"}]}``;
    state of the run: running (another process holds it), finished (summary.json), or stopped."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise OpmixError(f"{run_dir} is not an opmix run directory (no config.yaml)",
                         "give the --out directory of an opmix run")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    recipe, planned = _plan(config)
    markers = {}
    for path in sorted((run_dir / "steps").glob("*.json")):
        try:
            markers[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written, or damaged: the run redoes it
    ledger = _ledger(run_dir / "ledger.json")
    running = _lock_holder(run_dir)
    finished = (run_dir / "summary.json").is_file() and running is None
    progress = _read_json(run_dir / PROGRESS_FILE)
    current = progress["name"] if progress and not progress.get("finished") else None

    done = sorted(markers, key=lambda s: (markers[s].get("finished_at", ""), _index(planned, s)))
    rows = [_row(step, DONE, ledger, markers[step]) for step in done]
    for step in planned:
        if step in markers:
            continue
        if step == current:
            state = RUNNING if running is not None else INTERRUPTED
            rows.append({**_row(step, state, ledger), "progress": progress})
        else:
            rows.append(_row(step, SKIPPED if finished else PENDING, ledger))
    if current is not None and current not in markers and current not in planned:  # e.g. a grid or check run
        rows.append({**_row(current, RUNNING if running is not None else INTERRUPTED, ledger), "progress": progress})
    state = "running" if running is not None else "finished" if finished else "stopped"
    return {"run": str(run_dir), "recipe": recipe, "state": state, "pid": running, "steps": rows}


def format_status(status: dict) -> str:
    head = {"running": f"running (pid {status['pid']})", "finished": "finished",
            "stopped": "stopped: re-run its command to resume"}[status["state"]]
    lines = [f"{status['run']}: {status['recipe']} run, {head}",
             f"{'step':<24} {'state':<12} {'FLOPs':>10} {'time':>8}  detail"]
    for row in status["steps"]:
        flops = f"{row['flops']:.2e}" if row.get("flops") else "-"
        seconds = format_seconds(row["seconds"]) if row.get("seconds") else "-"
        detail = row.get("finished_at") or ""
        progress = row.get("progress")
        if progress:
            eta = progress.get("eta_s")
            loss = progress.get("postfix", {}).get("loss")
            detail = (f"{progress['done']}/{progress['total']} {_plural(progress['unit'])}"
                      + (f", loss {loss:.3f}" if loss is not None else "")
                      + (f", ETA {format_seconds(eta)}" if eta is not None and row["state"] == RUNNING else "")
                      + f", updated {format_seconds(max(time.time() - progress['updated'], 0))} ago")
        lines.append(f"{row['step']:<24} {row['state']:<12} {flops:>10} {seconds:>8}  {detail}")
    counts = {s: sum(r["state"] == s for r in status["steps"]) for s in (DONE, RUNNING, INTERRUPTED, PENDING, SKIPPED)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def _plan(config: dict) -> tuple[str, list[str]]:
    """The recipe that wrote ``config`` and its planned steps (empty when the config no longer validates)."""
    from opmix.config import PretrainConfig, load_config
    from opmix.config.continual import ContinualConfig

    continual = "run" in config
    try:
        if "tasks" in config:
            from opmix.config.instruct import InstructConfig
            from opmix.recipes import instruct

            cfg = load_config(None, InstructConfig, raw=config)
            return f"instruct ({cfg.run}, {cfg.learner})", instruct.planned_steps(cfg)
        if continual:
            from opmix.recipes import continual as recipe_opmix
            from opmix.recipes import continual_baselines

            cfg = load_config(None, ContinualConfig, raw=config)
            recipe = recipe_opmix if cfg.run in ("opmix", "grid") else continual_baselines
            return f"continual ({cfg.run})", recipe.planned_steps(cfg)
        if "update" in config:
            from opmix.config.update import UpdateConfig
            from opmix.recipes import update

            return "update", update.planned_steps(load_config(None, UpdateConfig, raw=config))
        from opmix.recipes import pretrain

        return "pretrain", pretrain.planned_steps(load_config(None, PretrainConfig, raw=config))
    except OpmixError:
        kind = "instruct" if "tasks" in config else "continual" if continual else "update" if "update" in config else ""
        return kind or "pretrain", []


def _row(step: str, state: str, ledger: dict, marker: dict | None = None) -> dict:
    entry = ledger.get(step, {})
    return {"step": step, "state": state, "flops": entry.get("flops"), "seconds": entry.get("seconds"),
            "finished_at": (marker or {}).get("finished_at")}


def _index(planned: list[str], step: str) -> int:
    return planned.index(step) if step in planned else len(planned)


def _ledger(path: Path) -> dict:
    data = _read_json(path) or {}
    return {e["stage"]: e for e in data.get("stages", [])}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _lock_holder(run_dir: Path) -> int | None:
    """The pid of a live process holding the run, or None. The lock file holds the pid of its last holder; the
    lock itself is not probed, since taking it even for an instant could turn away a run that is starting."""
    try:
        text = (run_dir / ".lock").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid
