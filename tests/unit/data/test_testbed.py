"""Test beds of varied data (opmix.data.testbed): every set builds, deterministically, with enough documents."""

from __future__ import annotations

import logging
import struct

import pytest

from opmix.data import demo, os_text, testbed
from opmix.data.readers import read_documents
from opmix.data.testbed import (
    CONTINUAL_CASES,
    DOMAIN_SETS,
    build_continual_case,
    build_domain_set,
)

pytestmark = pytest.mark.slow  # builds four sets twice: ~30-60 s on 2 busy cores

CAP = 250_000  # small cap keeps the builds fast; the selection logic is the same as the default


def _docs(files) -> list[str]:
    return list(read_documents(files))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed")
    return out, {name: build_domain_set(name, out, max_bytes=CAP) for name in DOMAIN_SETS}


def test_sets_are_named_and_of_three_to_five_domains():
    assert {"languages", "code-kinds", "skewed"} <= set(DOMAIN_SETS)
    names = [d for domains in DOMAIN_SETS.values() for d in domains]
    assert len(names) == len(set(names))  # unique across sets, so cases can name them alone
    assert all(3 <= len(domains) <= 5 for domains in DOMAIN_SETS.values())


@pytest.mark.parametrize("name", sorted(DOMAIN_SETS))
def test_each_set_builds_its_domains_with_enough_documents(built, name):
    _, sets = built
    paths = sets[name]
    assert list(paths) == list(DOMAIN_SETS[name])
    for domain, files in paths.items():
        docs = _docs(files)
        size = sum(len(d.encode("utf-8")) for d in docs)
        cap = CAP * testbed.DOMAIN_SHARE.get(domain, 1.0)
        assert len(docs) >= 20, (domain, len(docs))
        assert 0.3 * cap < size <= cap, (domain, size, cap)
        assert all(d.strip() for d in docs)


def test_domains_differ_from_each_other(built):
    _, sets = built
    firsts = [_docs(files)[0][:500] for paths in sets.values() for files in paths.values()]
    assert len(set(firsts)) == len(firsts)


def test_languages_hold_non_ascii_text_in_their_scripts(built):
    _, sets = built
    text = {d: "".join(_docs(files)) for d, files in sets["languages"].items()}

    def share(domain: str, lo: int, hi: int) -> float:
        return sum(lo <= ord(c) <= hi for c in text[domain]) / len(text[domain])

    assert share("de", 0xC0, 0x17F) > 0.005  # umlauts, ß
    assert share("ru", 0x400, 0x4FF) > 0.3  # Cyrillic
    assert share("ja", 0x3040, 0x9FFF) > 0.2  # kana and kanji
    assert " the " in text["en"] and "Parameters" in text["en"]


def test_skewed_sizes_really_differ(built):
    _, sets = built
    sizes = {d: sum(len(x.encode("utf-8")) for x in _docs(files)) for d, files in sets["skewed"].items()}
    assert max(sizes.values()) >= 10 * min(sizes.values()), sizes
    assert min(sizes, key=sizes.get) == "logs" and max(sizes, key=sizes.get) == "table"


def test_deterministic_across_builds(built, tmp_path):
    first_dir, sets = built
    for name, first in sets.items():
        second = build_domain_set(name, tmp_path, max_bytes=CAP)
        for domain in first:
            assert [p.relative_to(first_dir) for p in first[domain]] == \
                [p.relative_to(tmp_path) for p in second[domain]]
            assert [p.read_bytes() for p in first[domain]] == [p.read_bytes() for p in second[domain]], domain


def test_marker_prevents_rebuilds_and_cases_reuse_built_domains(built, monkeypatch):
    out, sets = built

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt instead of reusing")

    monkeypatch.setattr(demo, "_write_shards", fail)
    monkeypatch.setattr(testbed, "_BUILDERS", {d: fail for d in testbed._BUILDERS})
    for name, paths in sets.items():
        assert build_domain_set(name, out, max_bytes=CAP) == paths
    for case in CONTINUAL_CASES:
        start, stages = build_continual_case(case, out, max_bytes=CAP)
        assert tuple(start) == CONTINUAL_CASES[case]["start"]
        assert tuple(stages) == CONTINUAL_CASES[case]["stages"]
        assert all(files for files in [*start.values(), *stages.values()])


def test_continual_cases_are_orderings_of_known_domains():
    known = {d for domains in DOMAIN_SETS.values() for d in domains}
    assert len(CONTINUAL_CASES) >= 3
    for case in CONTINUAL_CASES.values():
        assert case["start"] and 3 <= len(case["stages"]) <= 4
        assert set(case["start"]) | set(case["stages"]) <= known
        assert not set(case["start"]) & set(case["stages"])
        assert len(set(case["stages"])) == len(case["stages"])


def test_unknown_names_are_user_errors(tmp_path):
    from opmix.errors import OpmixError

    with pytest.raises(OpmixError, match="unknown test-bed domain set"):
        build_domain_set("nope", tmp_path)
    with pytest.raises(OpmixError, match="unknown continual test case"):
        build_continual_case("nope", tmp_path)


def test_spread_reaches_the_end_and_respects_the_cap():
    docs = [f"doc{i:04d}-" + "x" * (50 + (i * 37) % 200) for i in range(1000)]
    chosen = testbed._spread(docs, 20_000)
    assert sum(len(d) for d in chosen) <= 20_000 and len(chosen) > 50
    assert chosen[0] in docs[:20] and chosen[-1] in docs[-20:]  # evenly over the whole list
    assert testbed._spread(docs, 20_000) == chosen
    assert testbed._spread(["a" * 50] * 3, 10) == []  # nothing fits
    assert testbed._thin(["big", "small"], [1_000, 10], 5) == ["small"]  # at least one item, the smallest


def test_chunks_cut_at_blank_lines_under_the_limit():
    text = "\n\n".join(f"paragraph {i}\n" + "word " * (i % 30) for i in range(100)) + "\n" + "y" * 5_000
    pieces = testbed._chunks(text, 400)
    assert all(len(p.encode("utf-8")) <= 400 for p in pieces)
    assert pieces[0].startswith("paragraph 0") and "".join(pieces).count("paragraph") == 100
    assert sum(p.count("y") for p in pieces) == 5_000


def test_roff_becomes_plain_text():
    page = "\n".join([
        '.\\" a comment',
        ".TH LS 1 2024",
        ".SH BESCHREIBUNG",
        "Gibt \\fBalle\\fR Dateien aus, \\(:uber die au\\(sser \\-a nichts gesagt wird.",
        ".BR ls (1)",
        ".de XX",
        "ignored definition",
        "..",
        ".IP \\(bu 2",
        "Punkt \\[u00E9]",
    ])
    text = os_text.roff_to_text(page)
    assert "BESCHREIBUNG" in text and "über" in text and "außer -a" in text and "alle" in text
    assert "ls(1)" in text and "•\nPunkt é" in text
    assert "comment" not in text and "ignored" not in text and "\\f" not in text and "LS 1" not in text


def test_mo_catalog_messages(tmp_path):
    entries = sorted([(b"", b"Content-Type: text/plain; charset=UTF-8\n"), (b"File", b"Datei"),
                      (b"Open %s", b"%s \xc3\xb6ffnen"), (b"same", b"same"), (b"untranslated", b""),
                      (b"one\x00many", b"eins\x00viele")])
    n = len(entries)
    originals, translations = 28, 28 + 8 * n
    data_start = translations + 8 * n
    table_o, table_t, blob = b"", b"", b""
    for msgid, msgstr in entries:
        table_o += struct.pack("<2I", len(msgid), data_start + len(blob))
        blob += msgid + b"\x00"
    for msgid, msgstr in entries:
        table_t += struct.pack("<2I", len(msgstr), data_start + len(blob))
        blob += msgstr + b"\x00"
    path = tmp_path / "x.mo"
    path.write_bytes(struct.pack("<7I", 0x950412DE, 0, n, originals, translations, 0, 0) + table_o + table_t + blob)
    assert os_text.mo_messages(path) == ["Datei", "%s öffnen", "eins\nviele"]


def test_missing_os_language_text_falls_back_to_a_generated_stand_in(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(testbed, "_MAN_ROOT", tmp_path / "man")
    monkeypatch.setattr(testbed, "_LOCALE_ROOT", tmp_path / "locale")
    monkeypatch.setattr(testbed, "docstring_documents", lambda: ["Return the sum of the values.\n" * 20] * 40)
    with caplog.at_level(logging.WARNING, logger="opmix.data.testbed"):
        ru = testbed._BUILDERS["ru"](5_000)
        ja = testbed._BUILDERS["ja"](5_000)
        de = testbed._BUILDERS["de"](5_000)
    assert ru and ja and de and "generated stand-in" in caplog.text
    assert "Ретурн" in ru[0] and not ja[0].isascii() and "ü" in de[0]


def test_generated_domains_are_what_they_claim():
    logs = testbed._BUILDERS["logs"](20_000)
    table = testbed._BUILDERS["table"](20_000)
    assert len(logs) >= 20 and all(" INFO  scheduler: job " in d for d in logs)
    assert all(d.startswith("date,station,temp_c,rain_mm,wind_kmh,status\n") for d in table)
    assert testbed._BUILDERS["logs"](20_000) == logs  # fixed seed
