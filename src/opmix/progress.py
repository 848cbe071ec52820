"""What a user sees while a run works.

On a terminal, every long piece of work (training, proxy evaluation, tokenization) shows a bar with its rate, loss
and ETA. Off a terminal (Slurm, nohup, a redirect) the bar would be invisible, so the same progress is logged as a
plain line every ``interval`` seconds instead. Either way the lines go to the run's own ``run.log``, and the latest
state of the running piece to ``progress.json`` in the run directory, which ``opmix status`` reads from another
process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opmix.run.processes import is_main

log = logging.getLogger("opmix.progress")

PROGRESS_FILE = "progress.json"
RUN_LOG = "run.log"
_WRITE_EVERY_S = 2.0  # progress.json: often enough for `opmix status`, rare enough to cost nothing

_settings = {"interval": 30.0, "bars": None, "run_root": None}


def configure(quiet: bool = False, verbose: bool = False, interval: float | None = None) -> None:
    """The CLI's console: warnings only (``quiet``), milestones (default) or everything (``verbose``); bars when
    stderr is a terminal and not quiet, plain progress lines every ``interval`` seconds otherwise."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    if not is_main():  # the processes of one run: rank 0 speaks for them, the others only of their errors
        quiet, level = True, logging.ERROR
    root = logging.getLogger()
    root.setLevel(level)
    console = next((h for h in root.handlers if getattr(h, "_opmix_console", False)), None)
    if console is None:
        console = _StderrHandler()
        console._opmix_console = True
        console.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(console)
    console.setLevel(level)
    bars = not quiet and _is_terminal(sys.stderr)
    console.filters.clear()
    if bars:  # the bar already shows it; the line still goes to run.log
        console.addFilter(lambda record: record.name != log.name)
    _settings["bars"] = bars
    if interval is not None:
        _settings["interval"] = float(interval)
    elif os.environ.get("OPMIX_PROGRESS_INTERVAL"):
        _settings["interval"] = float(os.environ["OPMIX_PROGRESS_INTERVAL"])


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirected stream), not the one
    that was current when the handler was made."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


@contextmanager
def run_log(root: Path) -> Iterator[None]:
    """While a run holds ``root``: its log lines (all of opmix's, every level from INFO) also go to ``run.log``, and
    progress to ``progress.json``."""
    if not is_main():  # one writer: rank 0's log is the run's
        yield
        return
    handler = logging.FileHandler(Path(root) / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    opmix_logger = logging.getLogger("opmix")
    previous_level = opmix_logger.level
    if opmix_logger.getEffectiveLevel() > logging.INFO:  # quiet console, complete log file
        opmix_logger.setLevel(logging.INFO)
    opmix_logger.addHandler(handler)
    _settings["run_root"] = Path(root)
    try:
        yield
    finally:
        _settings["run_root"] = None
        opmix_logger.removeHandler(handler)
        opmix_logger.setLevel(previous_level)
        handler.close()


class Progress:
    """Progress of one piece of work: ``total`` units of ``unit``; ``update(n, loss=...)`` after each."""

    def __init__(self, name: str, total: int, unit: str = "step"):
        self.name, self.total, self.unit = name, max(int(total), 0), unit
        self.done, self.postfix, self._logged = 0, {}, 0
        self._started = self._last_line = self._last_write = time.perf_counter()
        self._bar = None
        if self._bars_on():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=name, unit=unit, leave=False, dynamic_ncols=True)
        self._write_state(force=True)

    def update(self, n: int = 1, **postfix: float) -> None:
        self.done += n
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)
        now = time.perf_counter()
        if now - self._last_line >= _settings["interval"]:
            self._last_line, self._logged = now, self.done
            log.info("%s", self.line())
        self._write_state()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._logged != self.done and time.perf_counter() - self._started >= _settings["interval"]:
            log.info("%s", self.line())  # a long piece also ends with a line, so the log shows its rate
        self._write_state(force=True, finished=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def line(self) -> str:
        """``final: 120/480 steps (25%), loss 2.310, 3.1 steps/s, ETA 1m56s``."""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k} {v:.3f}" for k, v in self.postfix.items())
        eta = self.eta_s
        units = _plural(self.unit)
        return (f"{self.name}: {self.done}/{self.total} {units}{percent}{extra}, {self.rate:.2f} {units}/s"
                + (f", ETA {format_seconds(eta)}" if eta is not None and self.done < self.total else ""))

    def _bars_on(self) -> bool:
        bars = _settings["bars"]
        if not is_main():
            return False
        return _is_terminal(sys.stderr) if bars is None else bars  # a library user: bars on a terminal

    def _write_state(self, force: bool = False, finished: bool = False) -> None:
        root = _settings["run_root"] if is_main() else None  # rank 0's progress only, even in its own writes
        now = time.perf_counter()
        if root is None or not (force or now - self._last_write >= min(_WRITE_EVERY_S, _settings["interval"])):
            return
        self._last_write = now
        from opmix.run.atomic import write_json

        write_json(root / PROGRESS_FILE, {
            "name": self.name, "done": self.done, "total": self.total, "unit": self.unit,
            "rate": self.rate, "eta_s": self.eta_s, "postfix": self.postfix, "finished": finished,
            "pid": os.getpid(), "updated": time.time(),
        })


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _plural(unit: str) -> str:
    return unit[:-1] + "ies" if unit.endswith("y") else unit + "s"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
