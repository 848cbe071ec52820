import numpy as np
import pytest

from opmix.domains import OLD, expand, expansion_matrix, mix, normalize
from opmix.errors import OpmixError


def test_expansion_matrix_old_column_holds_p():
    p = {"a": 0.25, "b": 0.75, "c": 0.0}
    M = expansion_matrix([OLD, "c"], ["a", "b", "c"], p)
    np.testing.assert_allclose(M, [[0.25, 0], [0.75, 0], [0, 1]])


def test_expand_maps_components_to_domains_on_the_simplex():
    w = expand({OLD: 0.4, "c": 0.6}, ["a", "b", "c"], {"a": 0.5, "b": 0.5})
    assert w == pytest.approx({"a": 0.2, "b": 0.2, "c": 0.6})
    assert sum(w.values()) == pytest.approx(1.0)


def test_mix_of_domain_and_old_mixture():
    assert mix([(0.9, {"a": 1.0}), (0.1, {"a": 0.5, "b": 0.5})]) == pytest.approx({"a": 0.95, "b": 0.05})


@pytest.mark.parametrize("weights", [{"a": -1, "b": 2}, {"a": 0, "b": 0}, {"a": float("nan"), "b": 1}])
def test_normalize_rejects_bad_weights(weights):
    with pytest.raises(OpmixError):
        normalize(weights)


def test_normalize_sums_to_one():
    assert normalize({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
