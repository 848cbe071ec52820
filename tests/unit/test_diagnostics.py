import json

import numpy as np
import pytest

from opmix.diagnostics import (
    law_measures,
    law_warnings,
    proxy_count_warnings,
    segment_warnings,
)
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
    assert not any("degenerate" in w for w in warnings)  # every exponent is positive, but the law is not flat
    assert any("Spearman" in w and "'code'" in w for w in warnings)
    assert not any("'math'" in w for w in warnings)


def test_flags_collapsed_constant():
    X, _ = _good_case()
    law = _law(-20.0, [0.5, -0.5, 0.1], own=1)
    y = law.predict(X)
    warnings = law_warnings([law], X, y[:, None], COMPONENTS, ["code"])
    assert len(warnings) == 1 and "collapsed" in warnings[0]


KINDS = {"degenerate": "flat", "exponent of its own": "own", "collapsed": "collapsed", "fits poorly": "poor",
         "Spearman": "spearman"}


def _verdicts(laws, X, Y, domains=("code",)):
    """Which checks fired, per domain: {(domain, kind)}."""
    out = set()
    for warning in law_warnings(laws, X, Y, COMPONENTS, list(domains)):
        kinds = [kind for key, kind in KINDS.items() if key in warning]
        assert len(kinds) == 1, warning
        out |= {(d, kinds[0]) for d in domains if f"{d!r}" in warning}
    return out


# (c, t) with the own component "code" (coordinate 1), and the checks that must fire
CASES = {
    "healthy": ((0.3, [0.2, -1.0, 0.1]), set()),  # own exponent most negative
    "wrong sign": ((-0.2, [0.1, 0.9, 0.2]), {"own", "spearman"}),
    "flat": ((0.3, [0.2, 0.2 + 4e-4, 0.2 - 3e-4]), {"flat", "spearman"}),  # rises by 0.0004 with code: also sp.
    "collapsed": ((-20.0, [0.5, -0.5, 0.1]), {"collapsed"}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shift", [-3.0, -1.0, 1.5, 3.0])
def test_a_constant_added_to_the_exponents_keeps_every_verdict(case, shift):
    """t + a has the same shape on the simplex: the verdicts are those of t (each law on the losses it predicts)."""
    X, _ = _good_case()
    (c, t), expected = CASES[case]
    t = np.asarray(t)
    law, shifted = _law(c, t, own=1), _law(c, t + shift, own=1)
    assert _verdicts([law], X, law.predict(X)[:, None]) == {("code", kind) for kind in expected}
    assert _verdicts([shifted], X, shifted.predict(X)[:, None]) == {("code", kind) for kind in expected}
    if case == "healthy" and shift == 1.5:
        assert np.all(t + shift > 0)  # every exponent positive: the old "degenerate" verdict fired here


@pytest.mark.parametrize("shift", [-20.0, 20.0])
def test_shape_verdicts_depend_only_on_exponent_differences(shift):
    """Flatness and the own-exponent check look only at t minus its mean, however far t is shifted."""
    X, Y = _good_case()
    laws = [_law(0.3, CASES[case][0][1], own=1) for case in ("healthy", "wrong sign", "flat")]
    shifted = [_law(0.3, np.asarray(law.t_) + shift, own=1) for law in laws]
    domains = ("d0", "d1", "d2")
    Y3 = np.column_stack([Y[:, 0]] * 3)  # the same data for both: only the parameters differ

    def shape(ls):
        return {v for v in _verdicts(ls, X, Y3, domains) if v[1] in ("flat", "own")}

    assert shape(shifted) == shape(laws) == {("d1", "own"), ("d2", "flat")}
    for law, other in zip(laws, shifted):
        a, b = law_measures(law, X, Y[:, 0]), law_measures(other, X, Y[:, 0])
        assert a["exponent_spread"] == pytest.approx(b["exponent_spread"], abs=1e-9)
        assert a["own_excess"] == pytest.approx(b["own_excess"], abs=1e-9)


@pytest.mark.parametrize("scale", [-5.0, 2.0])
def test_every_verdict_is_unchanged_by_the_units_of_the_loss(scale):
    """(c + a, t + a) is the same law for the losses e^a y: every check, fit and Spearman included, agrees."""
    X, Y = _good_case()
    y = Y[:, 0] + np.random.default_rng(4).normal(0.0, 0.05, size=len(Y))  # noisy: a poorer fit, still same verdicts
    laws = [_law(c, t, own=1) for (c, t), _ in CASES.values()]
    rescaled = [_law(law.c_ + scale, np.asarray(law.t_) + scale, own=1) for law in laws]
    Ys = np.column_stack([law.predict(X) for law in laws[:2]] + [y, np.random.default_rng(5).permutation(y)])
    domains = ("d0", "d1", "d2", "d3")
    assert _verdicts(rescaled, X, np.exp(scale) * Ys, domains) == _verdicts(laws, X, Ys, domains)


def test_a_flat_law_is_flagged_and_a_gently_sloped_one_is_not():
    X, _ = _good_case()
    flat = _law(0.3, [0.2, 0.2 + 4e-4, 0.2 - 3e-4], own=1)
    warnings = law_warnings([flat], X, flat.predict(X)[:, None], COMPONENTS, ["code"])
    assert any("degenerate" in w and "flat on the simplex" in w for w in warnings)
    assert not any("exponent of its own" in w for w in warnings)  # a flat law's sign is noise: not reported
    gentle = _law(0.3, [0.2, 0.2 - 0.02, 0.2], own=1)  # 2% between vertices: a usable direction
    assert law_warnings([gentle], X, gentle.predict(X)[:, None], COMPONENTS, ["code"]) == []


def test_a_healthy_law_is_not_flagged():
    X, _ = _good_case()
    law = _law(0.5, [0.4, -1.2, 0.3], own=1)  # own exponent most negative, constant a large share of the loss
    y = law.predict(X) + np.random.default_rng(2).normal(0.0, 0.002, size=len(X))
    assert law_warnings([law], X, y[:, None], COMPONENTS, ["code"]) == []
    measures = law_measures(law, X, y)
    assert measures["own_excess"] == pytest.approx(-1.55) and measures["exponent_spread"] == pytest.approx(1.6)
    assert 0.5 < measures["constant_share"] < 1 and measures["r2"] > 0.9 and measures["own_spearman"] < 0
    assert json.loads(json.dumps(measures, allow_nan=False)) == measures


def test_collapse_is_judged_against_the_law_not_by_c_alone():
    X, _ = _good_case()
    small = _law(-4.0, [-3.0, -4.0, -3.5], own=1)  # exp(c) = 0.018 beside a variable term of ~0.03: not collapsed
    assert law_warnings([small], X, small.predict(X)[:, None], COMPONENTS, ["code"]) == []
    swamped = _law(0.0, [8.0, 7.0, 7.5], own=1)  # exp(c) = 1 beside a variable term of ~1500: collapsed
    warnings = law_warnings([swamped], X, swamped.predict(X)[:, None], COMPONENTS, ["code"])
    assert len(warnings) == 1 and "collapsed" in warnings[0]


def test_proxy_count_warnings():
    assert proxy_count_warnings(10, 4) == []  # 5 parameters, twice as many points
    assert len(proxy_count_warnings(9, 4)) == 1 and "fewer than twice" in proxy_count_warnings(9, 4)[0]
    exact = proxy_count_warnings(5, 4)
    assert len(exact) == 1 and "exactly" in exact[0] and "method.n_proxies" in exact[0]
    assert proxy_count_warnings(9, 2) == [] and len(proxy_count_warnings(5, 2)) == 1  # continual: 3 parameters


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
