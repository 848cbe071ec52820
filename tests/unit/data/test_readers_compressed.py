"""Compressed text/JSONL read transparently (.gz, .bz2, .xz, .zst), glob patterns in a domain's files, and the
checks ``inspect_sources`` makes before anything is tokenized."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import numpy as np
import pytest
import yaml

from opmix.data.cache import prepare_domain
from opmix.data.readers import (
    PER_DOCUMENT_TOKENS,
    inspect_sources,
    list_files,
    read_documents,
)
from opmix.errors import OpmixError

DOCS = ["first document, ünïcode", "second one", "third\nwith two lines"]
JSONL = "".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode("utf-8")
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_compressed_jsonl_and_text_read_like_plain_files(tmp_path, suffix):
    (tmp_path / f"docs.jsonl{suffix}").write_bytes(COMPRESS[suffix](JSONL))
    (tmp_path / f"notes{suffix}").write_bytes(COMPRESS[suffix](DOCS[0].encode("utf-8")))  # no inner suffix: text
    assert list(read_documents([tmp_path / f"docs.jsonl{suffix}"])) == DOCS
    assert list(read_documents([tmp_path / f"notes{suffix}"])) == [DOCS[0]]


def test_zst_read_with_the_zstandard_module(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    frames = zstandard.ZstdCompressor().compress(JSONL[:40]) + zstandard.ZstdCompressor().compress(JSONL[40:])
    (tmp_path / "docs.jsonl.zst").write_bytes(frames)  # two frames, as pzstd or `cat a.zst b.zst` write
    assert list(read_documents([tmp_path / "docs.jsonl.zst"])) == DOCS


def test_zst_without_a_zstd_module_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("opmix.data.readers._zstd_open", lambda: None)
    (tmp_path / "docs.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(OpmixError, match=r"docs\.jsonl\.zst is Zstandard-compressed \(\.zst\).*pip install zstandard, "
                                         r"or decompress it \(zstd -d "):
        list(read_documents([tmp_path / "docs.jsonl.zst"]))


def test_gzip_jsonl_is_streamed_not_read_whole(tmp_path):
    """The first documents come out before a damaged line further on is decompressed."""
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(1000)] + ["{broken"]
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    docs = read_documents([tmp_path / "docs.jsonl.gz"])
    assert next(docs) == "doc 0"
    with pytest.raises(OpmixError, match=r"docs\.jsonl\.gz line 1001 is not valid JSON"):
        list(docs)


def test_damaged_and_truncated_gzip_say_so(tmp_path):
    (tmp_path / "fake.txt.gz").write_bytes(b"not gzip at all")
    whole = gzip.compress(b"x" * 10_000)
    (tmp_path / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    for name in ("fake.txt.gz", "cut.txt.gz"):
        with pytest.raises(OpmixError, match=rf"cannot decompress .*{name} as gzip.*fix: .*gunzip -k "):
            list(read_documents([tmp_path / name]))


def test_not_utf8_inside_gzip_names_the_decompressed_offset(tmp_path):
    (tmp_path / "latin.txt.gz").write_bytes(gzip.compress("caf\xe9".encode("latin-1")))
    with pytest.raises(OpmixError, match=r"latin\.txt\.gz is not UTF-8 text \(bad byte at offset 3 of its "
                                         r"decompressed content\)"):
        list(read_documents([tmp_path / "latin.txt.gz"]))


@pytest.mark.parametrize("name, pattern", [
    ("docs.tar.gz", r"docs\.tar\.gz is an archive \(\.tar\.gz\).*tar -xzf "),
    ("docs.zip", r"docs\.zip is an archive \(\.zip\).*unzip "),
    ("ids.npy.gz", r"ids\.npy\.gz is a gzip-compressed token array.*gunzip -k "),
    ("rows.parquet.gz", r"rows\.parquet\.gz is a gzip-compressed Parquet file.*gunzip -k "),
])
def test_archives_and_compressed_binary_formats_are_refused(tmp_path, name, pattern):
    (tmp_path / name).write_bytes(b"\x1f\x8b\x00")
    with pytest.raises(OpmixError, match=pattern):
        list(read_documents([tmp_path / name]))
    with pytest.raises(OpmixError, match=pattern):
        inspect_sources([tmp_path / name])


def test_compressed_domain_tokenizes_like_the_plain_one(tmp_path, tok):
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "docs.jsonl").write_bytes(JSONL * 20)
    (tmp_path / "packed" / "docs.jsonl.gz").write_bytes(gzip.compress(JSONL * 20))
    plain = prepare_domain("d", [tmp_path / "plain"], tok, 16, tmp_path / "cache", eval_fraction=0.2)
    packed = prepare_domain("d", [tmp_path / "packed"], tok, 16, tmp_path / "cache", eval_fraction=0.2)
    assert np.array_equal(plain.train, packed.train) and np.array_equal(plain.eval, packed.eval)


def test_glob_patterns_expand_sorted_and_recursively(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "c.md", "sub/d.txt", "sub/deeper/e.txt"):
        (tmp_path / name).write_text(name)
    assert [p.name for p in list_files([tmp_path / "*.txt"])] == ["a.txt", "b.txt"]
    assert [p.name for p in list_files([tmp_path / "**" / "*.txt"])] == ["a.txt", "b.txt", "d.txt", "e.txt"]
    with pytest.raises(OpmixError, match=r"the pattern .*\*\.jsonl matches no file; fix: check the pattern"):
        list_files([tmp_path / "*.jsonl"])


def test_config_expands_globs_against_its_folder(tmp_path, tiny_pretrain_raw):
    from opmix.config import PretrainConfig, load_config

    (tmp_path / "data" / "more").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "more/c.txt"):
        (tmp_path / "data" / name).write_text("text " * 50)
    tiny_pretrain_raw["domains"][0]["files"] = ["data/**/*.txt"]  # relative: to the config file's folder
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain_raw))
    files = load_config(config, PretrainConfig).domains[0].files
    assert files == [tmp_path / "data" / "a.txt", tmp_path / "data" / "b.txt", tmp_path / "data" / "more" / "c.txt"]
    tiny_pretrain_raw["domains"][0]["eval_files"] = ["held-out/*.txt"]
    config.write_text(yaml.safe_dump(tiny_pretrain_raw))
    with pytest.raises(OpmixError, match=r"config domains\.0\.eval_files: the pattern .*held-out/\*\.txt matches no "
                                         r"file; fix: "):
        load_config(config, PretrainConfig)


def test_inspect_sources_bounds_tokens_from_sizes(tmp_path):
    (tmp_path / "short.txt").write_text("tiny")
    (tmp_path / "blank.txt").write_text("  \n")
    check = inspect_sources([tmp_path / "short.txt", tmp_path / "blank.txt"])
    assert check.max_tokens == 4 + PER_DOCUMENT_TOKENS and not check.pretokenized
    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    (tmp_path / "ids.bin").write_bytes(np.arange(500, dtype=np.uint16).tobytes())
    tokens = inspect_sources([tmp_path / "ids.npy", tmp_path / "ids.bin"])
    assert tokens.pretokenized and tokens.max_tokens == 1500  # exact for token arrays
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(JSONL * 20_000))  # more than the first look reads
    assert inspect_sources([tmp_path / "docs.jsonl.gz"]).max_tokens is None  # its size says nothing


def test_inspect_sources_catches_content_problems_at_the_start(tmp_path):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(OpmixError, match=r"docs\.jsonl line 1 has no text field 'text'"):
        inspect_sources([tmp_path / "docs.jsonl"])
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"hello " * 100))
    with pytest.raises(OpmixError, match=r"packed\.txt holds gzip-compressed data.*rename it to packed\.txt\.gz"):
        inspect_sources([tmp_path / "packed.txt"])
    np.save(tmp_path / "floats.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(OpmixError, match=r"floats\.npy holds a 1-D float32 array"):
        inspect_sources([tmp_path / "floats.npy"])


def test_files_past_the_first_look_budget_are_bounded_by_size(tmp_path, monkeypatch):
    """A domain of many files is not read twice: past SNIFF_BUDGET bytes, files are only checked readable."""
    monkeypatch.setattr("opmix.data.readers.SNIFF_BUDGET", 1)
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_bytes(b"\xff" * 10)  # not UTF-8: left to the reading itself
    check = inspect_sources([tmp_path / "a.txt", tmp_path / "b.txt"])
    assert check.max_tokens == (5 + PER_DOCUMENT_TOKENS) + (10 + PER_DOCUMENT_TOKENS)
    with pytest.raises(OpmixError, match=r"b\.txt is not UTF-8"):
        list(read_documents([tmp_path / "b.txt"]))
