"""The continual demo's domains: deterministic selection under a byte cap."""

from __future__ import annotations

from opmix.data.continual_demo import _calendar_documents
from opmix.data.demo import pick_documents


def test_cap_thins_by_a_fixed_stride_and_stops_at_the_cap():
    docs = [f"doc{i:03d}" * 10 for i in range(100)]  # 60 bytes each, 6,000 in all
    chosen = pick_documents(docs, 1_500)
    assert sum(len(d) for d in chosen) <= 1_500
    assert chosen == docs[::4][: len(chosen)] and len(chosen) == 25
    assert pick_documents(docs, 1_500) == chosen  # no randomness


def test_calendar_domain_is_real_stdlib_text():
    docs = _calendar_documents()
    assert len(docs) == 1000 and "January" in docs[0] and "1600" in docs[0]
