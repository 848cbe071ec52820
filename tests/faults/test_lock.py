"""A second invocation on a run directory in use is refused with a clear message and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from opmix.run.rundir import RunDir

pytestmark = pytest.mark.slow


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_second_invocation_is_refused_while_the_first_holds_the_run(tmp_path, tiny_pretrain_raw):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain_raw))
    out = tmp_path / "run"
    (out / "steps").mkdir(parents=True)
    (out / "steps" / "prefix.json").write_text("{}")  # something a corrupting second writer could touch
    before = _snapshot(out)

    with RunDir(out).lock():  # the first process: this test itself, holding the lock as a running opmix does
        second = subprocess.run(
            [sys.executable, "-m", "opmix.cli", "pretrain", "--config", str(config), "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )

    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines[-1] == (
        f"opmix: error: run directory {out.resolve()} is in use by another opmix process (pid {os.getpid()}); "
        "fix: wait for it to finish or use another --out"
    )
    assert _snapshot(out) == before  # refused before writing anything
