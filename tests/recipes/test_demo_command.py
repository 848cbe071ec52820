"""`opmix demo` end to end, shrunk by overrides: the embedded default builds, trains, compares with ERM, prints."""

import json

import pytest

from opmix.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_whole_recipe_and_erm(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["-q", "demo", "--out", str(out), "model.builtin=llama-tiny", "train.steps=10",
                 "train.batch_size=4", "data.seq_len=32", "data.max_eval_sequences=4", "method.n_proxies=10"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "mixture" in printed and "average" in printed and "ERM" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mixture"]) == {"code", "prose", "records"}
    assert summary["baseline"]["name"] == "erm"
    assert (out / "data" / "demo.json").is_file()  # the corpus lives in the run directory
