"""The wall time the run report and the progress display add to a finished run (issue 9; target < 2%).

    python benchmarks/bench_report_overhead.py RUN_DIR [--repeats 3]

Measured on RUN_DIR (a finished run, e.g. ``opmix demo``'s): ``write_report`` end to end (median of the repeats,
in a fresh process so matplotlib's import is counted), and ``Progress.update`` (bar off, as in a log file, with
progress.json written) called once per unit the run's steps did (training steps from the ledger's tokens, plus
evaluation batches), against the run's own ``elapsed_s``. Prints seconds and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _report_seconds(run_dir: Path) -> float:
    code = ("import time, sys; t = time.perf_counter(); from opmix.report_page import write_report; "
            "write_report(sys.argv[1]); print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True,
                                check=True).stdout.strip())


def _progress_seconds(calls: int) -> float:
    from opmix import progress

    progress.configure(quiet=True)  # no bars, no periodic lines on the console: the cost of the bookkeeping
    with tempfile.TemporaryDirectory() as root, progress.run_log(Path(root)):
        started = time.perf_counter()
        with progress.Progress("bench", calls) as bar:
            for i in range(calls):
                bar.update(1, loss=float(i))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    summary = json.loads((args.run_dir / "summary.json").read_text())
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    elapsed = float(summary["elapsed_s"])
    ledger = json.loads((args.run_dir / "ledger.json").read_text())
    tokens_per_step = config["train"]["batch_size"] * config["data"]["seq_len"]
    steps = sum(entry.get("tokens", 0) for entry in ledger["stages"]) // max(tokens_per_step, 1)
    calls = int(steps * 2)  # every training step, and as many evaluation batches (generous: fewer in practice)

    report = statistics.median(_report_seconds(args.run_dir) for _ in range(args.repeats))
    progress_s = statistics.median(_progress_seconds(calls) for _ in range(args.repeats))
    html = args.run_dir / "report" / "index.html"
    print(f"run: {args.run_dir} ({elapsed:.1f} s)")
    figures = len(list(html.parent.glob("*.png")))
    print(f"report: {report:.2f} s = {100 * report / elapsed:.2f}% of the run; index.html "
          f"{html.stat().st_size / 1024:.0f} KiB, {figures} PNG figures")
    print(f"progress: {calls} updates {progress_s:.3f} s = {100 * progress_s / elapsed:.3f}% of the run")
    print(f"total: {100 * (report + progress_s) / elapsed:.2f}% (target < 2%)")


if __name__ == "__main__":
    main()
