"""``opmix fit``: mixing laws and a proposed mixture from an Olmix-style swarm on disk, without training.

The rules in full are in docs/fit.md. Ratios rows: a row within ``ROW_SUM_TOLERANCE`` (1e-2) of 1 is renormalised
(weights written with three decimals over twenty domains are off by up to ~1e-2); any other row is refused. The
run-id column is ``run`` or ``run_id``, else the first column when its cells are not all numbers or both files
name it alike (a column of numbers under a name of its own could be a domain or a metric: refused, not guessed).
One law per metric (`opmix.law`, law j seeded ``seed + j``; scores fitted as ``1 - score``), its own domain the
one whose name the metric's contains (longest match); the KL proposer (`opmix.propose`) with the prior and caps;
`opmix.diagnostics`' warnings (their "proxies" are the runs here). Every input is checked before anything is
fitted or written.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml
from scipy.stats import spearmanr

from opmix.diagnostics import law_measures, law_warnings
from opmix.errors import OpmixError
from opmix.export import ZERO_WEIGHT, _sum_to_one
from opmix.law import fit_laws
from opmix.propose import KLProposer, repetition_caps
from opmix.run.atomic import write_csv, write_json, write_text

log = logging.getLogger(__name__)

RUN_COLUMNS = ("run", "run_id")
LABEL_COLUMNS = ("name", "index")  # Olmix's optional labels, not domains or metrics
ROW_SUM_TOLERANCE = 1e-2  # a ratios row within this of 1 is renormalised; others are refused
_MISSING = {"", "nan", "na", "n/a", "null", "none"}


class MixingLaw(Protocol):
    """What ``opmix fit`` needs of a law (`opmix.law.LogLinearLaw` is one): ``fit``, ``predict``, its parameters
    (``to_dict``), and the exponents ``t_`` of its ``exp(t . x)`` term, which the KL proposer minimises over."""

    own_component: int | None
    t_: np.ndarray
    def fit(self, X: np.ndarray, y: np.ndarray) -> MixingLaw: ...
    def predict(self, X: np.ndarray) -> np.ndarray: ...
    def to_dict(self) -> dict: ...


# law kind -> fit(X, Y, own_components, seed) -> one fitted law per column of Y (law j seeded seed + j)
LAWS: dict[str, Callable[..., list[MixingLaw]]] = {"loglinear": fit_laws}


@dataclass
class Table:
    path: Path
    run_column: str
    runs: list[str]
    columns: list[str]
    values: np.ndarray  # (n_runs, n_columns)
    lines: list[int]  # the file line of each run


def _where(table: Table, i: int, column: str | None = None) -> str:
    return f"{table.path}, line {table.lines[i]} (run {table.runs[i]!r})" + (f", column {column!r}" if column else "")


def _read_rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not path.is_file():
        raise OpmixError(f"{what} file {path} not found", f"give the path of the {what} CSV")
    try:
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
        rows = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OpmixError(f"cannot read {what} file {path} ({exc})", "give a UTF-8 CSV file") from exc
    if len(rows) < 2:
        raise OpmixError(f"{what} file {path} has no rows under its header", "give one row per run (or mixture)")
    header = rows[0][1]
    if "" in header or len(set(header)) != len(header):
        raise OpmixError(f"{path}: the header has an empty or repeated column name: {header}",
                         "give every column a distinct name")
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise OpmixError(f"{path}, line {line}: {len(row)} cells for {len(header)} columns",
                             "give every row one cell per header column (quote cells that hold commas)")
    return header, rows[1:]


def _number(cell: str) -> float | str:
    """The cell's value, or why it has none."""
    try:
        value = math.nan if cell.lower() in _MISSING else float(cell)
    except ValueError:
        return f"{cell!r} is not a number"
    return value if math.isfinite(value) else "missing value" if math.isnan(value) else f"{cell!r} is not finite"


def read_table(path: Path, what: str, run_hint: str | None = None) -> Table:
    """A run-id column and numeric columns (see the module docstring); ``run_hint``: the other file's run column."""
    path = Path(path)
    header, rows = _read_rows(path, what)
    lowered = [h.lower() for h in header]
    named = [lowered.index(n) for n in RUN_COLUMNS if n in lowered]
    if named:
        run = named[0]
    elif header[0] == run_hint or any(isinstance(_number(row[0]), str) for _, row in rows):
        run = 0
    else:
        raise OpmixError(f"{path} has no run-id column (no 'run' or 'run_id' column, and its first column "
                         f"{header[0]!r} holds numbers)", "add a first column 'run' with each run's id to both files")
    keep = [j for j, h in enumerate(lowered) if j != run and h not in LABEL_COLUMNS]
    table = Table(path, header[run], [row[run] for _, row in rows], [header[j] for j in keep],
                  np.zeros((len(rows), len(keep))), [line for line, _ in rows])
    seen: dict[str, int] = {}
    for i, (line, row) in enumerate(rows):
        if not table.runs[i]:
            raise OpmixError(f"{path}, line {line}: empty run id", f"give every row an id in column {header[run]!r}")
        if table.runs[i] in seen:
            raise OpmixError(f"{path}: run {table.runs[i]!r} appears twice (lines {seen[table.runs[i]]} and {line})",
                             "keep one row per run (average repeated runs first if they are repeats)")
        seen[table.runs[i]] = line
        for c, j in enumerate(keep):
            value = _number(row[j])
            if isinstance(value, str):
                if value != "missing value":
                    fix = f"write a plain number, or drop column {header[j]!r} if it is neither a domain nor a metric"
                elif what == "metrics":
                    fix = f"fill it in, or remove run {table.runs[i]!r} from both files"
                else:
                    fix = "fill it in (0 for a domain the run did not use)"
                raise OpmixError(f"{_where(table, i, header[j])}: {value}", fix)
            table.values[i, c] = value
    if not keep:
        raise OpmixError(f"{path} has no columns besides the run id", "give one column per domain (or metric)")
    return table


def read_ratios(path: Path, run_hint: str | None = None, what: str = "ratios") -> Table:
    """The ratios table, each row checked to be a mixture and renormalised (module docstring)."""
    table = read_table(path, what, run_hint)
    if len(table.columns) < 2:
        raise OpmixError(f"{path} has {len(table.columns)} domain column", "give two or more domains to mix")
    for i, row in enumerate(table.values):
        if np.any(row < 0):
            raise OpmixError(f"{_where(table, i, table.columns[int(np.argmax(row < 0))])}: negative weight",
                             "give weights >= 0")
        if abs(row.sum() - 1.0) > ROW_SUM_TOLERANCE:
            raise OpmixError(f"{_where(table, i)}: the weights sum to {row.sum():.6g}, not 1",
                             f"give each run's mixture as weights that sum to 1 (within {ROW_SUM_TOLERANCE:g}; "
                             "such rows are renormalised)")
    table.values /= table.values.sum(axis=1, keepdims=True)
    return table


def join_runs(ratios: Table, metrics: Table) -> np.ndarray:
    """The metrics rows in the order of the ratios rows; every run must be in both files."""
    for here, there in ((ratios, metrics), (metrics, ratios)):
        known = set(there.runs)
        only = [r for r in here.runs if r not in known]
        if only:
            raise OpmixError(f"{len(only)} run(s) in {here.path} are not in {there.path}: {only[:5]}"
                             f"{' ...' if len(only) > 5 else ''}", "give every run in both files, or remove the "
                                                                    "runs that one file lacks")
    index = {r: i for i, r in enumerate(metrics.runs)}
    return metrics.values[[index[r] for r in ratios.runs]]


def match_domains(metrics: Sequence[str], domains: Sequence[str]) -> list[int | None]:
    """For each metric, the domain whose name it contains (case-insensitive; the longest such name), else None."""
    hits = [[j for j, d in enumerate(domains) if d.lower() in metric.lower()] for metric in metrics]
    return [max(h, key=lambda j: len(domains[j])) if h else None for h in hits]


def _name_value_file(path: Path, domains: Sequence[str], what: str) -> np.ndarray:
    """``domain,value`` rows (a header optional), or for ``.json`` a ``{domain: value}`` map (or ``{"domains":
    {...}}``, e.g. a mixture.json), aligned with ``domains``; values for other domains are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text) if path.suffix.lower() == ".json" else None
    except (OSError, ValueError) as exc:  # ValueError: undecodable bytes, bad JSON
        raise OpmixError(f"cannot read {what} file {path} ({exc})",
                         f"give a CSV of domain,{what} rows or a JSON map domain -> {what}") from exc
    mapping = data.get("domains", data) if isinstance(data, dict) else data
    if data is not None and not isinstance(mapping, dict):
        raise OpmixError(f"{path} is not a JSON map domain -> {what}", "write it as {\"domain\": 1.0, ...}")
    if data is not None:
        pairs = [(str(k), str(v), 0) for k, v in mapping.items()]
    else:
        rows = enumerate(csv.reader(io.StringIO(text)), 1)
        pairs = [(row[0].strip(), "".join(row[1:2]).strip(), n) for n, row in rows if any(c.strip() for c in row)]
        pairs = pairs[1:] if pairs and isinstance(_number(pairs[0][1]), str) else pairs  # a header row
    values: dict[str, float] = {}
    for name, cell, line in pairs:
        value = _number(cell)
        if isinstance(value, str) or value < 0 or name in values:
            why = "repeated" if name in values else value if isinstance(value, str) else "negative"
            raise OpmixError(f"{path}{f', line {line}' if line else ''} ({name!r}): {why}",
                             f"give one non-negative {what} per domain")
        values[name] = value
    missing = [d for d in domains if d not in values]
    if missing:
        raise OpmixError(f"{path} has no {what} for domain(s) {missing}", f"give every ratios domain a {what}")
    return np.array([values[d] for d in domains], dtype=float)


def resolve_prior(spec: str | None, domains: Sequence[str], tokens: np.ndarray | None) -> tuple[str, np.ndarray]:
    """(name, q): ``uniform``, ``natural`` (token shares), or a file; default natural with tokens, else uniform."""
    spec = spec or ("natural" if tokens is not None else "uniform")
    if spec == "uniform":
        return spec, np.full(len(domains), 1.0 / len(domains))
    if spec == "natural":
        if tokens is None:
            raise OpmixError("--prior natural needs each domain's tokens", "give --tokens tokens.csv")
        weights = tokens
    elif not Path(spec).is_file():
        raise OpmixError(f"--prior {spec!r} is neither uniform, natural nor an existing file",
                         "give uniform, natural, or a CSV (domain,weight rows) or JSON file of domain weights")
    else:
        weights = _name_value_file(Path(spec), domains, "weight")
    if weights.sum() <= 0:
        raise OpmixError(f"the prior {spec!r} gives every domain weight 0", "give some domain a positive weight")
    return spec, weights / weights.sum()


def _keep_freed_memory() -> None:
    """In a law-fitting worker (glibc): keep freed memory instead of returning it. A fit allocates and frees ~1 MB
    arrays thousands of times, each an mmap/munmap pair by default: half of a 512-run fit's time went to that."""
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 25), ctypes.CDLL(None).mallopt(-1, 1 << 26)  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def fit_metric_laws(X: np.ndarray, Y: np.ndarray, own: Sequence[int | None], seed: int = 0, jobs: int = 1,
                    law: str = "loglinear") -> list[MixingLaw]:
    """One law per column of ``Y``, law j seeded ``seed + j``, fitted in ``jobs`` forked worker processes (each
    law's fit is the same computation wherever it runs: the result does not depend on ``jobs``)."""
    fit = LAWS[law]
    if "fork" not in multiprocessing.get_all_start_methods():
        return fit(X, Y, list(own), seed=seed)
    with ProcessPoolExecutor(max(1, min(jobs, Y.shape[1])), mp_context=multiprocessing.get_context("fork"),
                             initializer=_keep_freed_memory) as pool:
        futures = [pool.submit(fit, X, Y[:, [j]], [own[j]], seed=seed + j) for j in range(Y.shape[1])]
        return [future.result()[0] for future in futures]


def holdout_split(n: int, fraction: float, seed: int, min_fit: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, held-out) row indices, each sorted; at least 3 held out and ``min_fit`` to fit on."""
    if not 0 < fraction < 1:
        raise OpmixError(f"--holdout {fraction} is not a fraction", "give a fraction between 0 and 1, e.g. 0.2")
    held = int(round(fraction * n))
    if held < 3 or n - held < min_fit:
        raise OpmixError(f"--holdout {fraction} of {n} runs leaves {held} held out and {n - held} to fit on",
                         f"hold out at least 3 runs and keep at least {min_fit} to fit on (another fraction)")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def run_fit(ratios: Path, metrics: Path, out: Path, prior: str | None = None, kl_weight: float = 0.05,
            tokens: Path | None = None, budget: float | None = None, repetition: float = 4.0,
            higher_is_better: Sequence[str] = (), predict: Path | None = None, holdout: float | None = None,
            seed: int = 0, jobs: int | None = None) -> dict:
    """Check every input (before anything is fitted or written), fit, propose, write ``out``'s files; returns
    what `format_fit` prints. ``jobs``: processes fitting laws (default: the CPUs this process may use)."""
    R = read_ratios(Path(ratios))
    M = read_table(Path(metrics), "metrics", R.run_column)
    domains, names = R.columns, M.columns
    X, Y = R.values, join_runs(R, M).copy()  # (n, m) mixtures, (n, metrics)
    unknown = [c for c in higher_is_better if c not in names]
    if unknown:
        raise OpmixError(f"--higher-is-better names {unknown}, not columns of {M.path}", f"use its columns: {names}")
    flip = np.array([c in set(higher_is_better) for c in names])  # scores: the law fits 1 - score
    Y[:, flip] = 1.0 - Y[:, flip]
    for i, j in zip(*np.nonzero(Y <= 0)):
        raise OpmixError(f"{_where(M, M.runs.index(R.runs[i]), names[j])}: {'1 - score' if flip[j] else 'value'} "
                         f"{Y[i, j]:.6g} is not > 0, and the law exp(c) + exp(t . x) is positive",
                         "give losses (> 0), or name score columns (in [0, 1]) with --higher-is-better")
    n, m = X.shape
    fit_rows, held_rows = (np.arange(n), np.arange(0)) if holdout is None else holdout_split(n, holdout, seed, m + 2)
    if len(fit_rows) < m + 2:
        raise OpmixError(f"{len(fit_rows)} runs to fit laws of {m + 1} parameters ({m} domains + 1)",
                         f"give at least {m + 2} runs ({3 * (m + 1)} or more recommended, as Olmix does)")
    if budget is not None and tokens is None:
        raise OpmixError("--budget sets repetition caps, which need each domain's tokens", "give --tokens tokens.csv")
    N = None if tokens is None else _name_value_file(Path(tokens), domains, "tokens")
    caps = None if budget is None else repetition_caps(N, budget, repetition)  # k * N_d / R; refuses sum < 1
    prior_name, q = resolve_prior(prior, domains, N)
    P = None if predict is None else read_ratios(Path(predict), R.run_column, "mixtures")
    if P is not None and sorted(P.columns) != sorted(domains):
        raise OpmixError(f"{P.path}: domains {P.columns} differ from the ratios file's {domains}",
                         "give --predict the ratios file's domain columns (in any order)")
    P_X = None if P is None else P.values[:, [P.columns.index(d) for d in domains]]  # (rows, m) in ratios' order
    if kl_weight < 0:
        raise OpmixError(f"--kl-weight {kl_weight} is negative", "give a KL weight >= 0 (0.05 is the default)")

    own = match_domains(names, domains)
    workers = jobs if jobs is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    laws = fit_metric_laws(X[fit_rows], Y[fit_rows], own, seed=seed, jobs=workers)
    proposer = KLProposer(kl_weight=kl_weight, caps=caps).fit(np.stack([law.t_ for law in laws]), q)  # lambda
    kept = [float(w) if w >= ZERO_WEIGHT else 0.0 for w in proposer.x_ / proposer.x_.sum()]  # as `opmix export`
    weights = dict(zip(domains, _sum_to_one([w / math.fsum(kept) for w in kept])))  # writes: ~0 is 0, sum is 1.0
    rows, warnings = _law_rows(laws, names, [None if o is None else domains[o] for o in own], flip, domains,
                               (X[fit_rows], Y[fit_rows]), (X[held_rows], Y[held_rows]))

    def in_units(law: MixingLaw, j: int, at: np.ndarray) -> np.ndarray:  # a prediction in the metric's own units
        return 1.0 - law.predict(at) if flip[j] else law.predict(at)

    settings = {"ratios": str(ratios), "metrics": str(metrics), "prior": prior_name, "kl_weight": kl_weight,
                "tokens": tokens and str(tokens), "budget": budget, "repetition": budget and repetition,
                "higher_is_better": list(higher_is_better), "holdout": holdout, "seed": seed, "law": "loglinear",
                "runs": n, "fit_runs": len(fit_rows), "held_out_runs": [R.runs[i] for i in held_rows]}
    at_mixture = np.array([[weights[d] for d in domains]])
    mixture = {
        "domains": weights, "prior": dict(zip(domains, q.tolist())),
        "caps": None if caps is None else dict(zip(domains, caps.tolist())),
        "epochs": None if budget is None else {d: weights[d] * budget / N[i] if N[i] > 0 else None
                                               for i, d in enumerate(domains)},  # passes over each domain's tokens
        "predicted": {name: float(in_units(law, j, at_mixture)[0]) for j, (name, law) in enumerate(zip(names, laws))},
        "objective": float(proposer.objective_), "solver": proposer.solver_, "warnings": warnings,
        "settings": settings,
    }
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpmixError(f"cannot create the output folder {out} ({exc})", "give a writable --out folder") from exc
    files = [out / "mixture.json", out / "laws.json", out / "mixture.yaml"]
    write_json(files[0], mixture)
    write_json(files[1], {"law": "loglinear", "domains": domains, "laws": rows, "warnings": warnings,
                          "settings": settings})
    header = (f"# Olmix-style mixture proposed by `opmix fit` from {ratios} and {metrics}: {len(names)} laws on "
              f"{len(fit_rows)} runs, prior {prior_name}, kl_weight {kl_weight}. Weights sum to 1.\n")
    sources = [{"name": d, "weight": w} for d, w in weights.items()]
    write_text(files[2], header + yaml.safe_dump({"sources": sources}, sort_keys=False, allow_unicode=True))
    if P is not None:
        predicted = np.stack([in_units(law, j, P_X) for j, law in enumerate(laws)], axis=1)  # (rows, metrics)
        files.append(out / "predictions.csv")
        write_csv(files[3], [{P.run_column: r, **dict(zip(names, map(float, p)))} for r, p in zip(P.runs, predicted)],
                  [P.run_column, *names])
    return {"mixture": mixture, "laws": rows, "domains": domains, "files": [str(f) for f in files]}


def _law_rows(laws, names, own_domains, flip, domains, fitted, held) -> tuple[list[dict], list[str]]:
    """laws.json's row per law (parameters, fit error, diagnostics, warnings, held-out figures) and all warnings;
    ``fitted`` and ``held`` are (X, Y) of the runs the laws were fitted on and of the held-out runs."""
    (Xf, Yf), (Xh, Yh) = fitted, held
    m = len(domains)
    warnings = [f"only {len(Xf)} runs for laws of {m + 1} parameters (fewer than twice as many): the laws' fit "
                f"errors say little; {2 * (m + 1)} or more runs are better"] if len(Xf) < 2 * (m + 1) else []
    warnings += [f"domain {d!r} has weight 0 in every run: the laws know nothing about it"
                 for d, column in zip(domains, Xf.T) if not column.any()]
    rows = []
    for j, (name, law) in enumerate(zip(names, laws)):
        row = {"metric": name, "own_domain": own_domains[j], "higher_is_better": bool(flip[j]), **law.to_dict(),
               "diagnostics": law_measures(law, Xf, Yf[:, j]),
               "warnings": law_warnings([law], Xf, Yf[:, [j]], domains, [name])}
        if len(Xh):
            predicted, real = law.predict(Xh), Yh[:, j]
            rho = spearmanr(predicted, real).statistic if np.ptp(predicted) > 0 and np.ptp(real) > 0 else math.nan
            row["holdout"] = {"spearman": float(rho) if math.isfinite(rho) else None, "n": len(Xh),
                              "rmse": float(np.sqrt(np.mean((predicted - real) ** 2)))}
        warnings += row["warnings"]
        rows.append(row)
    for warning in warnings:
        log.debug("%s", warning)  # returned, written to laws.json and mixture.json, and printed by the CLI
    return rows, warnings


def format_fit(result: dict) -> str:
    """The printed summary: settings, the mixture against its prior (and caps), each law's fit and warnings."""
    mixture, s = result["mixture"], result["mixture"]["settings"]
    lines = [f"opmix fit: {s['runs']} runs ({s['fit_runs']} fitted, {len(s['held_out_runs'])} held out), "
             f"{len(result['domains'])} domains, {len(result['laws'])} metrics; prior {s['prior']}, kl_weight "
             f"{s['kl_weight']}"
             + (f", caps k={s['repetition']:g} R={s['budget']:g}" if s["budget"] is not None else ""), "mixture:"]
    width = max(len(d) for d in result["domains"])
    for d in result["domains"]:
        cap = f"  cap {mixture['caps'][d]:.4f}" if mixture["caps"] else ""
        lines.append(f"  {d:<{width}}  {mixture['domains'][d]:.4f}  (prior {mixture['prior'][d]:.4f}){cap}")
    lines.append("laws (fit on the fitted runs; held-out Spearman and RMSE with --holdout):")
    for row in result["laws"]:
        own = f" [own: {row['own_domain']}]" if row["own_domain"] else ""
        held, rho = row.get("holdout"), (row.get("holdout") or {}).get("spearman")
        extra = f", held-out Spearman {'n/a' if rho is None else f'{rho:+.3f}'} RMSE {held['rmse']:.4g}" if held else ""
        lines.append(f"  {row['metric']}{own}: RMSE {row['rmse']:.4g}, R^2 {row['r2']:.3f}{extra}")
        lines += [f"    warning: {w}" for w in row["warnings"]]
    lines += [f"warning: {w}" for w in mixture["warnings"] if not any(w in r["warnings"] for r in result["laws"])]
    lines.append("wrote " + ", ".join(result["files"]))
    return "\n".join(lines)
