"""The run report (``opmix.report_page``) on tiny real runs: every figure is a valid PNG, the page is self-contained
and renders in headless Chromium with every figure decoded, and unfinished runs give a page instead of a crash."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from opmix.cli import main
from opmix.config import PretrainConfig, load_config
from opmix.config.continual import ContinualConfig
from opmix.recipes import continual, pretrain
from opmix.report_page import write_report
from opmix.run.rundir import RunDir

pytestmark = pytest.mark.slow

PRETRAIN_FIGURES = {"laws.png", "weights.png", "epochs.png", "eval_loss.png", "compute.png", "check.png"}
CONTINUAL_FIGURES = {"laws_s2.png", "laws_s3.png", "weights.png", "epochs.png", "stage_losses.png", "compute.png"}
# added by the test to its copy of the page only: the report itself needs no script to be read
DECODE_CHECK = ("<script>window.addEventListener('load', function () { var imgs = Array.from(document.images);"
                " var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
                " var out = document.createElement('pre'); out.id = 'decode-check';"
                " out.textContent = 'decoded ' + ok + ' of ' + imgs.length; document.body.appendChild(out); });"
                "</script>")


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, tiny_pretrain_base) -> Path:
    """A finished tiny pretraining run with the ERM baseline and the default guard, then a short `opmix check`."""
    from opmix.check import run_check

    raw = copy.deepcopy(tiny_pretrain_base)
    assert raw["baseline"] == "erm" and "guard" not in raw["method"]
    root = tmp_path_factory.mktemp("report")
    out = root / "pretrain"
    (config := root / "pretrain.yaml").write_text(yaml.safe_dump(raw))
    assert main(["pretrain", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert (out / "report" / "index.html").is_file()  # every run ends with its report
    run_check(out, runs=2, steps=2)
    return out


@pytest.fixture(scope="module")
def continual_run(tmp_path_factory, demo_corpus) -> Path:
    """A finished tiny continual run: three stages (one per demo domain), OP-Mix with its default guard."""
    raw = {
        "seed": 0, "model": {"builtin": "llama-tiny"}, "tokenizer": "builtin:bytes",
        "domains": [{"name": n, "files": [str(p) for p in paths]} for n, paths in demo_corpus.items()],
        "data": {"seq_len": 32, "eval_fraction": 0.1, "max_eval_sequences": 4},
        "train": {"steps": 6, "batch_size": 4, "lr": 3e-3, "eval_batch_size": 8, "warmup_fraction": 0.0},
        "method": {"probe_fraction": 0.5, "lora": {"r": 4, "alpha": 8}},
    }
    out = tmp_path_factory.mktemp("report") / "continual"
    with RunDir(out).lock() as run_dir:
        continual.run(load_config(None, ContinualConfig, raw=raw), run_dir)
    return out


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed to render the report and is not installed: install it "
                "(Debian: apt-get install -y chromium; .ci/run does this when it is missing)")


def _chromium_run(tmp_path: Path, *args: str) -> str:
    command = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 100, (path, image.size)
        assert image.convert("L").getextrema()[0] < 128, path  # something dark drawn on it, not a blank canvas


def _render(page: Path, tmp_path: Path, screenshot: Path | None = None) -> str:
    """Check the page is self-contained, render it in headless Chromium from a folder without its PNGs, and return
    the rendered DOM with every figure decoded."""
    html = page.read_text()
    assert "<script" not in html.lower() and "<link" not in html.lower()
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:3]
    alone = tmp_path / "alone"
    alone.mkdir(exist_ok=True)
    copy_ = alone / page.name
    copy_.write_text(html.replace("</body>", DECODE_CHECK + "</body>"))
    dom = _chromium_run(tmp_path, "--virtual-time-budget=10000", "--dump-dom", copy_.as_uri())
    counted = re.search(r"decoded (\d+) of (\d+)", dom)
    assert counted, "the page did not finish loading in Chromium"
    assert counted.group(1) == counted.group(2) == str(len(sources)), counted.group(0)
    if screenshot is not None:
        _chromium_run(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,4000", page.as_uri())
        _check_png(screenshot)
    return dom


def _sections_ok(dom: str) -> None:
    assert "could not be built" not in dom
    for title in ("Run", "Decision and warnings", "Mixing laws", "Mixture weights and repetition", "Eval loss",
                  "Compute", "Fidelity check"):
        assert f"<h2>{title}</h2>" in dom, title


def _escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_report_of_a_finished_pretraining_run(pretrain_run, tmp_path):
    page = write_report(pretrain_run)
    assert page == pretrain_run / "report" / "index.html"
    assert {p.name for p in page.parent.glob("*.png")} == PRETRAIN_FIGURES
    for name in PRETRAIN_FIGURES:
        _check_png(page.parent / name)
    _sections_ok(_render(page, tmp_path, screenshot=tmp_path / "pretrain.png"))
    text = page.read_text()  # what the page says (the DOM dump re-escapes text differently)
    assert "Absent" not in text  # every optional piece is there: proposal, baselines, check

    summary = json.loads((pretrain_run / "summary.json").read_text())
    laws = json.loads((pretrain_run / "propose" / "laws.json").read_text())["laws"]
    for law in laws:  # each law's fit error is printed next to its figure
        assert f"{law['rmse']:.3e}" in text and f"{law['r2']:.3f}" in text
    for warning in summary["warnings"]:
        assert _escaped(warning) in text
    assert _escaped(summary["guard"]["reason"]) in text
    assert "erm" in text and f"{summary['baselines']['erm']['mean_eval_loss']:.4f}" in text
    for entry in json.loads((pretrain_run / "ledger.json").read_text())["stages"]:
        assert f"<td>{entry['stage']}</td>" in text
    check = json.loads((pretrain_run / "check.json").read_text())
    assert f"{check['runs'][0]['real']:.4f}" in text

    again = write_report(pretrain_run)  # rewriting is fine, and the figures are the same set
    assert again == page and {p.name for p in page.parent.glob("*.png")} == PRETRAIN_FIGURES


def test_report_of_a_finished_continual_run(continual_run, tmp_path):
    page = write_report(continual_run)
    assert {p.name for p in page.parent.glob("*.png")} == CONTINUAL_FIGURES
    for name in CONTINUAL_FIGURES:
        _check_png(page.parent / name)
    _sections_ok(_render(page, tmp_path, screenshot=tmp_path / "continual.png"))
    text = page.read_text()
    summary = json.loads((continual_run / "summary.json").read_text())
    assert "continual" in text and "Stage 2 (new domain: prose)" in text and "Stage 3 (new domain: records)" in text
    for stage in summary["stages"]:
        assert f"{stage['mean_eval_loss']:.4f}" in text
        if stage.get("guard"):
            assert _escaped(stage["guard"]["reason"]) in text
    for warning in summary["warnings"]:
        assert _escaped(warning) in text


def _light_copy(run: Path, dest: Path) -> Path:
    """What the report reads of a run (no checkpoints, models or token cache)."""
    dest.mkdir()
    for path in run.iterdir():
        if path.is_file() and path.suffix in (".json", ".yaml", ".csv"):
            shutil.copy2(path, dest / path.name)
        elif path.is_dir() and (path.name == "steps" or path.name == "propose" or re.match(r"s\d+_(propose|proxies)$",
                                                                                            path.name)):
            shutil.copytree(path, dest / path.name)
    return dest


def test_report_shows_a_checked_guard_and_the_grid_oracle(pretrain_run, continual_run, tmp_path):
    """Records the tiny runs do not produce (their proposals are too close to the safe mixture to be checked, and
    the grid is its own method): the same runs' files with such records written in."""
    pre = _light_copy(pretrain_run, tmp_path / "pre")
    summary = json.loads((pre / "summary.json").read_text())
    summary["guard"].update(checked=True, fired=True, chosen="safe", real={"proposal": 4.5, "safe": 4.4},
                            reason="the proposal lost (made up for this test)")
    (pre / "summary.json").write_text(json.dumps(summary))
    _sections_ok(_render(page := write_report(pre), tmp_path))
    text = page.read_text()
    assert "the proposal lost (made up for this test)" in text and "proposal 4.5000, safe 4.4000" in text

    cont = _light_copy(continual_run, tmp_path / "cont")
    summary = json.loads((cont / "summary.json").read_text())
    summary["stages"][2]["grid"] = {"r": [0.1, 0.9], "best_r": 0.9, "best_loss": 4.0, "chosen_r": 0.5,
                                    "chosen_loss": 4.04, "regret": 0.01, "fidelity_spearman": float("nan")}
    (cont / "summary.json").write_text(json.dumps(summary))
    _sections_ok(_render(page := write_report(cont), tmp_path))
    assert "Grid oracle" in page.read_text() and "+1.00%" in page.read_text()


def test_report_of_runs_stopped_early(tiny_pretrain_raw, continual_run, tmp_path, monkeypatch):
    def stop(*args, **kwargs):  # stop the pretraining run right after its prefix
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "train_probes", stop)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt), RunDir(out).lock() as run_dir:
        pretrain.run(load_config(None, PretrainConfig, raw=tiny_pretrain_raw), run_dir)
    assert (out / "steps" / "prefix.json").is_file() and not (out / "propose").exists()
    page = write_report(out)
    assert {p.name for p in page.parent.glob("*.png")} == {"compute.png"}
    _check_png(page.parent / "compute.png")
    dom = _render(page, tmp_path)
    _sections_ok(dom)
    assert "partial: 1 step(s) done" in dom
    assert dom.count("Absent:") >= 5  # laws, proposal, repetition, eval loss, guard, check

    # a continual run stopped before its last stage's training: stages come from the step markers
    cut = _light_copy(continual_run, tmp_path / "cut")
    (cut / "summary.json").unlink()
    (cut / "steps" / "s3_train.json").unlink()
    (cut / "steps" / "export_final_model.json").unlink(missing_ok=True)
    page = write_report(cut)
    assert {"laws_s2.png", "laws_s3.png", "weights.png", "stage_losses.png"} <= {p.name for p in
                                                                                  page.parent.glob("*.png")}
    dom = _render(page, tmp_path)
    _sections_ok(dom)
    assert "partial:" in dom and "Warnings so far" in dom
