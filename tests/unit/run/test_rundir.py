import errno
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from opmix.errors import OpmixError, RunLockedError
from opmix.run import atomic
from opmix.run.atomic import (
    atomic_dir,
    save_safetensors,
    write_csv,
    write_json,
    write_text,
    write_yaml,
)
from opmix.run.rundir import RunDir


def names(directory):
    return sorted(p.name for p in directory.iterdir())


# -- atomic writes -----------------------------------------------------------------------------------------


def test_json_is_deterministic_and_sorted(tmp_path):
    write_json(tmp_path / "a.json", {"b": 0.1, "a": [1, 2.5], "c": {"y": 1, "x": 2}})
    write_json(tmp_path / "b.json", {"c": {"x": 2, "y": 1}, "a": [1, 2.5], "b": 0.1})
    first, second = (tmp_path / "a.json").read_bytes(), (tmp_path / "b.json").read_bytes()
    assert first == second
    assert first.index(b'"a"') < first.index(b'"b"') < first.index(b'"c"')
    assert json.loads(first)["b"] == 0.1


def test_raising_serializer_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert names(tmp_path) == ["x.json"]


def test_failing_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OpmixError, match="x.txt"):
        write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert names(tmp_path) == ["x.txt"]


def fill_then_enospc(monkeypatch):
    real_write = os.write

    def write(fd, data):
        real_write(fd, bytes(data[: max(1, len(data) // 2)]))  # half the data lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", write)


def test_enospc_gives_one_line_error_with_fix_and_no_partial_file(tmp_path, monkeypatch):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    write_json(old, {"v": 1})
    fill_then_enospc(monkeypatch)
    with pytest.raises(OpmixError) as info:
        write_json(old, {"v": 2, "long": "x" * 1000})
    with pytest.raises(OpmixError):
        write_json(new, {"v": 2})
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message
    assert str(old) in message and f"free disk space on {tmp_path}" in message
    assert json.loads(old.read_text()) == {"v": 1}
    assert names(tmp_path) == ["old.json"]


def test_safetensors_round_trip_and_enospc(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    save_safetensors(target, {"a": torch.arange(6.0).reshape(2, 3)}, metadata={"step": "3"})
    before = target.read_bytes()
    assert torch.equal(load_file(target)["a"], torch.arange(6.0).reshape(2, 3))
    fill_then_enospc(monkeypatch)
    with pytest.raises(OpmixError, match="free disk space"):
        save_safetensors(target, {"a": torch.zeros(1000)})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert names(tmp_path) == ["w.safetensors"]


def test_csv_and_yaml(tmp_path):
    write_csv(tmp_path / "t.csv", [{"a": 1, "b": 0.5}, {"a": 2, "b": 0.25}], ["a", "b"])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,0.5\n2,0.25\n"
    with pytest.raises(ValueError):
        write_csv(tmp_path / "bad.csv", [{"a": 1, "zzz": 2}], ["a"])
    assert not (tmp_path / "bad.csv").exists()
    write_yaml(tmp_path / "c.yaml", {"z": 1, "a": {"b": [1, 2]}})
    assert (tmp_path / "c.yaml").read_text() == "a:\n  b:\n  - 1\n  - 2\nz: 1\n"


def test_atomic_dir_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"one")
        assert not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"two")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "cfg.json").write_text("{}")
    assert (target / "w.bin").read_bytes() == b"two" and (target / "sub" / "cfg.json").exists()
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w.bin").write_bytes(b"half")
            raise RuntimeError("training crashed")
    assert (target / "w.bin").read_bytes() == b"two"
    assert names(tmp_path) == ["adapter"]


# -- steps -------------------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    return RunDir(tmp_path / "run")


def test_mark_done_then_is_done_and_info(run):
    assert not run.is_done("prefix") and run.step_info("prefix") is None
    artifact = run.path("ckpt", "model.safetensors")
    artifact.write_bytes(b"weights" * 100)
    run.mark_done("prefix", [artifact], info={"loss": 2.5})
    assert run.is_done("prefix")
    assert run.step_info("prefix") == {"loss": 2.5}
    marker = json.loads((run.root / "steps" / "prefix.json").read_text())
    assert marker["artifacts"][0]["path"] == "ckpt/model.safetensors"  # relative: the run dir can be moved
    run.invalidate("prefix")
    assert not run.is_done("prefix")


@pytest.mark.parametrize("damage", ["missing", "truncated", "same_size_edit"])
def test_is_done_false_when_artifact_damaged(run, damage, caplog):
    artifact = run.path("probe.safetensors")
    artifact.write_bytes(b"abcdefgh" * 64)
    run.mark_done("probe", [artifact])
    assert run.is_done("probe")
    if damage == "missing":
        artifact.unlink()
    elif damage == "truncated":
        artifact.write_bytes(b"abcdefgh" * 32)
    else:
        data = bytearray(artifact.read_bytes())
        data[100] ^= 0xFF
        artifact.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="opmix.run.rundir"):
        assert not run.is_done("probe")
    assert "probe.safetensors" in caplog.text


def test_directory_artifact(run):
    adapter = run.path("probes", "old")
    with atomic_dir(adapter) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"w" * 50)
        (tmp / "nested").mkdir()
        (tmp / "nested" / "adapter_config.json").write_text('{"r": 16}')
    run.mark_done("probe-old", [adapter])
    files = json.loads((run.root / "steps" / "probe-old.json").read_text())["artifacts"][0]["files"]
    assert [f["path"] for f in files] == ["adapter_model.safetensors", "nested/adapter_config.json"]
    assert run.is_done("probe-old")
    (adapter / "nested" / "adapter_config.json").write_text('{"r": 32}')  # same size, other content
    assert not run.is_done("probe-old")
    (adapter / "nested" / "adapter_config.json").write_text('{"r": 16}')
    assert run.is_done("probe-old")
    (adapter / "adapter_model.safetensors").unlink()
    assert not run.is_done("probe-old")


def test_moved_run_dir_still_verifies(tmp_path):
    run = RunDir(tmp_path / "a")
    run.path("x.txt").write_text("x")
    run.mark_done("s", [run.path("x.txt")])
    (tmp_path / "a").rename(tmp_path / "b")
    assert RunDir(tmp_path / "b").is_done("s")


def test_mark_done_rejects_missing_artifact_and_bad_step_name(run):
    with pytest.raises(FileNotFoundError):
        run.mark_done("s", [run.root / "nope"])
    with pytest.raises(ValueError):
        run.mark_done("../escape", [])


# -- lock --------------------------------------------------------------------------------------------------


def test_lock_refuses_second_holder_and_is_released(run):
    with run.lock():
        assert (run.root / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}") as info:
            with RunDir(run.root).lock():
                pass
        assert "another --out" in str(info.value)
    with run.lock():  # released on exit
        pass


def test_lock_refuses_other_process(run):
    child = textwrap.dedent(
        f"""
        from opmix.errors import RunLockedError
        from opmix.run.rundir import RunDir
        try:
            with RunDir({str(run.root)!r}).lock():
                print("acquired")
        except RunLockedError as exc:
            print("refused:", exc)
        """
    )
    with run.lock():
        held = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    free = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert held.stdout.startswith("refused:") and f"pid {os.getpid()}" in held.stdout
    assert free.stdout.strip() == "acquired"


def test_lock_sweeps_leftover_temp_files(run):
    (run.root / f".x.json{atomic.TEMP_MARK}dead").write_text("partial")
    (run.root / "probes").mkdir()
    (run.root / "probes" / f".old{atomic.TEMP_MARK}dead").mkdir()
    run.path("keep.json").write_text("{}")
    with run.lock():
        pass
    assert names(run.root) == [".lock", "keep.json", "probes"]
    assert names(run.root / "probes") == []


# -- config ------------------------------------------------------------------------------------------------


def test_save_config_same_config_resumes(run):
    config = {"train": {"lr": 0.001, "steps": 100}, "domains": ["code", "math"]}
    run.save_config(config)
    run.save_config({"domains": ("code", "math"), "train": {"steps": 100, "lr": 0.001}})


def test_save_config_mismatch_names_key(run):
    run.save_config({"train": {"lr": 0.001, "steps": 100}, "seed": 0})
    with pytest.raises(OpmixError) as info:
        run.save_config({"train": {"lr": 0.002, "steps": 100}, "seed": 0})
    message = str(info.value)
    assert "train.lr" in message and "0.001" in message and "0.002" in message and "--out" in message
    with pytest.raises(OpmixError, match="seed"):
        run.save_config({"train": {"lr": 0.001, "steps": 100}})
    with pytest.raises(OpmixError, match="seed"):
        run.save_config({"train": {"lr": 0.001, "steps": 100}, "seed": False})  # False == 0 but not the same


def test_save_config_ignored_keys_may_differ_and_are_updated(run):
    run.save_config({"seed": 0, "output": {"plots": True}, "log_level": "info"})
    run.save_config({"seed": 0, "output": {"plots": False}, "log_level": "debug"}, ignore=["output", "log_level"])
    assert "plots: false" in (run.root / "config.yaml").read_text()
    with pytest.raises(OpmixError, match="seed"):
        run.save_config({"seed": 1, "output": {"plots": False}}, ignore=["output", "log_level"])
