"""Fit diagnostics (SPEC section 2 step 3): say, one human-readable line per problem, when a law or its data is off.

Invariance. On the simplex (sum x = 1) the law ``exp(c) + exp(t . x)`` is ``exp(c) + exp(mean t) * exp(u . x)``
with ``u = t - mean(t)``, the centred exponents. Adding a constant a to every exponent multiplies the variable
term by e^a and leaves its *shape* unchanged: which mixtures are better, the argmin, the proposer's term up to a
scale. (It is the same law in other units only with c shifted too: ``(c + a, t + a)`` fits the losses ``e^a y``.)
So no verdict here looks at the sign of an exponent: the shape checks (flat, own exponent) depend on ``u`` alone
(differences of exponents), the collapse check compares the constant with the law's own predicted loss, and every
check is unchanged when the losses are rescaled (``(c + a, t + a, e^a y)``).

Checked for each fitted law (`law_warnings`; the figures behind them are `law_measures`):
- **degenerate (flat)**: ``spread = max(t) - min(t)`` (a function of ``u`` alone) below 1e-3. The variable term is
  extreme at the vertices, so across the whole simplex it changes by less than a factor e^spread; it is positive
  and below the predicted loss, so no mixture moves the predicted loss by more than ~0.1% of itself: the law gives
  the proposal no direction.
- **own exponent** above the mean of the others' (``t_own - mean(t_others) = u_own - mean(u_others) > 0``): moving
  weight to domain j's own data raises the predicted loss on j. Not reported for a flat law (the sign is noise).
- **collapsed constant**: ``exp(c)`` below 1e-3 of the smallest loss the law predicts on the proxies
  (``constant_share = exp(c) / min_p L(x_p) < 1e-3``): the fit put the whole loss floor into the variable term,
  so the law claims mixing alone could remove all of the loss and extrapolates toward zero loss away from the
  proxies. (On nearly linear proxy data the split between exp(c) and the variable term is poorly determined and
  the fit often slides to this end; c alone says nothing, as a better-fitting c moves with the level of t.) Both
  terms are in loss units, so the verdict does not depend on the units of the loss. Whether the constant is
  negligible *beside* the variable term is exactly what adding a to t at fixed c changes, so this check (unlike
  the two above) can change its verdict under that shift, once e^a is large enough to swamp exp(c).
- **poor fit**: R^2 on the proxy points below ``r2_threshold`` (equivalently rmse > sqrt(1 - threshold) * std(y)).
  It only means something when there are more proxies than the law's parameters (`proxy_count_warnings`).
- Dirichlet proxies whose loss does not fall with the domain's own component (Spearman rank correlation >= 0).

For 1-D (continual) proxies on a segment (`segment_warnings`): the law is monotone in r, so a proxy curve whose
minimum is interior and that rises again toward both ends by more than the noise cannot be expressed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

FLAT_SPREAD = 1e-3  # max(t) - min(t) below this: the law is flat on the simplex
COLLAPSE_SHARE = 1e-3  # exp(c) below this share of the smallest predicted loss on the proxies counts as collapsed
_NOISE_MULTIPLE = 3.0  # a turn-up must exceed this many noise standard deviations


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:+.3g}" for v in values) + "]"


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def proxy_count_warnings(n_proxies: int, n_coordinates: int) -> list[str]:
    """Warn when ``n_proxies`` points barely (or do not) overdetermine a law over ``n_coordinates`` components.

    Such a law has ``n_coordinates + 1`` parameters (c and one exponent per coordinate): with that many points or
    fewer the fit is exact or underdetermined and its R^2 is 1 whatever the data; under twice that many, the fit
    error says little about how well the law describes the proxies.
    """
    params = n_coordinates + 1
    if n_proxies <= params:
        return [f"only {n_proxies} proxies for laws of {params} parameters: every law fits them exactly (or is "
                f"underdetermined), so its fit error and the 'fits poorly' check mean nothing; use {2 * params} or "
                "more proxies (method.n_proxies)"]
    if n_proxies < 2 * params:
        return [f"only {n_proxies} proxies for laws of {params} parameters (fewer than twice as many): the laws' fit "
                f"error says little; use {2 * params} or more proxies (method.n_proxies)"]
    return []


def law_measures(law, X: np.ndarray, y: np.ndarray) -> dict:
    """The figures behind `law_warnings` for one fitted law on its proxy points ``X`` (P, k) and losses ``y`` (P,).

    JSON-safe: ``None`` where a figure is undefined (e.g. no own component, or constant data).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    t = np.asarray(law.t_, dtype=float)
    own = law.own_component
    predicted = law.predict(X)
    residual = predicted - y
    rmse = float(np.sqrt(np.mean(residual**2)))
    spread = float(np.std(y))
    r2 = 1.0 - rmse**2 / spread**2 if spread > 0 else (1.0 if rmse == 0 else -np.inf)
    others = np.delete(t, own) if own is not None else t
    own_excess = float(t[own] - others.mean()) if own is not None and others.size else np.nan
    rho = np.nan
    if own is not None and np.ptp(X[:, own]) > 0 and np.ptp(y) > 0:
        rho = float(spearmanr(X[:, own], y).statistic)
    return {
        "exponent_spread": float(np.ptp(t)),  # max(t) - min(t): the law's log-range over the simplex
        "own_excess": _finite_or_none(own_excess),  # t_own - mean(t_others)
        "constant_share": float(np.exp(law.c_) / np.min(predicted)),  # exp(c) / smallest predicted loss
        "rmse": rmse,
        "r2": _finite_or_none(r2),
        "own_spearman": _finite_or_none(rho),  # rank correlation of the proxy losses with the own component
        "n_proxies": int(len(y)),
        "n_params": int(t.size + 1),
    }


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
        m = law_measures(law, X, y)
        flat = m["exponent_spread"] < FLAT_SPREAD
        if flat:
            out.append(f"law for domain {domain!r} is degenerate: flat on the simplex (its exponents t = {_fmt(t)} "
                       f"span only {m['exponent_spread']:.2g}, so no mixture changes its predicted loss by more than "
                       "~0.1%): it gives the proposal no direction")
        if not flat and m["own_excess"] is not None and m["own_excess"] > 0:
            others_mean = float(t[own]) - m["own_excess"]
            out.append(f"law for domain {domain!r}: the exponent of its own component {component_names[own]!r} is "
                       f"{t[own]:+.3g} > {others_mean:+.3g} (the others' mean), so more of its own data raises "
                       "its loss")
        if m["constant_share"] < COLLAPSE_SHARE:
            out.append(f"law for domain {domain!r}: the constant exp(c) = {np.exp(law.c_):.3g} collapsed to ~0 "
                       f"({m['constant_share']:.2g} of the smallest predicted loss on the proxies): the fit put the "
                       "whole loss floor into the mixture-dependent term")
        r2 = -np.inf if m["r2"] is None else m["r2"]
        if r2 < r2_threshold:
            out.append(f"law for domain {domain!r} fits poorly: R^2 = {r2:.3f} < {r2_threshold} (rmse "
                       f"{m['rmse']:.4g} against a loss spread (std) of {float(np.std(y)):.4g} over {len(y)} proxies)")
        if m["own_spearman"] is not None and m["own_spearman"] >= 0:
            out.append(f"proxy losses on domain {domain!r} do not fall with its own component "
                       f"{component_names[own]!r}: Spearman rank correlation {m['own_spearman']:+.3f} >= 0")
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
