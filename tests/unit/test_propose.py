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


def _brute_force(T, q, M, kl_weight, caps, C=None):
    """The best objective over a fine simplex grid (kept where the domain weights C x are under the caps), refined
    by SLSQP from the best grid point; C defaults to M."""
    k = T.shape[1]
    C = M if C is None else C
    grid = _simplex_grid(k, 20000 if k == 2 else 300)
    if caps is not None:
        grid = grid[np.all(grid @ C.T <= caps + 1e-12, axis=1)]
    with np.errstate(divide="ignore"):
        values = np.mean(np.exp(grid @ T.T), axis=1) + kl_weight * np.sum(rel_entr(grid @ M.T, q), axis=1)
    start = grid[np.argmin(values)]
    constraints = [{"type": "eq", "fun": lambda x: np.sum(x) - 1}]
    if caps is not None:
        finite = np.isfinite(caps)
        constraints.append({"type": "ineq", "fun": lambda x: caps[finite] - C[finite] @ x})
    refined = minimize(
        lambda x: proposal_objective(np.clip(x, 0, None), T, q, M, kl_weight), start, method="SLSQP",
        bounds=[(0.0, 1.0)] * k, constraints=constraints, options={"ftol": 1e-12, "maxiter": 500},
    )
    feasible = refined.success and (caps is None or np.all(C @ refined.x <= caps + 1e-9))
    best = min(values.min(), refined.fun if feasible else np.inf)
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
    caps = rng.uniform(0.4, 0.7, size=M.shape[0]) if capped else None  # one cap per domain
    proposer = KLProposer(kl_weight=0.05, caps=caps).fit(T, q, M if expanded else None)
    assert proposer.x_.shape == (k,) and proposer.x_.min() >= 0 and proposer.x_.sum() == pytest.approx(1.0)
    if capped:
        assert np.all(M @ proposer.x_ <= caps + 1e-6)
        np.testing.assert_allclose(proposer.capped_weights_, M @ proposer.x_)
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


def _favour_old():
    """Components (old, a, b) over domains (a, b) with p = (0.7, 0.3), laws that strongly favour `old`, and the
    pretraining recipe's set-up: the KL over components (M = I), the caps over domains (C = [p | I])."""
    C = expansion_matrix(["old", "a", "b"], ["a", "b"], {"a": 0.7, "b": 0.3})
    T = np.array([[-4.0, 0.5, 0.5], [-3.0, 0.0, 1.0]])
    q = np.array([0.5, 0.25, 0.25])  # the default prior: old 0.5, each domain 0.5/m
    return C, T, q


def test_a_capped_domain_stays_under_its_cap_through_old():
    """The failing example: a cap of 0.05 on one domain; per-component caps let `old` carry it to 0.33 and more."""
    C, T, q = _favour_old()
    caps = np.array([0.05, np.inf])
    unconstrained = KLProposer().fit(T, q)
    assert (C @ unconstrained.x_)[0] > 0.3  # `old` takes nearly everything, and 0.7 of it is domain a
    proposer = KLProposer(caps=caps).fit(T, q, caps_expansion=C)
    w = C @ proposer.x_
    assert w[0] <= 0.05 + 1e-7 and w[0] == pytest.approx(0.05, abs=1e-5)  # the cap binds on the expanded weight
    np.testing.assert_allclose(proposer.capped_weights_, w)
    np.testing.assert_allclose(proposer.domain_weights_, proposer.x_)  # the KL stays over components (M = I)
    brute = _brute_force(T, q, np.eye(3), 0.05, caps, C)
    assert proposer.objective_ == pytest.approx(brute, abs=1e-5) and proposer.objective_ >= brute - 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_domain_caps_with_a_separate_caps_expansion_match_brute_force(seed):
    rng = np.random.default_rng(10 + seed)
    C = _old_expansion()  # (old, c, d) over (a, b, c, d)
    T = rng.normal(0.0, 1.5, size=(4, 3))
    q = rng.dirichlet(np.ones(3))  # over components
    caps = C @ rng.dirichlet(np.ones(3)) + rng.uniform(0.0, 0.1, size=4)  # reachable; some caps bind
    proposer = KLProposer(caps=caps).fit(T, q, caps_expansion=C)
    assert np.all(C @ proposer.x_ <= caps + 1e-6)
    brute = _brute_force(T, q, np.eye(3), 0.05, caps, C)
    assert proposer.objective_ == pytest.approx(brute, abs=1e-5) and proposer.objective_ >= brute - 1e-5


def test_caps_unreachable_through_the_components_raise():
    """The caps sum past 1, but `old` draws from a and b in fixed proportions and there is no component of its own
    for b: only (old, a) exist, and b (capped at 0.8) must take 0.7, more than the 0.5 `old` can give it."""
    C = expansion_matrix(["old", "a"], ["a", "b"], {"a": 0.5, "b": 0.5})
    with pytest.raises(OpmixError, match="caps are infeasible.*fix: raise the repetition factor"):
        KLProposer(caps=np.array([0.3, 0.8])).fit(np.zeros((1, 2)), np.array([0.5, 0.5]), caps_expansion=C)


def test_caps_need_one_entry_per_capped_domain():
    C, T, q = _favour_old()
    with pytest.raises(ValueError, match="one entry per capped domain"):
        KLProposer(caps=np.array([0.5, 0.5, 0.5])).fit(T, q, caps_expansion=C)


def test_repetition_caps_count_only_the_tokens_still_available():
    caps = repetition_caps(np.array([1e9, 2e9]), tokens_consumed_total=1e9, repetition_factor=4.0,
                           tokens_already_consumed=np.array([3.5e9, 5e9]))
    np.testing.assert_allclose(caps, [0.5, 3.0])
    caps = repetition_caps(np.array([1e9, 2e9]), 1e9, 4.0, tokens_already_consumed=np.array([5e9, 0.0]))
    np.testing.assert_allclose(caps, [0.0, 8.0])  # a domain used past k N_d gets no more weight
    with pytest.raises(OpmixError, match="caps sum to 0.8 < 1"):
        repetition_caps(np.array([1e9, 1e9]), 1e9, 1.0, tokens_already_consumed=np.array([6e8, 6e8]))
