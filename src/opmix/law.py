"""The mixing law (SPEC section 2 step 3): ``L_j(x) = exp(c_j) + exp(t_j . x)`` for one eval domain j.

Fit: Huber loss (delta 0.02) on the residuals, summed over the proxy points, minimised by L-BFGS with a
strong-Wolfe line search from a grid of starts: ``n_c_starts`` values of c in ``linspace(*c_range)`` times
``n_t_starts`` random t per c. All starts run at once in a vectorised L-BFGS (bracket-and-zoom strong-Wolfe line
search, run per start), because one scipy call per start is ~10x too slow. The 5 best starts are then polished
to machine precision and the best of them (lowest objective) is kept.

Start distribution for t: the own component's coordinate starts at -U(0, 1) (more of domain j should lower the
loss on j), every other coordinate at U(0, 0.1). With ``own_component=None`` (an eval domain that is no
component of its own) every coordinate starts at U(0, 0.1): no sign is assumed.

Exponents are clipped (c to [-50, 10], t . x to [-60, 60]; the gradient is zero beyond the clip) so exp cannot
overflow. A collapsed constant shows as a very negative c, which `opmix.diagnostics` reports (relative to the
law's own variable term, not by the value of c alone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import numpy as np

logger = logging.getLogger(__name__)

_C_CLIP = (-50.0, 10.0)  # exp(c) below 1e-21 is "collapsed"; the clip only keeps exp finite
_EXP_CLIP = 60.0  # |t . x| beyond this is clipped so that exp cannot overflow
_MEMORY = 10  # L-BFGS history length
_C1, _C2 = 1e-4, 0.9  # sufficient-decrease and curvature constants of the strong Wolfe conditions
_SEARCH_ITER = 150  # L-BFGS iterations per start in the multi-start search
_N_POLISH, _POLISH_ITER = 5, 1000  # how many of the best starts are polished to machine precision, and how long


def _batch_objective(P: np.ndarray, X: np.ndarray, y: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber loss for each row of P = [c, t] (B, 1 + k), and its analytic gradient (B, 1 + k).

    The clipped function is flat outside the clip, so the gradient there is zero: function and gradient agree.
    """
    c = P[:, 0]
    c_clipped = np.clip(c, *_C_CLIP)
    # einsum, not @: these products are tiny, and BLAS would wake its thread pool, whose spinning threads then
    # slow every later BLAS call in the process on a small machine.
    Z = np.einsum("bk,pk->bp", P[:, 1:], X)
    Z_clipped = np.clip(Z, -_EXP_CLIP, _EXP_CLIP)
    exp_c = np.exp(c_clipped)
    E = np.exp(Z_clipped)
    R = exp_c[:, None] + E - y
    abs_r = np.abs(R)
    loss = np.where(abs_r <= delta, 0.5 * R * R, delta * (abs_r - 0.5 * delta)).sum(axis=1)
    psi = np.clip(R, -delta, delta)  # d huber / d residual
    grad = np.empty_like(P)
    grad[:, 0] = exp_c * psi.sum(axis=1) * (c == c_clipped)
    grad[:, 1:] = np.einsum("bp,pk->bk", psi * E * (Z == Z_clipped), X)
    return loss, grad


def _objective(params: np.ndarray, X: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    loss, grad = _batch_objective(params[None, :], X, y, delta)
    return float(loss[0]), grad[0]


def _cubic_step(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi):
    """Minimiser of the cubic through both ends (values and slopes), kept inside the middle 80% of the bracket."""
    with np.errstate(all="ignore"):
        d1 = d_lo + d_hi - 3.0 * (f_lo - f_hi) / (a_lo - a_hi)
        d2 = np.sign(a_hi - a_lo) * np.sqrt(d1 * d1 - d_lo * d_hi)
        a = a_hi - (a_hi - a_lo) * (d_hi + d2 - d1) / (d_hi - d_lo + 2.0 * d2)
    lower, upper = np.minimum(a_lo, a_hi), np.maximum(a_lo, a_hi)
    margin = 0.1 * (upper - lower)
    a = np.where(np.isfinite(a), a, 0.5 * (a_lo + a_hi))
    return np.clip(a, lower + margin, upper - margin)


def _line_search(fun, x, f0, g0, d, a_init, active, max_rounds=30):
    """Strong-Wolfe line search (bracket, then zoom) for every active row at once.

    Returns (ok, a, f, g): rows where ``ok`` is False found no acceptable step and should stop.
    """
    B = x.shape[0]
    dphi0 = np.einsum("ij,ij->i", g0, d)
    stage = np.where(active, 0, 2)  # 0 bracketing, 1 zooming, 2 done, 3 failed
    a = a_init.copy()
    a_prev, f_prev, dphi_prev, g_prev = np.zeros(B), f0.copy(), dphi0.copy(), g0.copy()
    lo, f_lo, dphi_lo, g_lo = np.zeros(B), f0.copy(), dphi0.copy(), g0.copy()
    hi, f_hi, dphi_hi = np.zeros(B), f0.copy(), dphi0.copy()
    a_out, f_out, g_out = np.zeros(B), f0.copy(), g0.copy()
    for round_ in range(max_rounds):
        running = stage < 2
        if not running.any():
            break
        F, G = fun(x + a[:, None] * d)
        dphi = np.einsum("ij,ij->i", G, d)
        armijo_fail = ~(F <= f0 + _C1 * a * dphi0)  # also true for NaN
        curvature_ok = np.abs(dphi) <= -_C2 * dphi0
        # Bracketing: either the step is too long (zoom between prev and a) or acceptable, or keep extending.
        br = stage == 0
        to_zoom_a = br & (armijo_fail | ((round_ > 0) & (F >= f_prev)))
        accept_br = br & ~to_zoom_a & curvature_ok
        to_zoom_b = br & ~to_zoom_a & ~accept_br & (dphi >= 0)
        extend = br & ~to_zoom_a & ~accept_br & ~to_zoom_b
        # Zooming: shrink [lo, hi] around a point meeting both conditions.
        zm = stage == 1
        zoom_hi = zm & (armijo_fail | (F >= f_lo))
        accept_zm = zm & ~zoom_hi & curvature_ok
        zoom_lo = zm & ~zoom_hi & ~accept_zm
        flip = zoom_lo & (dphi * (hi - lo) >= 0)

        accept = accept_br | accept_zm
        a_out = np.where(accept, a, a_out)
        f_out = np.where(accept, F, f_out)
        g_out = np.where(accept[:, None], G, g_out)
        stage = np.where(accept, 2, stage)

        # New brackets (order matters: flip hi to the old lo before lo moves).
        hi = np.where(to_zoom_a | zoom_hi, a, np.where(to_zoom_b, a_prev, np.where(flip, lo, hi)))
        f_hi = np.where(to_zoom_a | zoom_hi, F, np.where(to_zoom_b, f_prev, np.where(flip, f_lo, f_hi)))
        dphi_hi = np.where(to_zoom_a | zoom_hi, dphi, np.where(to_zoom_b, dphi_prev, np.where(flip, dphi_lo, dphi_hi)))
        new_lo_prev, new_lo_a = to_zoom_a, to_zoom_b | zoom_lo
        lo = np.where(new_lo_prev, a_prev, np.where(new_lo_a, a, lo))
        f_lo = np.where(new_lo_prev, f_prev, np.where(new_lo_a, F, f_lo))
        dphi_lo = np.where(new_lo_prev, dphi_prev, np.where(new_lo_a, dphi, dphi_lo))
        g_lo = np.where(new_lo_prev[:, None], g_prev, np.where(new_lo_a[:, None], G, g_lo))
        stage = np.where(to_zoom_a | to_zoom_b, 1, stage)

        a_prev = np.where(extend, a, a_prev)
        f_prev = np.where(extend, F, f_prev)
        dphi_prev = np.where(extend, dphi, dphi_prev)
        g_prev = np.where(extend[:, None], G, g_prev)
        zooming = stage == 1
        stalled = zooming & (np.abs(hi - lo) <= 1e-12 * np.maximum(np.abs(lo), 1e-12))
        stage = np.where(stalled, 3, stage)
        a = np.where(extend, 4.0 * a, a)
        a = np.where(zooming & ~stalled, _cubic_step(lo, f_lo, dphi_lo, hi, f_hi, dphi_hi), a)
    # Rows that ran out of rounds or stalled keep the best Armijo point seen (lo), if it moved at all.
    fallback = (stage != 2) & active & (lo > 0) & (f_lo < f0)
    a_out = np.where(fallback, lo, a_out)
    f_out = np.where(fallback, f_lo, f_out)
    g_out = np.where(fallback[:, None], g_lo, g_out)
    ok = active & ((stage == 2) | fallback)
    return ok, a_out, f_out, g_out


def _batch_lbfgs(fun, x0, max_iter=300, gtol=1e-10, ftol=1e-9):
    """L-BFGS with a strong-Wolfe line search, run independently for every row of x0 (vectorised over rows).

    A row stops when its largest gradient entry is below ``gtol``, one step lowers its loss by no more than
    ``ftol * max(|f|, 1e-12)`` (relative: the summed Huber loss is tiny near a good fit, so scipy's
    ``max(|f|, 1)`` would stop far too early), or its line search finds no decrease.
    Returns (x, f, iterations per row, converged per row: False where max_iter ran out).
    """
    B, n = x0.shape
    x = x0.copy()
    f, g = fun(x)
    S, Yd, rho = np.zeros((_MEMORY, B, n)), np.zeros((_MEMORY, B, n)), np.zeros((_MEMORY, B))
    gamma = np.ones(B)  # initial inverse-Hessian scale s.y / y.y of the newest pair
    active = np.isfinite(f) & (np.abs(g).max(axis=1) > gtol)
    n_iter = np.zeros(B, dtype=int)
    for it in range(max_iter):
        if not active.any():
            break
        # Two-loop recursion over the stored pairs, newest first (slot it-1 is newest); rho = 0 marks no pair.
        q = g.copy()
        alphas = []
        for back in range(1, min(it, _MEMORY) + 1):
            slot = (it - back) % _MEMORY
            alpha = rho[slot] * np.einsum("ij,ij->i", S[slot], q)
            q -= alpha[:, None] * Yd[slot]
            alphas.append((slot, alpha))
        r = gamma[:, None] * q
        for slot, alpha in reversed(alphas):
            beta = rho[slot] * np.einsum("ij,ij->i", Yd[slot], r)
            r += (alpha - beta)[:, None] * S[slot]
        d = -r
        not_descent = ~(np.einsum("ij,ij->i", g, d) < 0)
        d[not_descent] = -g[not_descent]
        a_init = np.where(n_iter == 0, 1.0 / np.maximum(1.0, np.linalg.norm(d, axis=1)), 1.0)
        ok, a, f_new, g_new = _line_search(fun, x, f, g, d, a_init, active)
        step = np.where(ok, a, 0.0)[:, None] * d
        y_diff = g_new - g
        sy = np.einsum("ij,ij->i", step, y_diff)
        yy = np.einsum("ij,ij->i", y_diff, y_diff)
        good_pair = ok & (sy > 1e-12 * yy) & (yy > 0)
        slot = it % _MEMORY
        S[slot], Yd[slot] = step, y_diff
        rho[slot] = np.where(good_pair, 1.0 / np.where(good_pair, sy, 1.0), 0.0)
        gamma = np.where(good_pair, sy / np.where(good_pair, yy, 1.0), gamma)
        decrease = f - f_new
        x = np.where(ok[:, None], x + step, x)
        f = np.where(ok, f_new, f)
        g = np.where(ok[:, None], g_new, g)
        n_iter += ok
        active = ok & (np.abs(g).max(axis=1) > gtol) & (decrease > ftol * np.maximum(np.abs(f), 1e-12))
    return x, f, n_iter, ~active


def _predict(c: float, t: np.ndarray, X: np.ndarray) -> np.ndarray:
    exponent = np.clip(np.asarray(X, dtype=float) @ t, -_EXP_CLIP, _EXP_CLIP)
    return np.exp(np.clip(c, *_C_CLIP)) + np.exp(exponent)


class LogLinearLaw:
    """One eval domain's law ``exp(c) + exp(t . x)``; scikit-learn style estimator (``fit`` returns self).

    Learned: ``c_``, ``t_`` (k,), ``huber_loss_`` (objective at the optimum), ``rmse_`` and ``r2_`` on the fit
    points, ``n_iter_`` and ``converged_`` of the final polish, ``n_starts_`` tried, ``n_evaluations_`` of the
    objective (each over all the points, for one start; the work the fit did, for the compute ledger).
    """

    def __init__(
        self,
        own_component: int | None = None,
        n_c_starts: int = 10,
        n_t_starts: int = 30,
        c_range: tuple[float, float] = (-2.0, 1.5),
        huber_delta: float = 0.02,  # delta
        seed: int = 0,
    ):
        self.own_component = own_component
        self.n_c_starts = n_c_starts
        self.n_t_starts = n_t_starts
        self.c_range = c_range
        self.huber_delta = huber_delta
        self.seed = seed

    def _starts(self, k: int) -> np.ndarray:
        """(n_c_starts * n_t_starts, 1 + k) starting points, drawn from a generator seeded by ``seed``."""
        rng = np.random.default_rng(self.seed)
        n = self.n_c_starts * self.n_t_starts
        c0 = np.repeat(np.linspace(self.c_range[0], self.c_range[1], self.n_c_starts), self.n_t_starts)
        t0 = rng.uniform(0.0, 0.1, size=(n, k))
        if self.own_component is not None:
            t0[:, self.own_component] = -rng.uniform(0.0, 1.0, size=n)
        return np.column_stack([c0, t0])

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogLinearLaw:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (P, k) and y (P,); got {X.shape} and {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("X and y must be finite")
        k = X.shape[1]
        if self.own_component is not None and not 0 <= self.own_component < k:
            raise ValueError(f"own_component {self.own_component} out of range for {k} components")
        objective = partial(_batch_objective, X=X, y=y, delta=self.huber_delta)
        evaluations = [0]

        def fun(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            evaluations[0] += P.shape[0]  # every row is computed, also rows whose start has already stopped
            return objective(P)

        # All starts run together (vectorised L-BFGS). Then the best few are polished to machine precision
        # (ftol 0: until no step lowers the loss), which also settles starts that were still creeping along a
        # flat valley when the search stopped them; the best polished point is kept.
        params, losses, _, _ = _batch_lbfgs(fun, self._starts(k), max_iter=_SEARCH_ITER)
        losses = np.where(np.isfinite(losses), losses, np.inf)
        if not np.isfinite(losses).any():
            raise RuntimeError("every start of the law fit failed")
        top = np.argsort(losses, kind="stable")[:_N_POLISH]
        params, losses, n_iter, converged = _batch_lbfgs(fun, params[top], max_iter=_POLISH_ITER, gtol=1e-12,
                                                         ftol=0.0)
        best = int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)))  # first of ties: deterministic
        self.c_ = float(params[best, 0])
        self.t_ = np.array(params[best, 1:], dtype=float)
        self.huber_loss_ = float(losses[best])
        self.n_iter_ = int(n_iter[best])  # iterations of the polish
        self.converged_ = bool(converged[best])
        self.n_starts_ = self.n_c_starts * self.n_t_starts
        self.n_evaluations_ = evaluations[0]  # objective evaluations (one start, all points), search and polish
        residual = self.predict(X) - y
        self.rmse_ = float(np.sqrt(np.mean(residual**2)))
        total = float(np.sum((y - y.mean()) ** 2))
        self.r2_ = float(1.0 - np.sum(residual**2) / total) if total > 0 else (1.0 if self.rmse_ < 1e-12 else 0.0)
        logger.debug("law fit: c=%.4f t=%s huber=%.3g r2=%.4f", self.c_, self.t_, self.huber_loss_, self.r2_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "t_"):
            raise RuntimeError("this LogLinearLaw is not fitted yet; call fit(X, y) first")

    def predict(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if X.shape[1] != self.t_.shape[0]:
            raise ValueError(f"X has {X.shape[1]} components; the law was fitted on {self.t_.shape[0]}")
        return _predict(self.c_, self.t_, X)

    def to_dict(self) -> dict:
        """JSON-safe parameters and fit summary (for the run directory)."""
        self._check_fitted()
        return {
            "kind": "loglinear",
            "own_component": None if self.own_component is None else int(self.own_component),
            "n_c_starts": self.n_c_starts,
            "n_t_starts": self.n_t_starts,
            "c_range": [float(v) for v in self.c_range],
            "huber_delta": float(self.huber_delta),
            "seed": int(self.seed),
            "c": self.c_,
            "t": [float(v) for v in self.t_],
            "huber_loss": self.huber_loss_,
            "rmse": self.rmse_,
            "r2": self.r2_,
            "n_iter": self.n_iter_,
            "converged": self.converged_,
            "n_starts": self.n_starts_,
            "n_evaluations": self.n_evaluations_,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LogLinearLaw:
        law = cls(
            own_component=d.get("own_component"),
            n_c_starts=int(d.get("n_c_starts", 10)),
            n_t_starts=int(d.get("n_t_starts", 30)),
            c_range=tuple(d.get("c_range", (-2.0, 1.5))),
            huber_delta=float(d.get("huber_delta", 0.02)),
            seed=int(d.get("seed", 0)),
        )
        law.c_ = float(d["c"])
        law.t_ = np.asarray(d["t"], dtype=float)
        law.huber_loss_ = float(d.get("huber_loss", np.nan))
        law.rmse_ = float(d.get("rmse", np.nan))
        law.r2_ = float(d.get("r2", np.nan))
        law.n_iter_ = int(d.get("n_iter", 0))
        law.converged_ = bool(d.get("converged", True))
        law.n_starts_ = int(d.get("n_starts", law.n_c_starts * law.n_t_starts))
        law.n_evaluations_ = int(d.get("n_evaluations", 0))
        return law


def fit_laws(
    X: np.ndarray, Y: np.ndarray, own_components: Sequence[int | None], seed: int = 0, **law_kwargs
) -> list[LogLinearLaw]:
    """One law per eval domain (column of ``Y``, shape (P, n_domains)); law j is seeded with ``seed + j``."""
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y must be (P, n_domains) with P = {X.shape[0]}; got {Y.shape}")
    if len(own_components) != Y.shape[1]:
        raise ValueError(f"own_components has {len(own_components)} entries for {Y.shape[1]} domains")
    return [
        LogLinearLaw(own_component=own, seed=seed + j, **law_kwargs).fit(X, Y[:, j])
        for j, own in enumerate(own_components)
    ]


def laws_from_rows(rows: Sequence[dict]) -> list[LogLinearLaw]:
    """Fitted laws back from their saved rows (``laws.json``, ``Proposal.laws``)."""
    return [LogLinearLaw.from_dict(dict(row)) for row in rows]
