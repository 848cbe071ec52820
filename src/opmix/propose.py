"""The KL-regularised proposer (SPEC section 2 step 4, caps from section 5).

    min_x  (1/n) sum_j exp(t_j . x) + kl_weight * KL(M x || q)   s.t.  x >= 0,  sum x = 1,  C x <= caps

The constants exp(c_j) of the laws do not move the argmin and are left out. ``q`` is a prior over domains and
``M`` (n_domains, n_components) expands component weights to domain weights, so the KL is on domain weights.
Solved as an exponential-cone program with cvxpy: Clarabel first, SCS if Clarabel fails (ECOS is never needed).

Caps bound *domain* weights, never components: ``C`` (n_capped_domains, n_components) is the expansion of the
component weights to the domains the caps are about (by default ``M``; the pretraining recipe, whose KL is over
components, passes its expansion ``[p | I]`` here). A component such as ``old`` draws from several domains, so
bounding it alone would let a capped domain through it; ``C x <= caps`` cannot be bypassed that way.

Zero prior entries: KL(w || q) is infinite unless w is zero wherever q is, so a domain with q = 0 is forbidden
(its expanded weight is constrained to 0; it is also left out of the KL sum, which is exact and avoids a
degenerate cone). This is what the formula says; give such a domain a small positive prior to allow it. With
``kl_weight == 0`` there is no KL term and the prior constrains nothing.
"""

from __future__ import annotations

import logging
import warnings

import cvxpy as cp
import numpy as np
from scipy.special import rel_entr

from opmix.errors import OpmixError

logger = logging.getLogger(__name__)

_SOLVERS = ("CLARABEL", "SCS")
# Tighter than the defaults: the KL term is flat near its optimum, so default gaps leave ~1e-5 error in x.
_SOLVER_OPTIONS = {
    "CLARABEL": {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10},
    "SCS": {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iters": 200_000},
}


def repetition_caps(
    tokens_available: np.ndarray, tokens_consumed_total: float, repetition_factor: float = 4.0,
    tokens_already_consumed: np.ndarray | None = None,
) -> np.ndarray:
    """Domain caps ``w_d <= (k * N_d - U_d) / R`` (SPEC section 5): N_d train tokens of domain d, U_d tokens of d
    that earlier training of the same model already consumed (default 0), R tokens the training being planned
    consumes (all processes). Over the whole run a domain is then consumed at most k times. A domain that already
    used more than k N_d gets the cap 0. Raises OpmixError when the caps sum to less than 1 (no mixture fits)."""
    available = np.asarray(tokens_available, dtype=float)
    if tokens_consumed_total <= 0:
        raise OpmixError(f"tokens consumed by the run is {tokens_consumed_total}", "give a positive token budget")
    if repetition_factor <= 0:
        raise OpmixError(f"repetition factor is {repetition_factor}", "give a positive repetition factor")
    if available.ndim != 1 or not np.all(np.isfinite(available)) or np.any(available < 0):
        raise OpmixError("tokens available must be a finite, non-negative count per domain", "fix the counts")
    used = np.zeros_like(available) if tokens_already_consumed is None else np.asarray(tokens_already_consumed, float)
    if used.shape != available.shape or not np.all(np.isfinite(used)) or np.any(used < 0):
        raise ValueError(f"tokens already consumed must be a non-negative count per domain; got {used}")
    caps = np.maximum(repetition_factor * available - used, 0.0) / tokens_consumed_total  # (k N_d - U_d) / R
    _check_caps(caps, available.shape[0])
    return caps


def _check_caps(caps: np.ndarray, d: int) -> None:
    if caps.shape != (d,):
        raise ValueError(f"caps must have one entry per capped domain, shape ({d},); got {caps.shape}")
    if np.any(np.isnan(caps)) or np.any(caps < 0):
        raise OpmixError("mixture caps contain negative or NaN entries", "give caps >= 0 (inf for no cap)")
    total = float(np.sum(caps))
    if total < 1.0:
        raise OpmixError(
            f"mixture caps sum to {total:.4g} < 1: the run needs more tokens than the domains supply at this "
            "repetition factor",
            "raise the repetition factor (method.proposer.repetition_factor; null turns the caps off), add data, "
            "or shorten the run",
        )


def _caps_feasible(C: np.ndarray, caps: np.ndarray, forbidden: np.ndarray | None) -> bool:
    """Whether some x >= 0 with sum 1 has ``C x <= caps`` (and ``forbidden @ x == 0``): a small LP."""
    from scipy.optimize import linprog

    k = C.shape[1]
    finite = np.isfinite(caps)
    A_eq = np.ones((1, k)) if forbidden is None or not len(forbidden) else np.vstack([np.ones((1, k)), forbidden])
    b_eq = np.zeros(A_eq.shape[0])
    b_eq[0] = 1.0
    result = linprog(np.zeros(k), A_ub=C[finite] if finite.any() else None, b_ub=caps[finite] if finite.any() else None,
                     A_eq=A_eq, b_eq=b_eq, bounds=[(0, None)] * k, method="highs")
    return result.status != 2  # 2: infeasible


def _kl(w: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(rel_entr(w, q)))


def proposal_objective(
    x: np.ndarray, T: np.ndarray, prior: np.ndarray, expansion: np.ndarray | None = None, kl_weight: float = 0.05
) -> float:
    """The proposer's objective at component weights ``x`` (numpy; for checks and reports)."""
    x = np.asarray(x, dtype=float)
    T = np.asarray(T, dtype=float)
    M = np.eye(T.shape[1]) if expansion is None else np.asarray(expansion, dtype=float)
    value = float(np.mean(np.exp(T @ x)))
    if kl_weight > 0:
        value += kl_weight * _kl(np.clip(M @ x, 0.0, None), np.asarray(prior, dtype=float))
    return value


class KLProposer:
    """Chooses component weights from fitted law exponents; scikit-learn style (``fit`` returns self).

    ``caps``: one upper bound per capped domain (``inf`` for none), on the domain weights ``C x`` (``C`` is
    ``fit``'s ``caps_expansion``, by default the expansion ``M``).

    Learned: ``x_`` (k,) component weights (clipped to >= 0 and renormalised), ``domain_weights_`` = M x_,
    ``capped_weights_`` = C x_ (None without caps), ``objective_`` (numpy value at ``x_``), ``solver_`` used and its
    ``status_``.
    """

    def __init__(self, kl_weight: float = 0.05, caps: np.ndarray | None = None, solver: str = "CLARABEL"):
        self.kl_weight = kl_weight  # lambda
        self.caps = caps
        self.solver = solver

    def fit(self, T: np.ndarray, prior: np.ndarray, expansion: np.ndarray | None = None,
            caps_expansion: np.ndarray | None = None) -> KLProposer:
        T = np.asarray(T, dtype=float)
        if T.ndim != 2 or not np.all(np.isfinite(T)):
            raise ValueError(f"T must be a finite (n_laws, n_components) array; got shape {T.shape}")
        n, k = T.shape
        M = np.eye(k) if expansion is None else np.asarray(expansion, dtype=float)
        q = np.asarray(prior, dtype=float)
        if M.ndim != 2 or M.shape[1] != k or q.shape != (M.shape[0],):
            raise ValueError(f"expansion must be (d, {k}) and prior (d,); got {M.shape} and {q.shape}")
        if np.any(q < 0) or not np.isclose(q.sum(), 1.0, atol=1e-6):
            raise OpmixError(f"the prior must be a distribution (>= 0, sum 1); it sums to {q.sum():.6g}",
                             "normalise the prior weights")
        if np.any(M < 0) or not np.allclose(M.sum(axis=0), 1.0, atol=1e-6):
            raise ValueError("every column of the expansion matrix must be a distribution over domains")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0; got {self.kl_weight}")
        caps = None if self.caps is None else np.asarray(self.caps, dtype=float)
        C = M if caps_expansion is None else np.asarray(caps_expansion, dtype=float)
        if caps is not None:
            if C.ndim != 2 or C.shape[1] != k or np.any(C < 0) or not np.allclose(C.sum(axis=0), 1.0, atol=1e-6):
                raise ValueError(f"caps_expansion must be (d, {k}) with columns that are distributions; got {C.shape}")
            _check_caps(caps, C.shape[0])
        forbidden = M[q <= 0] if self.kl_weight > 0 else None  # KL is infinite unless these domains get 0
        if caps is not None and not _caps_feasible(C, caps, forbidden):
            zero = "" if forbidden is None or not len(forbidden) else (
                " together with the domains of zero prior weight, which are forbidden")
            raise OpmixError(
                f"the caps are infeasible{zero}: no mixture of the {k} components keeps every domain under its cap "
                f"(caps {np.array2string(caps, precision=4, separator=', ')}; a component draws from its domains "
                "in fixed proportions)",
                "raise the repetition factor (method.proposer.repetition_factor), add data to the capped domains, "
                "shorten the run, or give the capped-out domains positive prior weight",
            )

        x = cp.Variable(k, nonneg=True)
        objective = cp.sum(cp.exp(T @ x)) / n
        constraints = [cp.sum(x) == 1]
        if caps is not None and np.any(np.isfinite(caps)):
            finite = np.isfinite(caps)
            constraints.append(C[finite] @ x <= caps[finite])  # domain weights, `old`'s share of them included
        if self.kl_weight > 0:
            support = q > 0
            w = M @ x
            objective = objective + self.kl_weight * cp.sum(cp.rel_entr(w[support], q[support]))
            if not support.all():
                constraints.append(w[~support] == 0)  # KL is infinite otherwise (see module docstring)
        problem = cp.Problem(cp.Minimize(objective), constraints)

        value, status, used = self._solve(problem, x)
        if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            raise OpmixError(
                "the proposer's constraints are infeasible (caps, and domains with zero prior weight, which are "
                "forbidden)",
                "loosen the caps or give the capped-out domains positive prior weight",
            )
        if value is None:
            raise RuntimeError(f"the proposer found no solution (last solver {used}, status {status})")
        if status == cp.OPTIMAL_INACCURATE:
            logger.warning("proposer: solver %s reports an inaccurate optimum", used)

        value = np.clip(value, 0.0, None)
        self.x_ = value / value.sum()
        self.domain_weights_ = M @ self.x_
        self.capped_weights_ = None if caps is None else C @ self.x_
        self.objective_ = proposal_objective(self.x_, T, q, M, self.kl_weight)
        self.solver_ = used
        self.status_ = status
        logger.debug("proposer: x=%s objective=%.6g (%s, %s)", self.x_, self.objective_, used, status)
        return self

    def _solve(self, problem: cp.Problem, x: cp.Variable) -> tuple[np.ndarray | None, str | None, str | None]:
        """Try the chosen solver, then the others; each first with tight tolerances, then with its defaults.

        Returns the first optimal solution, else the first inaccurate one, with its status and solver.
        """
        order = [self.solver] + [s for s in _SOLVERS if s != self.solver]
        attempts = [(solver, options) for solver in order for options in (_SOLVER_OPTIONS.get(solver, {}), {})]
        fallback: tuple[np.ndarray | None, str | None, str | None] = (None, None, None)
        for solver, options in attempts:
            try:
                with warnings.catch_warnings():  # cvxpy warns on inaccurate solutions; we log it ourselves
                    warnings.simplefilter("ignore", UserWarning)
                    problem.solve(solver=solver, **options)
            except cp.error.SolverError as error:
                logger.info("proposer: solver %s failed (%s); trying the next attempt", solver, error)
                continue
            status = problem.status
            if status == cp.OPTIMAL and x.value is not None:
                return np.asarray(x.value, dtype=float), status, solver
            if status == cp.OPTIMAL_INACCURATE and x.value is not None and fallback[0] is None:
                fallback = (np.asarray(x.value, dtype=float), status, solver)
            elif fallback[0] is None and fallback[1] not in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
                fallback = (None, status, solver)  # an infeasibility verdict is kept over later failures
            logger.info("proposer: solver %s returned status %s; trying the next attempt", solver, status)
        return fallback
