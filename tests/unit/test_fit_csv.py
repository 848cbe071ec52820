"""`opmix fit`: laws and a mixture from an Olmix-style swarm on disk. Synthetic swarms from a known law of the
project's family (``exp(c) + exp(t . x)``); the malformed inputs each exit 2 naming the fix."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from opmix.cli import main
from opmix.errors import OpmixError
from opmix.fit_csv import match_domains, read_ratios, read_table, resolve_prior
from opmix.law import laws_from_rows

DOMAINS = ["arxiv", "code", "web"]
METRICS = ["eval/arxiv_val_loss", "code_bpb", "hellaswag_acc"]  # the last is a score (higher is better)
T_TRUE = np.array([[-1.5, 0.3, 0.2], [0.2, -1.2, 0.4], [0.3, 0.1, -0.8]])  # (metrics, domains)
C_TRUE = np.array([-1.0, -0.5, -2.0])


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _true_losses(X: np.ndarray) -> np.ndarray:
    return np.exp(C_TRUE) + np.exp(X @ T_TRUE.T)  # (n, metrics)


def _swarm(folder: Path, n: int = 30, noise: float = 0.0, seed: int = 0) -> tuple[Path, Path]:
    """ratios.csv (Dirichlet(1) mixtures) and metrics.csv (the known law + Gaussian noise; the score column holds
    1 - loss) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(len(DOMAINS)), size=n)
    Y = _true_losses(X) + rng.normal(0.0, noise, size=(n, len(METRICS)))
    Y[:, 2] = 1.0 - Y[:, 2]
    runs = [f"run_{i:03d}" for i in range(n)]
    ratios = _write(folder / "ratios.csv", ["run", *DOMAINS], [[r, *x] for r, x in zip(runs, X.tolist())])
    metrics = _write(folder / "metrics.csv", ["run", *METRICS], [[r, *y] for r, y in zip(runs, Y.tolist())])
    return ratios, metrics


def _fit(ratios: Path, metrics: Path, out: Path, *extra: str) -> int:
    return main(["fit", "--ratios", str(ratios), "--metrics", str(metrics), "--out", str(out),
                 "--higher-is-better", METRICS[2], *extra])


@pytest.fixture(scope="module")
def capped_fit(tmp_path_factory):
    """A noise-free swarm fitted with a holdout, --predict and a binding cap on arxiv (4 * 5e7 / 1e9 = 0.2)."""
    root = tmp_path_factory.mktemp("capped")
    ratios, metrics = _swarm(root, n=30)
    tokens = _write(root / "tokens.csv", ["domain", "tokens"], [["arxiv", 5e7], ["code", 1e9], ["web", 1e9]])
    mixes = np.array([[1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1], [0.0, 0.5, 0.5], [0.05, 0.05, 0.9]])
    predict = _write(root / "mixes.csv", ["run", "web", "arxiv", "code"],  # another column order
                     [[f"m{i}", x[2], x[0], x[1]] for i, x in enumerate(mixes.tolist())])
    code = _fit(ratios, metrics, root / "out", "--tokens", str(tokens), "--budget", "1e9", "--prior", "uniform",
                "--predict", str(predict), "--holdout", "0.2", "--seed", "3")
    assert code == 0
    return root / "out", mixes


def test_writes_every_file_and_respects_the_cap(capped_fit):
    out, _ = capped_fit
    mixture = json.loads((out / "mixture.json").read_text())
    weights = mixture["domains"]
    assert sum(weights.values()) == 1.0
    assert weights["arxiv"] <= 0.2 + 1e-7 and weights["arxiv"] == pytest.approx(0.2, abs=1e-5)  # the cap binds
    assert mixture["caps"] == pytest.approx({"arxiv": 0.2, "code": 4.0, "web": 4.0})
    assert mixture["settings"]["fit_runs"] == 24 and len(mixture["settings"]["held_out_runs"]) == 6
    sources = yaml.safe_load((out / "mixture.yaml").read_text())["sources"]
    assert [s["name"] for s in sources] == DOMAINS
    assert {s["name"]: s["weight"] for s in sources} == weights
    laws = json.loads((out / "laws.json").read_text())["laws"]
    assert [row["own_domain"] for row in laws] == ["arxiv", "code", None]  # "hellaswag_acc" names no domain
    assert [row["higher_is_better"] for row in laws] == [False, False, True]


def test_holdout_spearman_is_high_on_noise_free_data(capped_fit, capsys):
    out, _ = capped_fit
    laws = json.loads((out / "laws.json").read_text())["laws"]
    for row in laws:
        assert row["holdout"]["n"] == 6
        assert row["holdout"]["spearman"] > 0.95
        assert row["holdout"]["rmse"] < 1e-3


def test_predictions_equal_the_laws_predictions(capped_fit):
    out, mixes = capped_fit
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [f"m{i}" for i in range(len(mixes))]
    laws = laws_from_rows(json.loads((out / "laws.json").read_text())["laws"])
    for j, (metric, law) in enumerate(zip(METRICS, laws)):
        expected = law.predict(mixes)
        expected = 1.0 - expected if j == 2 else expected  # a score is predicted back in its own units
        assert [float(r[metric]) for r in rows] == expected.tolist()
        truth = _true_losses(mixes)[:, j]
        assert np.allclose(expected, 1.0 - truth if j == 2 else truth, atol=2e-3)


def _grid(step: int = 200) -> np.ndarray:
    pts = [(a, b, step - a - b) for a, b in itertools.product(range(step + 1), repeat=2) if a + b <= step]
    return np.array(pts, dtype=float) / step


def test_recovers_the_known_optimum_and_is_deterministic(tmp_path):
    ratios, metrics = _swarm(tmp_path / "swarm", n=30, noise=1e-4, seed=1)
    assert _fit(ratios, metrics, tmp_path / "a", "--kl-weight", "0", "--jobs", "1") == 0
    assert _fit(ratios, metrics, tmp_path / "b", "--kl-weight", "0", "--jobs", "2") == 0
    for name in ("mixture.json", "laws.json", "mixture.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    proposed = np.array([json.loads((tmp_path / "a" / "mixture.json").read_text())["domains"][d] for d in DOMAINS])
    grid = _grid()
    objective = _true_losses(grid).mean(axis=1)  # the known law's mean loss over the simplex
    best = grid[int(np.argmin(objective))]
    assert np.abs(proposed - best).sum() < 0.03
    assert _true_losses(proposed[None])[0].mean() <= objective.min() + 1e-4


# -- bad input: exit 2 with one line naming the problem and the fix -------------------------------------------------

def _good_rows(n: int = 6) -> tuple[list[list], list[list]]:
    X = np.random.default_rng(0).dirichlet(np.ones(3), size=n)
    ratios = [[f"r{i}", *x] for i, x in enumerate(X.tolist())]
    metrics = [[f"r{i}", *y[:2], 0.5] for i, y in enumerate(_true_losses(X).tolist())]
    return ratios, metrics


def _case(tmp_path: Path, ratios=None, metrics=None, ratio_header=None, metric_header=None):
    good_r, good_m = _good_rows()
    r = _write(tmp_path / "ratios.csv", ratio_header or ["run", *DOMAINS], good_r if ratios is None else ratios)
    m = _write(tmp_path / "metrics.csv", metric_header or ["run", *METRICS], good_m if metrics is None else metrics)
    return r, m


def _broken(rows: list[list], i: int, j: int, value) -> list[list]:
    rows = [list(row) for row in rows]
    rows[i][j] = value
    return rows


GOOD_R, GOOD_M = _good_rows()
BAD = {
    "no run column": (dict(ratios=[row[1:] for row in GOOD_R], ratio_header=DOMAINS), [],
                      ["no run-id column", "add a first column 'run'"]),
    "row sum": (dict(ratios=_broken(GOOD_R, 1, 1, GOOD_R[1][1] + 0.1)), [],
                ["ratios.csv, line 3 (run 'r1')", "sum to", "sum to 1"]),
    "negative ratio": (dict(ratios=_broken(GOOD_R, 0, 2, -0.1)), [], ["line 2", "column 'code'", "weights >= 0"]),
    "nan metric": (dict(metrics=_broken(GOOD_M, 2, 2, "nan")), [],
                   ["metrics.csv, line 4 (run 'r2'), column 'code_bpb': missing value", "remove run 'r2'"]),
    "empty metric": (dict(metrics=_broken(GOOD_M, 4, 1, "")), [], ["line 6", "missing value", "fill it in"]),
    "non-numeric metric": (dict(metrics=_broken(GOOD_M, 0, 3, "high")), [],
                           ["column 'hellaswag_acc'", "'high' is not a number", "drop column 'hellaswag_acc'"]),
    "non-numeric ratio": (dict(ratios=_broken(GOOD_R, 3, 3, "0.2x")), [], ["line 5", "column 'web'", "not a number"]),
    "run only in ratios": (dict(metrics=GOOD_M[:-1]), [], ["1 run(s) in", "['r5']", "give every run in both files"]),
    "run only in metrics": (dict(metrics=GOOD_M + [["r9", 1.0, 1.0, 0.5]]), [], ["['r9']", "in both files"]),
    "duplicate run": (dict(ratios=GOOD_R + [GOOD_R[0]]), [], ["'r0' appears twice (lines 2 and 8)", "one row per"]),
    "ragged row": (dict(metrics=[GOOD_M[0][:3], *GOOD_M[1:]]), [], ["line 2: 3 cells for 4 columns"]),
    "too few runs": (dict(ratios=GOOD_R[:4], metrics=GOOD_M[:4]), [], ["4 runs to fit laws of 4 parameters",
                                                                       "at least 5 runs"]),
    "holdout leaves too few": (dict(), ["--holdout", "0.5"], ["hold out at least 3 runs"]),
    "unknown score column": (dict(), ["--higher-is-better", "mmlu"], ["['mmlu']", "use its columns"]),
    "non-positive loss": (dict(metrics=_broken(GOOD_M, 1, 1, 0.0)), [], ["line 3", "not > 0", "--higher-is-better"]),
    "budget without tokens": (dict(), ["--budget", "1e9"], ["need each domain's tokens", "--tokens"]),
    "natural without tokens": (dict(), ["--prior", "natural"], ["--prior natural", "--tokens"]),
    "prior not a file": (dict(), ["--prior", "zipf"], ["neither uniform, natural nor an existing file"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_naming_the_fix(tmp_path, capsys, name):
    files, extra, phrases = BAD[name]
    ratios, metrics = _case(tmp_path, **files)
    assert _fit(ratios, metrics, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("opmix: error: ") and "; fix: " in err and "\n" not in err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert not (tmp_path / "out").exists()  # every input is checked before anything is written


def test_infeasible_caps_are_a_clear_error(tmp_path, capsys):
    ratios, metrics = _case(tmp_path)
    tokens = _write(tmp_path / "tokens.csv", ["domain", "tokens"], [[d, 5e7] for d in DOMAINS])
    assert _fit(ratios, metrics, tmp_path / "out", "--tokens", str(tokens), "--budget", "1e9") == 2
    err = capsys.readouterr().err
    assert "caps sum to 0.6 < 1" in err and "raise the repetition factor" in err


def test_tokens_missing_a_domain(tmp_path, capsys):
    ratios, metrics = _case(tmp_path)
    tokens = _write(tmp_path / "tokens.csv", ["domain", "tokens"], [["arxiv", 1e9], ["code", 1e9]])
    assert _fit(ratios, metrics, tmp_path / "out", "--tokens", str(tokens)) == 2
    assert "no tokens for domain(s) ['web']" in capsys.readouterr().err


# -- the reader's rules, without fitting ------------------------------------------------------------------------

def test_run_column_rules(tmp_path):
    rows = [["a", 0.5, 0.5, "x"], ["b", 0.25, 0.75, "y"]]
    table = read_ratios(_write(tmp_path / "r1.csv", ["id", "d1", "d2", "name"], rows))  # text ids; label ignored
    assert (table.run_column, table.runs, table.columns) == ("id", ["a", "b"], ["d1", "d2"])
    table = read_ratios(_write(tmp_path / "r2.csv", ["d1", "run_id", "d2"], [[0.5, "a", 0.5], [0.2, "b", 0.8]]))
    assert (table.run_column, table.columns) == ("run_id", ["d1", "d2"])
    numeric = _write(tmp_path / "r3.csv", ["step", "d1", "d2"], [[1, 0.5, 0.5], [2, 0.3, 0.7]])
    assert read_ratios(numeric, run_hint="step").runs == ["1", "2"]  # both files name their first column "step"
    with pytest.raises(OpmixError, match="no run-id column"):
        read_table(numeric, "ratios", run_hint="run")


def test_rows_within_1e_2_are_renormalised(tmp_path):
    path = _write(tmp_path / "r.csv", ["run", "d1", "d2"], [["a", 0.504, 0.5], ["b", 0.3, 0.7]])
    table = read_ratios(path)
    assert table.values[0].tolist() == pytest.approx([0.504 / 1.004, 0.5 / 1.004]) and table.values.sum(1) == \
        pytest.approx(1.0, abs=1e-15)


def test_metric_names_match_the_longest_domain_name():
    assert match_domains(["eval/webtext_loss", "ARXIV_val", "hellaswag"], ["web", "webtext", "arxiv"]) == [1, 2, None]


def test_prior_files(tmp_path):
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"domains": {"a": 1, "b": 3, "other": 5}}))  # e.g. a mixture.json
    assert resolve_prior(str(as_json), ["a", "b"], None)[1].tolist() == [0.25, 0.75]
    as_csv = _write(tmp_path / "p.csv", ["domain", "weight"], [["b", 1], ["a", 1]])
    assert resolve_prior(str(as_csv), ["a", "b"], None)[1].tolist() == [0.5, 0.5]
    assert resolve_prior(None, ["a", "b"], np.array([1.0, 3.0])) == ("natural", pytest.approx([0.25, 0.75]))
    with pytest.raises(OpmixError, match="no weight for domain"):
        resolve_prior(str(as_csv), ["a", "b", "c"], None)
