import pytest

from opmix.train.schedule import WSDSchedule


def test_wsd_warmup_flat_decay_shape():
    s = WSDSchedule(total_steps=100, warmup_steps=10, decay_steps=20, final_ratio=0.1)
    values = [s(i) for i in range(100)]
    assert values[0] == pytest.approx(0.1)  # linear warmup from the first step
    assert values[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in values[10:80])  # flat
    assert values[80] < 1.0 and values[-1] == pytest.approx(0.1)  # decays to 0.1x at the last step
    decay = values[79:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing, linear
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert max(steps) - min(steps) < 1e-12


def test_wsd_from_fractions_and_prefix_in_flat_phase():
    s = WSDSchedule.from_fractions(1000, 0.02, 0.2, 0.1)
    assert (s.warmup_steps, s.decay_steps) == (20, 200)
    assert s(199) == 1.0  # a 20% prefix ends in the flat phase: the final run continues without re-warm


def test_wsd_rejects_overlapping_phases():
    with pytest.raises(ValueError):
        WSDSchedule(total_steps=10, warmup_steps=6, decay_steps=6)


def test_cool_down_follows_the_run_then_decays_linearly_from_the_branch_rate():
    from opmix.train.schedule import CoolDown, WSDSchedule

    base = WSDSchedule(100, 10, 20, 0.1)
    cool = CoolDown(base, branch_step=5, steps=4, final_ratio=0.1)  # branching inside the warmup
    assert [cool(s) for s in range(5)] == [base(s) for s in range(5)]
    at_branch = base(5)
    assert [cool(s) for s in range(5, 10)] == pytest.approx(
        [at_branch * (1 - 0.9 * k / 4) for k in (1, 2, 3, 4)] + [0.1 * at_branch])
