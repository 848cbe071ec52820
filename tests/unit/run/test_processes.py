"""Who writes in a multi-process run: rank 0, and another rank only inside ``own_writes`` (its own probe's files).
The collectives themselves are exercised by tests/distributed (two real processes); here the single-process
answers and the write guard, with the rank given by the launcher's environment (``RANK``) as before
``torch.distributed`` starts."""

from __future__ import annotations

import pytest

from opmix.run import processes
from opmix.run.atomic import atomic_dir, atomic_file, write_json
from opmix.run.rundir import RunDir


def test_one_process_is_rank_0_of_1_and_collectives_are_trivial():
    assert processes.rank() == 0 and processes.world_size() == 1 and processes.is_main()
    assert processes.gather({"a": 1}) == [{"a": 1}]
    assert processes.from_main(lambda: 42) == 42
    with processes.main_first():
        pass
    processes.barrier()


def test_a_rank_other_than_0_writes_nothing_unless_the_files_are_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not processes.writes_here()
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_file(tmp_path / "b.bin") as handle:
        handle.write(b"data")
    with atomic_dir(tmp_path / "c") as folder:
        (folder / "f.txt").write_text("x")
    run = RunDir(tmp_path / "run")
    (run.root / "art.txt").write_text("artifact")
    run.mark_done("step", [run.root / "art.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not (run.root / "steps").exists()
    with processes.own_writes():
        assert processes.writes_here()
        write_json(tmp_path / "mine.json", {"x": 2})
    assert (tmp_path / "mine.json").is_file() and not processes.writes_here()


@pytest.mark.parametrize("rank", ["0", ""])
def test_rank_0_writes(tmp_path, monkeypatch, rank):
    monkeypatch.setenv("RANK", rank)
    write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").is_file()
