"""Progress on and off a terminal: a bar on a terminal, plain periodic lines otherwise, the run log and the
progress file that `opmix status` reads."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from opmix import progress as progress_module
from opmix.progress import (
    PROGRESS_FILE,
    RUN_LOG,
    Progress,
    configure,
    format_seconds,
    run_log,
)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level, settings = list(root.handlers), root.level, dict(progress_module._settings)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    progress_module._settings.update(settings)


def _console(monkeypatch, stream, **kwargs):
    monkeypatch.setattr("sys.stderr", stream)
    logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                       if not getattr(h, "_opmix_console", False)]
    configure(**kwargs)


def test_off_a_terminal_progress_is_plain_periodic_lines(monkeypatch):
    stream = io.StringIO()
    _console(monkeypatch, stream, interval=0.0)  # a line at every update
    with Progress("final", 4) as progress:
        for loss in (3.0, 2.5, 2.0, 1.5):
            progress.update(1, loss=loss)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("final: 1/4 steps (25%), loss 3.000") and "ETA" in lines[0]
    assert lines[3].startswith("final: 4/4 steps (100%), loss 1.500") and "ETA" not in lines[3]
    assert "\r" not in stream.getvalue()  # no bar redraws in a log file


def test_off_a_terminal_lines_are_rate_limited(monkeypatch):
    stream = io.StringIO()
    _console(monkeypatch, stream, interval=3600.0)
    with Progress("final", 100) as progress:
        for _ in range(100):
            progress.update(1, loss=1.0)
    assert stream.getvalue() == ""  # a fast piece of work logs nothing until its interval has passed


def test_on_a_terminal_a_bar_and_no_duplicate_lines(monkeypatch):
    stream = FakeTerminal()
    _console(monkeypatch, stream, interval=0.0)
    with Progress("prefix", 3) as progress:
        for _ in range(3):
            time.sleep(0.15)  # past tqdm's minimum redraw interval
            progress.update(1, loss=2.0)
    text = stream.getvalue()
    assert "prefix" in text and "3/3" in text and "\r" in text  # tqdm's bar, redrawn in place
    assert "prefix: 1/3 steps" not in text  # the plain line went to the log only


def test_quiet_shows_no_bar_and_no_lines(monkeypatch):
    stream = FakeTerminal()
    _console(monkeypatch, stream, quiet=True, interval=0.0)
    with Progress("prefix", 3) as progress:
        progress.update(3, loss=2.0)
    logging.getLogger("opmix").info("a milestone")
    assert stream.getvalue() == ""


def test_run_log_and_progress_file(monkeypatch, tmp_path):
    _console(monkeypatch, io.StringIO(), quiet=True, interval=0.0)
    with run_log(tmp_path):
        logging.getLogger("opmix.stages").info("prefix: steps 0..4")
        with Progress("prefix", 4) as progress:
            progress.update(2, loss=2.5)
            state = json.loads((tmp_path / PROGRESS_FILE).read_text())
            assert state["name"] == "prefix" and state["done"] in (0, 2) and state["total"] == 4
            assert not state["finished"]
        state = json.loads((tmp_path / PROGRESS_FILE).read_text())
        assert state["finished"] and state["done"] == 2 and state["postfix"]["loss"] == 2.5
    logging.getLogger("opmix.stages").info("after the run: not in its log")
    text = (tmp_path / RUN_LOG).read_text()
    assert "prefix: steps 0..4" in text and "prefix: 2/4 steps (50%)" in text  # complete even when quiet
    assert "after the run" not in text


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
