import json

import pytest

from opmix.data import demo
from opmix.data.demo import build_demo_corpus
from opmix.data.readers import read_documents

CAP = 120_000  # small cap keeps the test fast; the selection logic is the same as the default


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_corpus(out, max_bytes=CAP)


def test_three_distinct_non_empty_domains(built):
    _, paths = built
    assert set(paths) >= {"code", "prose", "records"}
    texts = {}
    for name, files in paths.items():
        docs = list(read_documents(files))
        size = sum(len(d.encode("utf-8")) for d in docs)
        assert docs and 0.3 * CAP < size <= CAP, (name, size)
        texts[name] = "".join(docs)
    assert "def " in texts["code"] and "import " in texts["code"]
    assert texts["records"].startswith("U+") and "; category " in texts["records"]
    assert " the " in texts["prose"] and "; category " not in texts["prose"]
    assert len({t[:1000] for t in texts.values()}) == 3


def test_deterministic_across_builds(built, tmp_path):
    first_dir, first = built
    second = build_demo_corpus(tmp_path, max_bytes=CAP)
    for name in first:
        assert [p.relative_to(first_dir) for p in first[name]] == [p.relative_to(tmp_path) for p in second[name]]
        assert [p.read_bytes() for p in first[name]] == [p.read_bytes() for p in second[name]]


def test_second_call_reuses(built, monkeypatch):
    out, paths = built
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt instead of reusing")

    monkeypatch.setattr(demo, "_write_shards", fail)
    assert build_demo_corpus(out, max_bytes=CAP) == paths
    assert json.loads((out / demo.MARKER).read_text())["settings"]["max_bytes"] == CAP


def test_changed_cap_rebuilds(tmp_path):
    def size(files):
        return sum(p.stat().st_size for p in files)

    small = size(build_demo_corpus(tmp_path, max_bytes=30_000)["records"])
    larger = size(build_demo_corpus(tmp_path, max_bytes=60_000)["records"])
    assert larger > small
