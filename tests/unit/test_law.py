import json
from functools import partial

import numpy as np
import pytest
from scipy.optimize import minimize

from opmix.law import LogLinearLaw, _batch_lbfgs, _batch_objective, _objective, fit_laws


def _problem(k, n_points=20, seed=0, own=0):
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(k), size=n_points)
    c = rng.uniform(-1.0, 0.5)
    t = rng.uniform(0.0, 0.3, size=k)
    t[own] = -rng.uniform(0.5, 1.5)
    return X, c, t, np.exp(c) + np.exp(X @ t)


@pytest.mark.parametrize("k, seed", [(3, 0), (6, 1)])
def test_recovers_known_parameters_from_noiseless_points(k, seed):
    X, c, t, y = _problem(k, seed=seed, own=1)
    law = LogLinearLaw(own_component=1, seed=seed).fit(X, y)
    np.testing.assert_allclose(law.predict(X), y, atol=1e-4)
    assert law.c_ == pytest.approx(c, abs=1e-3)
    np.testing.assert_allclose(law.t_, t, atol=1e-3)
    fresh = np.random.default_rng(99).dirichlet(np.ones(k), size=50)
    np.testing.assert_allclose(law.predict(fresh), np.exp(c) + np.exp(fresh @ t), atol=1e-4)
    assert law.r2_ > 0.9999 and law.rmse_ < 1e-6 and law.converged_


def test_robust_to_small_noise():
    X, c, t, y = _problem(4, seed=3, own=0)
    noisy = y + np.random.default_rng(5).normal(0.0, 0.003, size=y.shape)
    law = LogLinearLaw(own_component=0).fit(X, noisy)
    fresh = np.random.default_rng(7).dirichlet(np.ones(4), size=100)
    truth = np.exp(c) + np.exp(fresh @ t)
    assert np.max(np.abs(law.predict(fresh) - truth)) < 0.02
    assert law.t_[0] < 0 and law.r2_ > 0.95


def test_same_seed_gives_identical_parameters():
    X, _, _, y = _problem(5, n_points=12, seed=4, own=2)
    y = y + np.random.default_rng(1).normal(0.0, 0.01, size=y.shape)
    a = LogLinearLaw(own_component=2, seed=11).fit(X, y)
    b = LogLinearLaw(own_component=2, seed=11).fit(X, y)
    assert a.c_ == b.c_ and np.array_equal(a.t_, b.t_) and a.huber_loss_ == b.huber_loss_


def test_fit_is_a_minimum_that_an_independent_optimiser_cannot_improve():
    X, _, _, y = _problem(4, n_points=12, seed=6, own=3)
    y = y + np.random.default_rng(2).normal(0.0, 0.02, size=y.shape)  # residuals in both Huber zones
    law = LogLinearLaw(own_component=3, n_c_starts=3, n_t_starts=5).fit(X, y)
    params = np.r_[law.c_, law.t_]
    loss, grad = _objective(params, X, y, 0.02)
    assert loss == pytest.approx(law.huber_loss_) and np.max(np.abs(grad)) < 1e-8 and law.converged_
    again = minimize(_objective, params, args=(X, y, 0.02), jac=True, method="L-BFGS-B")
    assert again.fun >= law.huber_loss_ - 1e-12
    nudged = params + 1e-3 * np.random.default_rng(0).normal(size=(200, params.size))
    assert min(_objective(p, X, y, 0.02)[0] for p in nudged) >= law.huber_loss_


def test_objective_gradient_matches_finite_differences():
    X, _, _, y = _problem(4, n_points=15, seed=8)
    y = y + np.random.default_rng(0).normal(0.0, 0.05, size=y.shape)  # some residuals in the linear Huber zone
    params = np.array([0.1, -0.5, 0.2, 0.05, 0.3])
    _, grad = _objective(params, X, y, 0.02)
    eps = 1e-6
    numeric = [(_objective(params + eps * e, X, y, 0.02)[0] - _objective(params - eps * e, X, y, 0.02)[0]) / (2 * eps)
               for e in np.eye(5)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_batched_lbfgs_solves_rosenbrock_from_every_start():
    def rosenbrock(P):
        a, b = P[:, 0], P[:, 1]
        f = (1 - a) ** 2 + 100 * (b - a**2) ** 2
        g = np.column_stack([-2 * (1 - a) - 400 * a * (b - a**2), 200 * (b - a**2)])
        return f, g

    starts = np.random.default_rng(0).uniform(-2, 2, size=(20, 2))
    x, f, n_iter, converged = _batch_lbfgs(rosenbrock, starts, max_iter=500, gtol=1e-10, ftol=0.0)
    np.testing.assert_allclose(x, 1.0, atol=1e-5)
    assert np.all(n_iter > 0) and converged.all()


def test_starts_follow_the_spec_distribution():
    starts = LogLinearLaw(own_component=2, n_c_starts=10, n_t_starts=30)._starts(4)
    assert starts.shape == (300, 5)
    np.testing.assert_allclose(np.unique(starts[:, 0]), np.linspace(-2.0, 1.5, 10))
    own, others = starts[:, 3], np.delete(starts[:, 1:], 2, axis=1)
    assert np.all((own <= 0) & (own >= -1)) and np.all((others >= 0) & (others <= 0.1))
    free = LogLinearLaw(own_component=None)._starts(4)[:, 1:]
    assert np.all((free >= 0) & (free <= 0.1))


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        LogLinearLaw().predict(np.ones((1, 3)) / 3)


def test_dict_roundtrip_through_json():
    X, _, _, y = _problem(3, n_points=12, seed=2)
    law = LogLinearLaw(own_component=0, seed=3).fit(X, y)
    loaded = LogLinearLaw.from_dict(json.loads(json.dumps(law.to_dict())))
    np.testing.assert_array_equal(loaded.predict(X), law.predict(X))
    assert loaded.own_component == 0 and loaded.seed == 3 and loaded.r2_ == law.r2_
    assert loaded.n_evaluations_ == law.n_evaluations_


def test_counts_its_objective_evaluations():
    """The fit's work, for the compute ledger: every start is evaluated at least once, and the count is
    deterministic."""
    X, _, _, y = _problem(3, n_points=12, seed=2)
    a = LogLinearLaw(own_component=0, n_c_starts=3, n_t_starts=4).fit(X, y)
    b = LogLinearLaw(own_component=0, n_c_starts=3, n_t_starts=4).fit(X, y)
    assert a.n_evaluations_ == b.n_evaluations_ >= 2 * 12 and a.to_dict()["n_evaluations"] == a.n_evaluations_


def test_fit_laws_fits_one_law_per_domain_with_its_own_component():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(3), size=12)
    T = np.array([[0.1, -1.0, 0.2], [0.2, 0.1, -0.8]])
    Y = 0.5 + np.exp(X @ T.T)
    laws = fit_laws(X, Y, own_components=[1, 2], seed=4, n_c_starts=4, n_t_starts=5)
    assert [law.own_component for law in laws] == [1, 2] and [law.seed for law in laws] == [4, 5]
    for j, law in enumerate(laws):
        np.testing.assert_allclose(law.predict(X), Y[:, j], atol=1e-4)
    with pytest.raises(ValueError):
        fit_laws(X, Y, own_components=[1])


def test_exponents_cannot_overflow():
    fun = partial(_batch_objective, X=np.eye(2), y=np.ones(2), delta=0.02)
    f, g = fun(np.array([[500.0, 1e4, -1e4]]))
    assert np.isfinite(f).all() and np.isfinite(g).all()
