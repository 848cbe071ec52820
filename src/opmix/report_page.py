"""The run report: ``<run_dir>/report/index.html`` and its PNG figures, for a pretraining or continual run.

Reads only the run directory (summary.json, propose/laws.json + proposal.json, proxies.csv, ledger.json, check.json,
step markers), so it works on a finished run and on one stopped anywhere: a section whose files are not there yet
says so. The page is one self-contained file (figures as base64 data URIs, inline CSS, no scripts, no network);
the same figures are written next to it as PNG files.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from opmix import report_figures as figs
from opmix.domains import OLD, expand, uniform
from opmix.law import laws_from_rows
from opmix.run.atomic import write_bytes, write_text

log = logging.getLogger(__name__)

# step name (the continual "s<k>_" prefix removed) -> group, first match wins
_GROUPS = (("prefix", "prefix"), ("start", "prefix"), ("probe_", "probes"), ("proxies", "proxy_eval"),
           ("propose", "fit_propose"),
           ("guard_", "guard"), ("final", "final"), ("train", "train"), ("retrain", "train"), ("lora", "lora"),
           ("grid_", "grid"), ("check_", "check"), ("erm", "baseline"), ("natural", "baseline"),
           ("swarm_", "swarm"), ("mergemix", "mergemix"))
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1120px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #4c72b0;padding-bottom:3px;margin-top:32px}
h3{margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f0f3f8}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block}figure{margin:10px 0}
.absent{color:#666;font-style:italic}.warn{color:#b02a2a}.ok{color:#2a7a2a}
ul.warnings li{margin-bottom:4px}.small{font-size:.85em;color:#555}
"""


def write_report(run_dir: Path) -> Path:
    """Write ``<run_dir>/report/index.html`` and ``<run_dir>/report/*.png``; return the page's path."""
    page = _Page(Path(run_dir))
    body = page.build()
    out = page.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        if stale.name not in page.figures:
            stale.unlink()
    for name, png in page.figures.items():
        write_bytes(out / name, png)
    title = f"opmix report: {page.root.name}"
    document = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
    write_text(out / "index.html", document)
    return out / "index.html"


def _e(value) -> str:
    return html.escape(str(value))


def _f(value, fmt: str = ".4f") -> str:
    """A number for a table; "-" where it is missing or undefined (NaN)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, fmt)


_NUMBER = re.compile(r"^([+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?%?|-)$")  # "-": a number that is not there


def _cell(value) -> str:
    text = str(value)
    return f"<td class=\"n\">{_e(text)}</td>" if _NUMBER.match(text) else f"<td>{_e(text)}</td>"


def _table(header: Sequence[str] | None, rows: Sequence[Sequence]) -> str:
    """Rows of cells (numbers right-aligned); ``header`` None: a key-value table (first column as headers)."""
    if header is None:
        body = "".join(f"<tr><th>{_e(k)}</th>" + "".join(f"<td>{_e(c)}</td>" for c in rest) + "</tr>"
                       for k, *rest in rows)
        return f"<table>{body}</table>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _absent(text: str) -> str:
    return f"<p class=\"absent\">Absent: {_e(text)}</p>"


def _warnings(items: Sequence[str]) -> str:
    return "<ul class=\"warnings\">" + "".join(f"<li class=\"warn\">{_e(w)}</li>" for w in items) + "</ul>"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_proxies(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(P, k) component weights (the ``w_*`` columns, in order) and each domain's losses (``loss_<d>``)."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    if not rows:
        return None
    w_cols = [c for c in rows[0] if c.startswith("w_")]
    X = np.array([[float(r[c]) for c in w_cols] for r in rows])
    return X, {c[len("loss_"):]: np.array([float(r[c]) for r in rows]) for c in rows[0] if c.startswith("loss_")}


def _group(step: str) -> str:
    name = re.sub(r"^s\d+_", "", step)
    return next((g for prefix, g in _GROUPS if name.startswith(prefix)), "other")


def _about(warning: str, domain: str) -> bool:
    return f"'{domain}'" in warning


class _Page:
    def __init__(self, root: Path):
        self.root = root
        self.figures: dict[str, bytes] = {}
        self.summary = _read_json(root / "summary.json") or {}
        self.config = self._config()
        self.ledger = (_read_json(root / "ledger.json") or {}).get("stages", [])
        self.markers = self._markers()
        continual = "stages" in self.summary or "run" in self.config or any(re.match(r"s\d+_", s) for s in self.markers)
        self.recipe = "continual" if continual else "pretrain"
        self.instruct = "tasks" in self.config  # continual instruction tuning: tasks, accuracy, a learner
        self.domains = list(self.summary.get("domains")
                            or [d["name"] for d in self.config.get("domains", self.config.get("tasks", []))]
                            or self.summary.get("eval_loss", {}))

    def _config(self) -> dict:
        try:
            return yaml.safe_load((self.root / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def _markers(self) -> dict[str, dict]:
        paths = sorted((self.root / "steps").glob("*.json"))
        found = [(m.get("finished_at", ""), p.stem, m.get("info", {}))
                 for p in paths if (m := _read_json(p)) is not None]
        return {step: info for _, step, info in sorted(found)}

    # ------------------------------------------------------------------ figures and sections
    def figure(self, name: str, build, alt: str) -> str:
        png = build()
        self.figures[name] = png
        return (f"<figure><img src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\" "
                f"alt=\"{_e(alt)}\"></figure>")

    def build(self) -> str:
        results = "Task accuracy and the fitted metric" if self.instruct else "Eval loss"
        sections = [("Run", self.header), ("Decision and warnings", self.decision), ("Mixing laws", self.laws),
                    ("Mixture weights and repetition", self.weights), (results, self.losses),
                    ("Compute", self.compute), ("Fidelity check", self.check)]
        parts = [f"<h1>opmix report: {_e(self.root.name)}</h1>", f"<p class=\"small\">{_e(self.root.resolve())}</p>"]
        for title, section in sections:
            try:
                content = section()
            except Exception as exc:  # a malformed file spoils its section, not the report
                log.warning("report section %r failed: %s", title, exc, exc_info=True)
                content = f"<p class=\"warn\">This section could not be built: {_e(type(exc).__name__)}: {_e(exc)}</p>"
            parts.append(f"<section><h2>{_e(title)}</h2>\n{content}</section>")
        return "\n".join(parts)

    def header(self) -> str:
        cfg, s = self.config, self.summary
        model = cfg.get("model", {})
        model_text = model.get("path") or (f"builtin:{model['builtin']}" if model.get("builtin") else "?")
        train = cfg.get("train", {})
        steps = train.get("steps")
        if self.instruct:
            method = s.get("method") or f"{cfg.get('run', 'opmix')} ({cfg.get('learner', 'sft')})"
            epochs = cfg.get("method", {}).get("epochs_per_stage", 1)
            steps_text = f"{epochs:g} epoch(s) of each new task per stage x {len(self.domains)} stages"
        elif self.recipe == "continual":
            method = s.get("method") or cfg.get("run", "opmix")
            steps_text = f"{steps} per stage x {len(self.domains)} stages" if steps else "?"
        else:
            method = "OP-Mix; baselines: " + (", ".join(s.get("baselines", {})) or str(cfg.get("baseline", "none")))
            prefix = cfg.get("method", {}).get("prefix_fraction")
            steps_text = f"{steps} (prefix {prefix:.0%})" if steps and prefix is not None else str(steps or "?")
        if s:
            status = f"finished in {s['elapsed_s']:.1f} s" if "elapsed_s" in s else "finished"
        else:
            last = list(self.markers)[-1] if self.markers else "none"
            status = f"partial: {len(self.markers)} step(s) done, the last one '{last}' (no summary.json yet)"
        rows = [("recipe", f"{'instruct' if self.instruct else self.recipe} ({method})"), ("model", model_text),
                ("tokenizer", cfg.get("tokenizer", "?")),
                ("tasks" if self.instruct else "domains", ", ".join(self.domains) or "?"),
                ("train steps", steps_text),
                ("batch", f"{train.get('batch_size', '?')} x {cfg.get('data', {}).get('seq_len', '?')} tokens"),
                ("seed", cfg.get("seed", "?")), ("status", status)]
        if s.get("model"):
            rows.append(("final model", str(self.root / s["model"])))
        return _table(None, rows)

    def decision(self) -> str:
        s = self.summary
        parts = []
        if self.recipe == "continual":
            stages = [st for st in self._stages() if st.get("guard")]
            if stages:
                parts.append(_table(["stage", "checked", "fired", "chosen", "distance", "reason"],
                                    [(st["stage"], g.get("checked"), g.get("fired"), g.get("chosen"),
                                      _f(g.get("distance"), ".3f"), g.get("reason", ""))
                                     for st in stages for g in [st["guard"]]]))
            else:
                parts.append(_absent("no stage recorded a guard decision (stage 1 never has one; no summary yet, or "
                                     "the method has no guard)"))
        elif s.get("guard"):
            g = s["guard"]
            cls = "warn" if g.get("fired") else "ok"
            parts.append(f"<p class=\"{cls}\"><b>Guard: {_e(g.get('chosen', '?'))} mixture trained.</b> "
                         f"{_e(g.get('reason', ''))}</p>")
            rows = [("checked", g.get("checked")), ("fired", g.get("fired")),
                    ("distance (total variation)", _f(g.get("distance"), ".4f"))]
            for key, label in (("predicted", "laws' predicted mean loss"), ("real", "real mean loss (check runs)")):
                if g.get(key):
                    rows.append((label, ", ".join(f"{k} {v:.4f}" for k, v in g[key].items())))
            parts.append(_table(None, rows))
        else:
            parts.append(_absent("no guard decision yet (summary.json is written at the end of the run)"))
        warnings = s.get("warnings") if s else self._proposal_warnings()
        parts.append(f"<h3>Warnings ({len(warnings or [])})</h3>" if s else
                     f"<h3>Warnings so far ({len(warnings)}, from the proposals; the run's full list is written to "
                     "summary.json at its end)</h3>")
        parts.append(_warnings(warnings) if warnings else "<p class=\"ok\">No warnings.</p>")
        return "\n".join(parts)

    def _proposed_r(self, k: int) -> float | None:
        """The laws' choice of the new domain's weight at continual stage ``k`` (before the guard)."""
        if k < 2 or k > len(self.domains):
            return None
        proposal = _read_json(self.root / f"s{k}_propose" / "proposal.json") or {}
        return proposal.get("components", {}).get(self.domains[k - 1])

    def _proposal_warnings(self) -> list[str]:
        """A run without summary.json yet: the warnings its proposals raised so far."""
        out = list((_read_json(self.root / "propose" / "proposal.json") or {}).get("warnings", []))
        for k in range(2, len(self.domains) + 1) if self.recipe == "continual" else ():
            found = (_read_json(self.root / f"s{k}_propose" / "proposal.json") or {}).get("warnings", [])
            out += [f"stage {k}: {w}" for w in found]
        return out

    # ------------------------------------------------------------------ laws
    def _law_panels(self, folder: str, proxies: Path, r_marks=None) -> tuple[list[dict], list[tuple]] | None:
        saved = _read_json(self.root / folder / "laws.json")
        data = _read_proxies(proxies)
        if not saved or data is None:
            return None
        X, losses = data
        components = saved["components"]
        proposal = _read_json(self.root / folder / "proposal.json") or {}
        warnings = proposal.get("warnings", [])  # the fit's, and the run's own notes (e.g. a one-document eval split)
        notes = self.summary.get("warnings", [])
        warnings += [w for w in notes if w not in warnings and not re.match(r"stage \d+:", w)]
        x_prop = [proposal.get("components", {}).get(c) for c in components]
        panels, rows = [], []
        for row, law in zip(saved["laws"], laws_from_rows(saved["laws"])):
            d = row["domain"]
            mine = [w for w in warnings if _about(w, d)]
            note = f"rmse {row.get('rmse', float('nan')):.2e}, r2 {row.get('r2', float('nan')):.3f}"
            panel = {"title": d + (" (warning)" if mine else ""), "note": note, "warn": bool(mine)}
            if d in losses and X.shape[1] == len(components):
                if len(components) == 2:
                    grid = np.linspace(0, 1, 101)
                    marks = {k: v for k, v in (r_marks or {}).items() if v is not None}
                    panel["segment"] = {"r": X[:, 1], "y": losses[d], "curve_r": grid,
                                        "curve_y": law.predict(np.column_stack([1 - grid, grid])), "marks": marks,
                                        "xlabel": f"weight of '{components[1]}' (the rest: '{components[0]}')"}
                else:
                    marks = {"proposal": float(law.predict(np.array([x_prop]))[0])} if None not in x_prop else {}
                    panel["scatter"] = {"predicted": law.predict(X), "observed": losses[d], "marks": marks}
                panels.append(panel)
            rows.append((d, _f(row.get("rmse"), ".3e"), _f(row.get("r2"), ".3f"), len(X),
                         " / ".join(mine) or "none"))
        return panels, rows

    def _laws_block(self, name: str, folder: str, proxies: Path, r_marks=None) -> str:
        built = self._law_panels(folder, proxies, r_marks)
        if built is None:
            return _absent(f"no fitted laws yet ({folder}/laws.json or {proxies.relative_to(self.root)} is missing: "
                           "the run stopped before its proposal)")
        panels, rows = built
        out = self.figure(name, lambda: figs.law_panels(panels), "fitted laws against the proxies") if panels else ""
        return out + _table(["domain", "rmse", "r2", "proxies", "warnings"], rows)

    def laws(self) -> str:
        intro = ("<p class=\"small\">Each domain's law exp(c) + exp(t.x) against the proxies' eval losses. With two "
                 "components: the law along the segment and the proxy points; with more: the law's prediction "
                 "against each proxy's observed loss (on y = x for a perfect fit).</p>")
        if self.recipe == "pretrain":
            return intro + self._laws_block("laws.png", "propose", self.root / "proxies.csv")
        parts = [intro]
        stages = {st["stage"]: st for st in self._stages()}
        prior_r = self.config.get("method", {}).get("prior_new_weight", 0.5)
        ks = sorted(int(m.group(1)) for p in self.root.glob("s*_propose")
                    if (m := re.match(r"s(\d+)_propose$", p.name)))
        for k in ks:
            new = self.domains[k - 1] if k <= len(self.domains) else None
            trained = stages.get(k, {}).get("mixture", {}).get(new)  # x_new: the new domain's weight
            marks = {"proposed": self._proposed_r(k), "prior": prior_r, "trained": trained}
            if marks["trained"] is not None and marks["proposed"] is not None \
                    and abs(marks["trained"] - marks["proposed"]) < 1e-9:
                marks.pop("trained")
            parts.append(f"<h3>Stage {k} (new domain: {_e(new)})</h3>")
            proxies = self.root / f"s{k}_proxies" / "proxies.csv"
            parts.append(self._laws_block(f"laws_s{k}.png", f"s{k}_propose", proxies, marks))
        if not ks:
            parts.append(_absent("no stage has fitted laws yet (stage 1 trains on its one domain; laws start at "
                                 "stage 2)"))
        return "\n".join(parts)

    # ------------------------------------------------------------------ weights
    def weights(self) -> str:
        return self._continual_weights() if self.recipe == "continual" else self._pretrain_weights()

    def _pretrain_weights(self) -> str:
        s, parts = self.summary, []
        proposal = _read_json(self.root / "propose" / "proposal.json")
        components = (_read_json(self.root / "propose" / "laws.json") or {}).get("components") or [OLD, *self.domains]
        if proposal:
            prior = dict(zip(components, proposal.get("prior", [])))
            proposed = proposal["components"]
            p = self.config.get("method", {}).get("initial_mixture") or uniform(self.domains)
            prior_domains = (s.get("guard") or {}).get("safe") or (expand(prior, self.domains, p) if len(prior) ==
                                                                   len(components) else {})
            proposed_domains = proposal.get("domains") or expand(proposed, self.domains, p)  # older runs: derived
            dom_series = {"prior": [prior_domains.get(d, 0.0) for d in self.domains],
                          "proposed": [proposed_domains.get(d, 0.0) for d in self.domains]}
            if s.get("mixture"):
                dom_series["trained (after the guard)"] = [s["mixture"].get(d, 0.0) for d in self.domains]
            groups = [("component weights x", components, {"prior": [prior.get(c, 0.0) for c in components],
                                                            "proposed": [proposed.get(c, 0.0) for c in components]}),
                      ("domain weights w", self.domains, dom_series)]
            parts.append(self.figure("weights.png", lambda: figs.grouped_bars(groups), "proposed weights vs prior"))
        else:
            parts.append(_absent("no proposal yet (propose/proposal.json): the run stopped before it"))
        epochs, tokens = s.get("epochs"), s.get("tokens_consumed")
        if not epochs and "final" in self.markers:
            epochs, tokens = self.markers["final"].get("epochs"), self.markers["final"].get("tokens_consumed")
        parts.append("<h3>Repetition</h3>")
        if epochs:
            groups = [("epochs of each domain's training data consumed", self.domains,
                       {"final model": [epochs.get(d, 0.0) for d in self.domains]})]
            hline = 1.0 if max(epochs.values()) > 0.5 else None
            parts.append(self.figure("epochs.png", lambda: figs.grouped_bars(groups, "epochs", 2.8, hline),
                                     "epochs per domain"))
            parts.append(_table(["domain", "tokens consumed", "epochs"],
                                [(d, (tokens or {}).get(d, "-"), _f(epochs.get(d), ".3f")) for d in self.domains]))
        else:
            parts.append(_absent("no final training yet: repetition is known once it ran"))
        return "\n".join(parts)

    def _stages(self) -> list[dict]:
        """The continual run's stage records: summary.json's, or (a run not finished) rebuilt from step markers."""
        if self.summary.get("stages"):
            return self.summary["stages"]
        stages = []
        for step, info in self.markers.items():
            m = re.match(r"s(\d+)_(train|retrain|lora)$", step)
            if m and "eval_loss" in info:
                k = int(m.group(1))
                seen = self.domains[:k]
                losses = {d: info["eval_loss"][d] for d in seen if d in info["eval_loss"]}
                stages.append({"stage": k, "mixture": info.get("mixture", {}), "eval_loss": losses,
                               "mean_eval_loss": float(np.mean(list(losses.values()))) if losses else None,
                               "data": {d: {"epochs": info.get("epochs", {}).get(d, 0.0)} for d in seen}})
        return sorted(stages, key=lambda st: st["stage"])

    def _continual_weights(self) -> str:
        stages = self._stages()
        if not stages:
            return _absent("no stage has finished its training yet")
        ks = [st["stage"] for st in stages]
        prior_r = self.config.get("method", {}).get("prior_new_weight", 0.5)
        new = {st["stage"]: self.domains[st["stage"] - 1] for st in stages}
        r_series = {"trained": [st["mixture"].get(new[st["stage"]]) if st["stage"] > 1 else None for st in stages],
                    "proposed (laws)": [self._proposed_r(st["stage"]) for st in stages],
                    "prior": [prior_r if st["stage"] > 1 else None for st in stages]}
        if any(st.get("grid") for st in stages):
            r_series["grid best"] = [(st.get("grid") or {}).get("best_r") for st in stages]
        parts = [self.figure("weights.png", lambda: figs.stage_history(ks, self.domains, [st["mixture"] for st in
                                                                                       stages], r_series),
                             "weight history across stages")]
        parts.append("<h3>Repetition</h3>")
        groups = [("epochs of each domain's data consumed so far, per stage", self.domains,
                   {f"stage {st['stage']}": [(st.get("data") or {}).get(d, {}).get("epochs", 0.0)
                                             for d in self.domains] for st in stages})]
        top = max((v for series in groups[0][2].values() for v in series), default=0.0)
        parts.append(self.figure("epochs.png", lambda: figs.grouped_bars(groups, "epochs", 2.8,
                                                                         1.0 if top > 0.5 else None),
                                 "epochs per domain and stage"))
        rows = [(st["stage"], *(_f(st["mixture"].get(d), ".3f") if d in st["mixture"] else "-" for d in self.domains),
                 _f(r_series["trained"][i], ".3f"), _f(r_series["proposed (laws)"][i], ".3f"))
                for i, st in enumerate(stages)]
        parts.append(_table(["stage", *(f"w {d}" for d in self.domains), "r trained", "r proposed"], rows))
        return "\n".join(parts)

    # ------------------------------------------------------------------ losses
    def losses(self) -> str:
        return self._continual_losses() if self.recipe == "continual" else self._pretrain_losses()

    def _pretrain_losses(self) -> str:
        s = self.summary
        ours = s.get("eval_loss") or self.markers.get("final", {}).get("eval_loss")
        if not ours:
            return _absent("no final model yet: the final training has not finished")
        baselines = s.get("baselines") or {}
        series = {"OP-Mix": [ours[d] for d in self.domains]}
        for name, b in baselines.items():
            series[name] = [b["eval_loss"][d] for d in self.domains]
        names = [*self.domains, "average"]
        series = {k: [*v, float(np.mean(v))] for k, v in series.items()}
        parts = [self.figure("eval_loss.png", lambda: figs.loss_points(names, series), "eval loss vs baselines")]
        header = ["domain", "OP-Mix", *(h for n in baselines for h in (n, f"change vs {n}"))]
        ours_ = series["OP-Mix"]
        rows = [(d, _f(ours_[i]), *(x for n in baselines
                                    for x in (_f(series[n][i]), f"{100 * (ours_[i] / series[n][i] - 1):+.2f}%")))
                for i, d in enumerate(names)]
        parts.append(_table(header, rows))
        for name, b in baselines.items():
            if s.get("model") and b.get("model") == s.get("model"):
                parts.append(f"<p class=\"small\">{_e(name)} is the same training run as OP-Mix's final model (the "
                             "guard kept the safe mixture, which is this baseline's): equal losses by construction."
                             "</p>")
        if not baselines:
            parts.append(_absent("no baseline was run (give --baseline erm, natural, swarm or mergemix)"
                                 if s else "baselines are reported in summary.json, not written yet"))
        return "\n".join(parts)

    def _continual_losses(self) -> str:
        stages = self._stages()
        if not stages:
            return _absent("no stage has finished its training yet")
        ks = [st["stage"] for st in stages]
        parts, label = self._task_accuracy(stages, ks) if self.instruct else [], "eval loss (nats/token)"
        if self.instruct:
            label = self.summary.get("metric") or self.config.get("method", {}).get("metric", "error_rate")
            parts.append(f"<h3>The fitted metric: {_e(label)} (lower is better)</h3>")
        parts += [self.figure("stage_losses.png", lambda: figs.stage_losses(ks, self.domains,
                                                                           [st["eval_loss"] for st in stages],
                                                                           [st["mean_eval_loss"] for st in stages],
                                                                           label=label),
                              "eval loss per stage")]
        rows = [(st["stage"], *(_f(st["eval_loss"].get(d)) for d in self.domains), _f(st["mean_eval_loss"]))
                for st in stages]
        parts.append(_table(["stage", *self.domains, "mean (seen)"], rows))
        grid = [(st["stage"], g["best_r"], _f(g["best_loss"]), _f(g.get("chosen_r"), ".3f"), _f(g.get("chosen_loss")),
                 f"{100 * g['regret']:+.2f}%", _f(g.get("fidelity_spearman"), "+.2f"))
                for st in stages if (g := st.get("grid"))]
        if grid:
            parts.append("<h3>Grid oracle (mean eval loss over the seen domains)</h3>")
            parts.append(_table(["stage", "best r", "best loss", "chosen r", "chosen loss", "regret",
                                 "proxy/grid Spearman"], grid))
        else:
            parts.append(_absent("no baseline in this run: continual baselines are separate runs (--method "
                                 "sequential|replay|fifty|retrain|lora-merge), and the grid oracle runs with --method "
                                 "grid"))
        return "\n".join(parts)

    def _task_accuracy(self, stages: list[dict], ks: list[int]) -> list[str]:
        """Instruction tuning: each task's accuracy after every stage, and the forgetting of each."""
        if not all("accuracy" in st for st in stages):
            return [_absent("accuracy per task is in summary.json, written at the end of the run")]
        accuracy = [st["accuracy"] for st in stages]
        means = [float(np.mean(list(a.values()))) for a in accuracy]
        parts = ["<h3>Accuracy of each task after every stage</h3>",
                 self.figure("stage_accuracy.png", lambda: figs.stage_losses(ks, self.domains, accuracy, means,
                                                                             label="accuracy"), "accuracy per stage")]
        rows = [(k, *(_f(a.get(d), ".3f") for d in self.domains), _f(m, ".3f")) for k, a, m in zip(ks, accuracy, means)]
        parts.append(_table(["stage", *self.domains, "mean (seen)"], rows))
        forgetting = self.summary.get("forgetting") or {}
        if forgetting:
            parts.append(_table(["task", "forgetting (accuracy when learned minus at the end)"],
                                [(t, f"{v:+.3f}") for t, v in forgetting.items()]))
        return parts

    # ------------------------------------------------------------------ compute and check
    def compute(self) -> str:
        if not self.ledger:
            return _absent("no ledger.json yet: no step has finished")
        steps = [e["stage"] for e in self.ledger]
        flops = [e.get("flops", 0.0) for e in self.ledger]
        secs = [e.get("seconds", 0.0) for e in self.ledger]
        groups = [_group(s) for s in steps]
        parts = [self.figure("compute.png", lambda: figs.compute_bars(steps, groups, flops, secs),
                             "compute by step")]
        by_group: dict[str, list[float]] = {}
        for g, f, sec in zip(groups, flops, secs):
            acc = by_group.setdefault(g, [0.0, 0.0])
            acc[0] += f
            acc[1] += sec
        rows = [(g, f"{f:.3e}", f"{sec:.2f}") for g, (f, sec) in by_group.items()]
        rows.append(("all steps", f"{sum(flops):.3e}", f"{sum(secs):.2f}"))
        parts.append(_table(["group (ledger)", "FLOPs", "seconds"], rows))
        steps_table = _table(["step", "group", "FLOPs", "seconds", "tokens"],
                             [(e["stage"], g, f"{f:.3e}", f"{sec:.2f}", e.get("tokens", "-"))
                              for e, g, f, sec in zip(self.ledger, groups, flops, secs)])
        parts.append(f"<details><summary>every step ({len(steps)})</summary>{steps_table}</details>")
        if self.summary.get("flops"):
            parts.append("<p class=\"small\">The method's own compute by group (summary.json); its total leaves out "
                         "`opmix check` runs, the baselines' own steps and the grid oracle:</p>")
            flops_ = self.summary["flops"]
            rows = [(g, f"{v:.3e}") for g, v in flops_.items() if v and g != "total"]
            rows.append(("total", f"{flops_.get('total', sum(v for g, v in flops_.items() if g != 'total')):.3e}"))
            rows += [(f"{n} total", f"{b['flops']['total']:.3e}") for n, b in self.summary.get("baselines", {}).items()]
            parts.append(_table(["group", "FLOPs"], rows))
        return "\n".join(parts)

    def check(self) -> str:
        if self.recipe == "continual":
            return _absent("`opmix check` is for pretraining runs; a continual run's fidelity is the grid oracle's "
                           "Spearman (Eval loss, with --method grid)")
        c = _read_json(self.root / "check.json")
        if not c:
            return _absent("no check.json: run `opmix check RUN_DIR` to compare real runs with the laws' predictions")
        runs = c.get("runs", [])
        proposed = (_read_json(self.root / "propose" / "proposal.json") or {}).get("components")
        labels = ["proposal" if proposed and r.get("components") == proposed else r.get("step", str(i))
                  for i, r in enumerate(runs)]
        title = (f"Spearman {_f(c.get('spearman'), '+.2f')}, Pearson {_f(c.get('pearson'), '+.2f')}, "
                 f"bias {_f(c.get('bias'), '+.3f')} ({c.get('steps', '?')} steps per run)")
        parts = [self.figure("check.png", lambda: figs.check_scatter([r["predicted"] for r in runs],
                                                                     [r["real"] for r in runs], labels, title),
                             "fidelity check")]
        if c.get("warning"):
            parts.append(_warnings([c["warning"]]))
        parts.append(_table(["run", "mixture", "predicted", "real"],
                            [(label, ", ".join(f"{d} {w:.2f}" for d, w in r.get("mixture", {}).items()),
                              _f(r["predicted"]), _f(r["real"])) for label, r in zip(labels, runs)]))
        return "\n".join(parts)
