"""Fit diagnostics (SPEC section 2 step 3): say, one human-readable line per problem, when a law or its data is off.

Checked for each fitted law (`law_warnings`):
- degenerate law: every exponent positive (more of any component raises the loss);
- own-component exponent above the mean of the others (moving weight to domain j's own data raises the loss on j;
  the comparison is relative because t + const gives the same law shape on the simplex);
- the constant exp(c) collapsed to ~0 (below ``1e-3 * min(y)``);
- poor fit: R^2 on the proxy points below ``r2_threshold`` (equivalently rmse > sqrt(1 - threshold) * std(y));
- Dirichlet proxies whose loss does not fall with the domain's own component (Spearman rank correlation >= 0).

For 1-D (continual) proxies on a segment (`segment_warnings`): the law is monotone in r, so a proxy curve whose
minimum is interior and that rises again toward both ends by more than the noise cannot be expressed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

_COLLAPSE_FRACTION = 1e-3  # exp(c) below this fraction of the smallest observed loss counts as collapsed
_NOISE_MULTIPLE = 3.0  # a turn-up must exceed this many noise standard deviations


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:+.3g}" for v in values) + "]"


def law_warnings(
    laws: Sequence,
    X: np.ndarray,
    Y: np.ndarray,
    component_names: Sequence[str],
    domain_names: Sequence[str],
    r2_threshold: float = 0.5,
) -> list[str]:
    """Warnings for fitted laws (one per column of ``Y``) on the proxy points ``X`` (P, k) they were fitted on."""
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if Y.shape != (X.shape[0], len(laws)) or len(domain_names) != len(laws) or len(component_names) != X.shape[1]:
        raise ValueError("laws, X, Y, component_names and domain_names disagree in shape")
    out: list[str] = []
    for j, (law, domain) in enumerate(zip(laws, domain_names)):
        y = Y[:, j]
        t = np.asarray(law.t_, dtype=float)
        own = law.own_component
        if np.all(t > 0):
            out.append(f"law for domain {domain!r} is degenerate: every exponent is positive (t = {_fmt(t)}), so "
                       "more of any component raises its loss")
        others = np.delete(t, own) if own is not None else t
        if own is not None and others.size and t[own] > others.mean():
            out.append(f"law for domain {domain!r}: the exponent of its own component {component_names[own]!r} is "
                       f"{t[own]:+.3g} > {others.mean():+.3g} (the others' mean), so more of its own data raises "
                       "its loss")
        constant = float(np.exp(law.c_))
        if constant < _COLLAPSE_FRACTION * float(np.min(y)):
            out.append(f"law for domain {domain!r}: the constant exp(c) = {constant:.3g} collapsed to ~0 "
                       f"(smallest observed loss {np.min(y):.4g})")
        residual = law.predict(X) - y
        rmse = float(np.sqrt(np.mean(residual**2)))
        spread = float(np.std(y))
        r2 = 1.0 - rmse**2 / spread**2 if spread > 0 else (1.0 if rmse == 0 else -np.inf)
        if r2 < r2_threshold:
            out.append(f"law for domain {domain!r} fits poorly: R^2 = {r2:.3f} < {r2_threshold} (rmse {rmse:.4g} "
                       f"against a loss spread (std) of {spread:.4g} over {len(y)} proxies)")
        if own is not None and np.ptp(X[:, own]) > 0 and np.ptp(y) > 0:
            rho = float(spearmanr(X[:, own], y).statistic)
            if rho >= 0:
                out.append(f"proxy losses on domain {domain!r} do not fall with its own component "
                           f"{component_names[own]!r}: Spearman rank correlation {rho:+.3f} >= 0")
    return out


def _noise_level(y: np.ndarray) -> float:
    """Noise standard deviation from the spread (MAD) of second differences around their median.

    Robust: a smooth trend gives near-constant second differences (removed by the median) and a sharp turn-up
    gives a few outliers (ignored by the MAD); iid noise of std s gives second differences of std sqrt(6) * s.
    """
    second = np.diff(y, 2)
    if len(second) < 3:
        return 0.0
    return float(1.4826 * np.median(np.abs(second - np.median(second))) / np.sqrt(6.0))


def segment_warnings(
    r: np.ndarray, Y: np.ndarray, domain_names: Sequence[str], noise: float | None = None
) -> list[str]:
    """Warnings for 1-D proxies at new-data fractions ``r`` (P,) with losses ``Y`` (P, n_domains).

    A curve is flagged when its minimum is interior and it rises from there toward both ends by more than
    3 noise standard deviations. ``noise`` is estimated per curve from its second differences unless given.
    Proxies along a segment are evaluated on one fixed eval set, so their curves are smooth and the estimate is
    tight; on pure white noise over 9 points the estimate is rough and about 8% of flat curves are flagged.
    """
    r = np.asarray(r, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[0] != r.shape[0] or Y.shape[1] != len(domain_names):
        raise ValueError(f"r is {r.shape}, Y is {Y.shape}, {len(domain_names)} domain names: shapes disagree")
    order = np.argsort(r, kind="stable")
    r = r[order]
    out: list[str] = []
    for j, domain in enumerate(domain_names):
        y = Y[order, j]
        lowest = int(np.argmin(y))
        if lowest in (0, len(y) - 1):
            continue  # monotone enough: the minimum is at an end, which the law can express
        rise_left, rise_right = y[0] - y[lowest], y[-1] - y[lowest]
        # The smaller rise is the turn-up (the larger one is the curve's ordinary trend).
        turn_up, end = (rise_left, r[0]) if rise_left < rise_right else (rise_right, r[-1])
        noise_level = _noise_level(y) if noise is None else float(noise)
        if turn_up > _NOISE_MULTIPLE * noise_level and turn_up > 1e-9 * max(abs(float(y[lowest])), 1.0):
            out.append(f"proxy losses on domain {domain!r} turn back up: minimum {y[lowest]:.4g} at r = "
                       f"{r[lowest]:.3g}, rising by {turn_up:.3g} toward r = {end:.3g} (noise ~{noise_level:.2g}); "
                       "the law is monotone in r and cannot express this")
    return out
