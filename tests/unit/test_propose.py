import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import rel_entr

from opmix.domains import expansion_matrix
from opmix.errors import OpmixError
from opmix.propose import KLProposer, proposal_objective, repetition_caps


def _simplex_grid(k, steps):
    if k == 2:
        a = np.linspace(0.0, 1.0, steps + 1)
        return np.column_stack([a, 1 - a])
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    a, b = i[keep] / steps, j[keep] / steps
    return np.column_stack([a, b, 1 - a - b])


def _brute_force(T, q, M, kl_weight, caps):
    k = T.shape[1]
    grid = _simplex_grid(k, 20000 if k == 2 else 300)
    if caps is not None:
        grid = grid[np.all(grid <= caps + 1e-12, axis=1)]
    with np.errstate(divide="ignore"):
        values = np.mean(np.exp(grid @ T.T), axis=1) + kl_weight * np.sum(rel_entr(grid @ M.T, q), axis=1)
    start = grid[np.argmin(values)]
    upper = np.ones(k) if caps is None else np.minimum(caps, 1.0)
    refined = minimize(
        lambda x: proposal_objective(np.clip(x, 0, None), T, q, M, kl_weight), start, method="SLSQP",
        bounds=[(0.0, u) for u in upper], constraints=[{"type": "eq", "fun": lambda x: np.sum(x) - 1}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    best = min(values.min(), refined.fun if refined.success else np.inf)
    return best


def _old_expansion():
    # components (old, c, d) over domains (a, b, c, d); the old mixture p is over a and b
    return expansion_matrix(["old", "c", "d"], ["a", "b", "c", "d"], {"a": 0.3, "b": 0.7})


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k, capped, expanded", [(2, False, False), (2, True, False), (3, False, False),
                                                  (3, True, False), (3, False, True), (3, True, True)])
def test_matches_brute_force_simplex_search(seed, k, capped, expanded):
    rng = np.random.default_rng(seed)
    T = rng.normal(0.0, 1.0, size=(4, k))
    M = _old_expansion() if expanded else np.eye(k)
    q = rng.dirichlet(np.ones(M.shape[0]))
    caps = rng.uniform(0.4, 0.7, size=k) if capped else None
    proposer = KLProposer(kl_weight=0.05, caps=caps).fit(T, q, M if expanded else None)
    assert proposer.x_.shape == (k,) and proposer.x_.min() >= 0 and proposer.x_.sum() == pytest.approx(1.0)
    if capped:
        assert np.all(proposer.x_ <= caps + 1e-6)
    brute = _brute_force(T, q, M, 0.05, caps)
    assert proposer.objective_ == pytest.approx(brute, abs=1e-5)
    assert proposer.objective_ >= brute - 1e-5


def test_solution_moves_toward_the_prior_as_kl_weight_grows():
    rng = np.random.default_rng(4)
    T = rng.normal(0.0, 1.5, size=(3, 3))
    M = _old_expansion()
    q = np.array([0.12, 0.28, 0.35, 0.25])  # = M @ [0.4, 0.35, 0.25]: reachable
    kls, l1 = [], []
    for kl_weight in [0.0, 0.05, 0.5, 5.0, 50.0]:
        w = KLProposer(kl_weight=kl_weight).fit(T, q, M).domain_weights_
        kls.append(float(np.sum(rel_entr(w, q))))
        l1.append(float(np.abs(w - q).sum()))
    assert all(later <= earlier + 1e-6 for earlier, later in zip(kls, kls[1:]))
    assert all(later <= earlier + 1e-6 for earlier, later in zip(l1, l1[1:]))
    assert kls[0] > 0.1 and l1[-1] < 0.05 and l1[-1] < 0.1 * l1[0]
    w = KLProposer(kl_weight=5000.0).fit(T, q, M).domain_weights_
    np.testing.assert_allclose(w, q, atol=1e-3)


def test_flat_laws_return_the_prior():
    q = np.array([0.5, 0.2, 0.3])
    x = KLProposer().fit(np.zeros((2, 3)), q).x_
    np.testing.assert_allclose(x, q, atol=1e-5)
    M = _old_expansion()
    proposer = KLProposer().fit(np.zeros((2, 3)), M @ np.array([0.5, 0.2, 0.3]), M)
    np.testing.assert_allclose(proposer.x_, [0.5, 0.2, 0.3], atol=1e-5)


def test_zero_prior_weight_forbids_a_domain():
    T = np.array([[1.0, 1.0, -3.0]])  # the laws want all of component 2
    x = KLProposer().fit(T, np.array([0.5, 0.5, 0.0])).x_
    assert x[2] < 1e-7
    assert KLProposer(kl_weight=0.0).fit(T, np.array([0.5, 0.5, 0.0])).x_[2] > 0.99


def test_scs_fallback_solver_agrees_with_clarabel():
    rng = np.random.default_rng(1)
    T, q = rng.normal(size=(3, 3)), rng.dirichlet(np.ones(3))
    clarabel = KLProposer().fit(T, q)
    scs = KLProposer(solver="SCS").fit(T, q)
    assert clarabel.solver_ == "CLARABEL" and scs.solver_ == "SCS"
    np.testing.assert_allclose(scs.x_, clarabel.x_, atol=2e-3)


def test_infeasible_caps_raise():
    with pytest.raises(OpmixError, match="caps sum to 0.9"):
        KLProposer(caps=np.array([0.3, 0.3, 0.3])).fit(np.zeros((1, 3)), np.ones(3) / 3)


def test_caps_infeasible_with_a_forbidden_domain_raise():
    with pytest.raises(OpmixError, match="infeasible"):
        KLProposer(caps=np.array([0.3, 0.3, 1.0])).fit(np.zeros((1, 3)), np.array([0.5, 0.5, 0.0]))


def test_repetition_caps():
    caps = repetition_caps(np.array([1e9, 2e9, 5e8]), tokens_consumed_total=4e9, repetition_factor=4.0)
    np.testing.assert_allclose(caps, [1.0, 2.0, 0.5])
    with pytest.raises(OpmixError, match="fix:"):
        repetition_caps(np.array([1e8, 1e8]), tokens_consumed_total=1e9, repetition_factor=4.0)
    with pytest.raises(OpmixError):
        repetition_caps(np.array([1e9]), tokens_consumed_total=0.0)


def test_capped_solution_sits_on_the_cap():
    T = np.array([[-3.0, 0.0, 0.0]])
    x = KLProposer(kl_weight=0.0, caps=np.array([0.3, 1.0, 1.0])).fit(T, np.ones(3) / 3).x_
    assert x[0] == pytest.approx(0.3, abs=1e-6)
