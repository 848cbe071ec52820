import numpy as np
import pytest

from opmix.errors import OpmixError
from opmix.repetition import Repetition, consumed, plan


def _limit(allowed=False, factor=2.0):
    return Repetition({"a": 1000.0, "b": 4000.0}, factor, allowed, [])


def test_plan_adds_the_mixture_draws_to_what_was_used():
    assert plan({"a": 100.0}, {"a": 0.25, "b": 0.75}, 400) == {"a": 200.0, "b": 300.0}


def test_consumed_prefers_the_all_process_counts():
    assert consumed({"tokens_consumed": {"a": 5}, "tokens_consumed_total": {"a": 10}}) == {"a": 10.0}
    assert consumed({"tokens_consumed": {"a": 5}}) == {"a": 5.0}  # a marker written before the totals existed
    assert consumed(None) == {}


def test_caps_count_only_the_tokens_still_available():
    caps = _limit().caps(["a", "b"], {"a": 1500.0, "b": 0.0}, 1000)
    np.testing.assert_allclose(caps, [0.5, 8.0])  # (2 * 1000 - 1500) / 1000, 2 * 4000 / 1000
    assert _limit(factor=None).caps(["a", "b"], {}, 1000) is None
    with pytest.raises(OpmixError, match="caps sum to"):
        _limit(factor=0.1).caps(["a", "b"], {}, 1000)


def test_a_mixture_past_k_is_refused_naming_the_fix():
    with pytest.raises(OpmixError, match=r"the ERM baseline would consume 'a' 2.5 times its 1000 train tokens over "
                                         r"the run, more than the repetition factor k=2 allows; fix: .*"
                                         r"data.allow_repetition: true"):
        _limit().check("the ERM baseline", {}, {"a": 0.5, "b": 0.5}, 5000)
    _limit().check("within k", {"a": 1000.0}, {"a": 0.25, "b": 0.75}, 4000)  # exactly 2 epochs of a: fine
    _limit(factor=None).check("no limit", {}, {"a": 1.0}, 1e9)


def test_allowed_repetition_is_a_warning_in_the_notes():
    limit = _limit(allowed=True)
    limit.check("the prefix's mixture", {}, {"a": 1.0}, 3000)
    assert len(limit.notes) == 1 and "trained anyway: data.allow_repetition is true" in limit.notes[0]


def test_a_domain_the_mixture_leaves_out_is_not_the_reason():
    # a's earlier draws passed k N_a (sampling noise, or allowed); a mixture without a adds nothing to it
    _limit().check("the next stage", {"a": 2100.0}, {"a": 0.0, "b": 1.0}, 1000)
    with pytest.raises(OpmixError, match="'a'"):
        _limit().check("the next stage", {"a": 2100.0}, {"a": 0.1, "b": 0.9}, 1000)
