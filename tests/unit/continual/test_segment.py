"""The stage-k search's coordinates, expansion, prior and mixtures (SPEC section 3, continual midtraining)."""

from __future__ import annotations

import numpy as np
import pytest

from opmix.continual.segment import (
    continual_prior,
    effective_new_fraction,
    law_coordinates,
    probe_mixtures,
    proxy_weights,
    segment_points,
    stage_expansion,
    stage_mixture,
)
from opmix.domains import OLD


def test_nine_proxies_map_to_effective_new_fractions_point_one_to_point_nine():
    a = segment_points(9)
    assert a == pytest.approx([i / 8 for i in range(9)])
    r = effective_new_fraction(a)
    assert r == pytest.approx(0.1 + 0.8 * a)
    assert r == pytest.approx([0.1 * i for i in range(1, 10)])
    np.testing.assert_allclose(proxy_weights(a), np.stack([1 - a, a], axis=1))  # deltas mixed by a, not r
    np.testing.assert_allclose(law_coordinates(r), np.stack([1 - r, r], axis=1))  # laws regress on r
    assert effective_new_fraction(np.array([0.0, 1.0]), old_share=0.8, new_share=0.7) == pytest.approx([0.2, 0.7])


def test_probe_mixtures_are_ninety_ten_and_ten_ninety():
    p = {"a": 0.75, "b": 0.25}
    data = probe_mixtures(p, "c")
    assert data[OLD] == pytest.approx({"a": 0.675, "b": 0.225, "c": 0.1})
    assert data["c"] == pytest.approx({"a": 0.075, "b": 0.025, "c": 0.9})


def test_expansion_matrix_and_prior_use_p_for_the_old_column():
    p, seen = {"a": 0.6, "b": 0.4}, ["a", "b", "c"]
    M = stage_expansion(p, "c", seen)
    np.testing.assert_allclose(M, [[0.6, 0.0], [0.4, 0.0], [0.0, 1.0]])
    q = continual_prior(p, "c", seen)
    np.testing.assert_allclose(q, [0.3, 0.2, 0.5])  # new 0.5, each old domain 0.5 * p[d]
    assert q.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(continual_prior(p, "c", seen, new_weight=0.2), [0.48, 0.32, 0.2])


def test_stage_mixture_expands_and_carries_p():
    p = {"a": 1.0}
    w2 = stage_mixture(0.3, p, "b", ["a", "b"])
    assert w2 == pytest.approx({"a": 0.7, "b": 0.3})
    w3 = stage_mixture(0.5, w2, "c", ["a", "b", "c"])  # p <- w: the old part keeps w2's proportions
    assert w3 == pytest.approx({"a": 0.35, "b": 0.15, "c": 0.5})
    assert sum(w3.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("fraction, expected", [
    (1.0, {"a": 0.0, "b": 0.0, "c": 1.0}),  # naive sequential
    (0.9, {"a": 0.075, "b": 0.025, "c": 0.9}),  # fixed replay 90/10, old split by p
    (0.5, {"a": 0.375, "b": 0.125, "c": 0.5}),  # fixed 50/50
])
def test_fixed_baseline_mixtures(fraction, expected):
    assert stage_mixture(fraction, {"a": 0.75, "b": 0.25}, "c", ["a", "b", "c"]) == pytest.approx(expected)
