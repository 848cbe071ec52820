import numpy as np

from opmix.diagnostics import law_warnings, segment_warnings
from opmix.law import LogLinearLaw, fit_laws

COMPONENTS = ["old", "code", "math"]
DOMAINS = ["code", "math"]


def _law(c, t, own):
    return LogLinearLaw.from_dict({"c": c, "t": list(t), "own_component": own})


def _good_case():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(3), size=12)
    T = np.array([[0.2, -1.0, 0.1], [0.1, 0.3, -0.8]])
    Y = np.array([0.8, 0.6]) + np.exp(X @ T.T) + rng.normal(0.0, 0.002, size=(12, 2))
    return X, Y


def test_silent_on_a_good_fit():
    X, Y = _good_case()
    laws = fit_laws(X, Y, own_components=[1, 2], n_c_starts=4, n_t_starts=10)
    assert law_warnings(laws, X, Y, COMPONENTS, DOMAINS) == []


def test_flags_wrong_sign_and_non_monotone_proxies():
    X, _ = _good_case()
    law = _law(-0.2, [0.1, 0.9, 0.2], own=1)  # more code raises the loss on code
    y = law.predict(X)
    good = _law(-0.5, [0.1, 0.3, -0.8], own=2)
    Y = np.column_stack([y, good.predict(X)])
    warnings = law_warnings([law, good], X, Y, COMPONENTS, DOMAINS)
    assert any("own component 'code'" in w and "+0.9 > +0.15" in w for w in warnings)
    assert any("degenerate" in w and "'code'" in w for w in warnings)
    assert any("Spearman" in w and "'code'" in w for w in warnings)
    assert not any("'math'" in w for w in warnings)


def test_flags_collapsed_constant():
    X, _ = _good_case()
    law = _law(-20.0, [0.5, -0.5, 0.1], own=1)
    y = law.predict(X)
    warnings = law_warnings([law], X, y[:, None], COMPONENTS, ["code"])
    assert len(warnings) == 1 and "collapsed" in warnings[0]


def test_flags_a_poor_fit():
    X, Y = _good_case()
    law = _law(-0.2, [0.2, -1.0, 0.1], own=1)
    noise = np.random.default_rng(3).permutation(Y[:, 0])  # same spread, no relation to x
    warnings = law_warnings([law], X, noise[:, None], COMPONENTS, ["code"], r2_threshold=0.5)
    assert any("fits poorly" in w and "R^2" in w for w in warnings)


def test_segment_turning_up_near_an_end_is_flagged():
    r = 0.1 + 0.8 * np.arange(9) / 8
    falling = 2.0 + np.exp(-3 * r)
    turning = falling.copy()
    turning[-2:] += [0.03, 0.08]  # dips then rises at the new-data end
    noise = np.random.default_rng(0).normal(0.0, 0.001, size=9)
    warnings = segment_warnings(r, np.column_stack([falling + noise, turning + noise]), ["d1", "d2"])
    assert len(warnings) == 1 and "'d2'" in warnings[0] and "toward r = 0.9" in warnings[0]


def test_segment_u_shape_is_flagged_and_noise_is_not():
    r = np.linspace(0.1, 0.9, 9)
    u_shape = 1.0 + (r - 0.5) ** 2
    falling_noisy = 2.0 + np.exp(-3 * r) + np.random.default_rng(1).normal(0.0, 0.002, size=9)
    warnings = segment_warnings(r, np.column_stack([u_shape, falling_noisy]), ["u", "falling"])
    assert len(warnings) == 1 and "'u'" in warnings[0] and "toward r = 0.9" in warnings[0]


def test_segment_known_noise_level_silences_a_flat_noisy_curve():
    r = np.linspace(0.1, 0.9, 9)
    flat = 1.0 + np.random.default_rng(1).normal(0.0, 0.01, size=9)
    assert segment_warnings(r, flat[:, None], ["flat"], noise=0.01) == []
    assert len(segment_warnings(r, flat[:, None], ["flat"], noise=1e-4)) == 1
