"""The run report's figures (``report_page.py``): plain data in, PNG bytes out.

Matplotlib's object API on the Agg canvas, never ``pyplot``: no global state, no display, nothing interactive.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

DPI = 96
WIDTH = 11.0  # inches: fills a 1100-pixel column at DPI
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd"]
GREY = "#9a9a9a"
WARN = "#c44e52"
MARK_STYLES = [(PALETTE[1], "--"), ("#555555", ":"), (PALETTE[3], "-."), (PALETTE[4], "--")]  # vertical markers


def _figure(height: float, width: float = WIDTH) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)  # fixed margins (_axes), not a layout engine: half the draws
    FigureCanvasAgg(fig)
    return fig


def _axes(fig: Figure, rows: int = 1, cols: int = 1, left: float = 0.8, right: float = 0.2, top: float = 0.4,
          bottom: float = 0.55, wgap: float = 0.8, hgap: float = 0.9, **kwargs) -> np.ndarray:
    """A (rows, cols) grid of axes with margins and gaps in inches (one fixed layout: fast and predictable)."""
    width, height = fig.get_size_inches()
    axes_w = (width - left - right - wgap * (cols - 1)) / cols
    axes_h = (height - top - bottom - hgap * (rows - 1)) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wgap / axes_w, hspace=hgap / axes_h)
    return fig.subplots(rows, cols, squeeze=False, **kwargs)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _plain_ticks(ax, axis: str = "y") -> None:
    """Losses that differ in the 4th decimal: show the values, not an offset ("+5.11") the reader must add."""
    formatter = ScalarFormatter(useOffset=False)
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(formatter)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return -(-n // cols), cols


def law_panels(panels: Sequence[Mapping]) -> bytes:
    """One panel per domain. ``segment`` panels (two components): the law along x_new in [0, 1] and the proxies;
    ``scatter`` panels (more components): the law's prediction against each proxy's observed loss.

    A panel: ``title``, ``note`` (fit error), ``warn`` (bool), and ``segment`` = {r, y, curve_r, curve_y, marks:
    {label: r}} or ``scatter`` = {predicted, observed, marks: {label: predicted loss}}."""
    rows, cols = _grid(len(panels))
    fig = _figure(2.9 * rows + 0.35)
    axes = _axes(fig, rows, cols, top=0.75, bottom=0.45, wgap=0.85, hgap=0.95).ravel()
    for ax, panel in zip(axes, panels):
        color = WARN if panel.get("warn") else "black"
        ax.set_title(f"{panel['title']}\n{panel['note']}", fontsize=9, color=color)
        if "segment" in panel:
            s = panel["segment"]
            ax.plot(s["curve_r"], s["curve_y"], color=PALETTE[0], lw=1.6, label="law", zorder=2)
            ax.scatter(s["r"], s["y"], s=18, color="black", label="proxies", zorder=3)
            for (label, r), (color, ls) in zip(s.get("marks", {}).items(), MARK_STYLES):
                ax.axvline(r, color=color, ls=ls, lw=1.3, label=f"{label} {r:.2f}")
            ax.set_xlabel(s.get("xlabel", "weight of the new component"), fontsize=8)
            ax.set_xlim(0, 1)
            lo, hi = min(np.min(s["y"]), np.min(s["curve_y"])), max(np.max(s["y"]), np.max(s["curve_y"]))
            pad = 0.08 * (hi - lo) or 1e-4
            ax.set_ylim(lo - pad, hi + pad)
        else:
            s = panel["scatter"]
            pred, obs = np.asarray(s["predicted"]), np.asarray(s["observed"])
            lo, hi = min(pred.min(), obs.min()), max(pred.max(), obs.max())
            pad = 0.08 * (hi - lo) or 1e-4
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color=GREY, lw=1, ls=":", label="y = x")
            ax.scatter(pred, obs, s=18, color="black", label="proxies", zorder=3)
            for (label, value), (color, ls) in zip(s.get("marks", {}).items(), MARK_STYLES):
                ax.axvline(value, color=color, ls=ls, lw=1.3, label=f"{label} (predicted)")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel("law's prediction", fontsize=8)
            _plain_ticks(ax, "x")
            ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_ylabel("eval loss (proxy)", fontsize=8)
        _plain_ticks(ax)
        ax.tick_params(labelsize=7)
    # one legend for all panels: they draw the same things (and the same marks: one proposal per figure)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="upper center", ncols=6, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _png(fig)


def grouped_bars(groups: Sequence[tuple[str, Sequence[str], Mapping[str, Sequence[float]]]],
                 ylabel: str = "weight", height: float = 3.2, hline: float | None = None) -> bytes:
    """Side-by-side panels of grouped bars: each group is (title, category names, {series: values})."""
    fig = _figure(height)
    axes = _axes(fig, 1, len(groups), top=0.3, bottom=0.75, left=0.6).ravel()
    for ax, (title, names, series) in zip(axes, groups):
        x = np.arange(len(names))
        width = 0.8 / max(len(series), 1)
        for i, (label, values) in enumerate(series.items()):
            offset = (i - (len(series) - 1) / 2) * width
            bars = ax.bar(x + offset, values, width, label=label, color=PALETTE[i % len(PALETTE)])
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
        if hline is not None:
            ax.axhline(hline, color=WARN, ls="--", lw=1, label=f"{hline:g}")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.15)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=len(series) + (hline is not None),
                  frameon=False)
    return _png(fig)


def loss_points(domains: Sequence[str], series: Mapping[str, Sequence[float]], ours: str = "OP-Mix") -> bytes:
    """Eval loss per domain (and average) for each model, as points side by side so small gaps stay visible; with
    baselines, a second panel of ``ours``' relative change against each (below 0: ours is better)."""
    others = [k for k in series if k != ours]
    fig = _figure(3.4)
    if others:
        ax, change = _axes(fig, 1, 2, left=0.7, top=0.3, bottom=0.4, width_ratios=[3, 2]).ravel()
    else:
        ax, change = _axes(fig, left=0.7, top=0.3, bottom=0.4)[0, 0], None
    x = np.arange(len(domains))
    step = 0.6 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * step
        ax.scatter(x + offset, values, s=44, color=PALETTE[i % len(PALETTE)], label=label, zorder=3)
    ax.set_xticks(x, domains, fontsize=8)
    ax.set_xlim(-0.6, len(domains) - 0.4)
    ax.set_ylabel("eval loss (nats/token)", fontsize=8)
    ax.set_title("eval loss of the final models", fontsize=10)
    ax.grid(axis="y", color="#e5e5e5")
    _plain_ticks(ax)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    if change is not None:
        width = 0.8 / len(others)
        for i, name in enumerate(others):
            rel = 100 * (np.asarray(series[ours]) / np.asarray(series[name]) - 1)
            bars = change.bar(x + (i - (len(others) - 1) / 2) * width, rel, width, label=f"vs {name}",
                              color=PALETTE[(list(series).index(name)) % len(PALETTE)])
            change.bar_label(bars, fmt="%+.2f%%", fontsize=7, padding=1)
        change.axhline(0, color="black", lw=0.8)
        change.set_xticks(x, domains, fontsize=8)
        change.set_ylabel(f"{ours} change (%)", fontsize=8)
        change.set_title(f"{ours} against each baseline (below 0: {ours} better)", fontsize=10)
        change.margins(y=0.2)
        change.tick_params(labelsize=8)
        change.legend(fontsize=8)
    return _png(fig)


def compute_bars(steps: Sequence[str], groups: Sequence[str], flops: Sequence[float],
                 seconds: Sequence[float]) -> bytes:
    """The ledger, one bar per step in the order the steps ran: FLOPs and seconds, coloured by stage group."""
    order = list(dict.fromkeys(groups))
    colors = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(order)}
    fig = _figure(1.0 + 0.2 * len(steps))
    label_in = 0.25 + 0.055 * max((len(s) for s in steps), default=4)  # room for the step names at 7 pt
    left, right = _axes(fig, 1, 2, left=label_in, top=0.4, bottom=0.5, wgap=0.3, sharey=True).ravel()
    y = np.arange(len(steps))
    bar_colors = [colors[g] for g in groups]
    left.barh(y, flops, color=bar_colors)
    right.barh(y, seconds, color=bar_colors)
    left.set_yticks(y, steps, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("FLOPs", fontsize=8)
    right.set_xlabel("seconds", fontsize=8)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", color="#e5e5e5")
    handles = [left.bar(0, 0, color=colors[g], label=g) for g in order]
    fig.legend(handles=handles, fontsize=8, loc="upper center", ncols=len(order), frameon=False)
    return _png(fig)


def check_scatter(predicted: Sequence[float], real: Sequence[float], labels: Sequence[str], title: str) -> bytes:
    """The fidelity check: each real run's mean eval loss against the laws' prediction for its mixture."""
    fig = _figure(3.4, width=6.0)
    ax = _axes(fig, left=0.8, top=0.35, bottom=0.5)[0, 0]
    ax.scatter(predicted, real, s=36, color=PALETTE[0], zorder=3)
    for x, y, label in zip(predicted, real, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("laws' predicted mean loss (proxy scale)", fontsize=8)
    ax.set_ylabel("real mean eval loss", fontsize=8)
    ax.set_title(title, fontsize=9)
    _plain_ticks(ax)
    _plain_ticks(ax, "x")
    ax.tick_params(labelsize=7)
    ax.margins(0.15)
    return _png(fig)


def stage_history(stages: Sequence[int], domains: Sequence[str], mixtures: Sequence[Mapping[str, float]],
                  r_series: Mapping[str, Sequence[float | None]]) -> bytes:
    """Continual runs: the trained mixture of each stage (stacked), and the new domain's weight r per stage."""
    fig = _figure(3.4)
    left, right = _axes(fig, 1, 2, left=0.6, top=0.35, bottom=0.4, wgap=2.0).ravel()
    x = np.arange(len(stages))
    bottom = np.zeros(len(stages))
    for i, d in enumerate(domains):
        values = np.array([m.get(d, 0.0) for m in mixtures])
        left.bar(x, values, 0.6, bottom=bottom, label=d, color=PALETTE[i % len(PALETTE)])
        for xi, b, v in zip(x, bottom, values):
            if v >= 0.06:
                left.text(xi, b + v / 2, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
        bottom += values
    left.set_xticks(x, [f"stage {s}" for s in stages], fontsize=8)
    left.set_ylabel("weight", fontsize=8)
    left.set_title("trained mixture per stage", fontsize=10)
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    markers = "os^Dv"
    for i, (label, values) in enumerate(r_series.items()):
        pts = [(s, v) for s, v in zip(stages, values) if v is not None]
        if pts:
            right.plot(*zip(*pts), marker=markers[i % len(markers)], ls="-" if i == 0 else "--",
                       color=PALETTE[i % len(PALETTE)], label=label)
    right.set_xticks(list(stages), [f"stage {s}" for s in stages], fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("r = weight of the stage's new domain", fontsize=8)
    right.set_title("new-domain weight r per stage", fontsize=10)
    right.grid(color="#e5e5e5")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
    return _png(fig)


def stage_losses(stages: Sequence[int], domains: Sequence[str], losses: Sequence[Mapping[str, float]],
                 means: Sequence[float], label: str = "eval loss (nats/token)") -> bytes:
    """Continual runs: each domain's eval loss (or ``label``: an instruction task's accuracy, error rate...) at the
    end of every stage, from the stage that introduced it."""
    fig = _figure(3.4)
    ax = _axes(fig, left=0.7, right=2.2, top=0.2, bottom=0.4)[0, 0]
    for i, d in enumerate(domains):
        pts = [(s, loss[d]) for s, loss in zip(stages, losses) if d in loss]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=PALETTE[i % len(PALETTE)], label=d)
    ax.plot(stages, means, marker="s", color="black", ls="--", label="mean over seen domains")
    ax.set_xticks(list(stages), [f"stage {s}" for s in stages], fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(color="#e5e5e5")
    _plain_ticks(ax)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)
