import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opmix.data.readers import (
    is_pretokenized,
    list_files,
    read_documents,
    read_token_arrays,
)
from opmix.errors import OpmixError


def test_text_files_one_document_each_sorted_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first ünïcode")
    (tmp_path / "sub" / "c.py").write_text("x = 1\n")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".hidden").write_text("never read")
    assert list(read_documents([tmp_path])) == ["first ünïcode", "second", "x = 1\n"]


def test_jsonl_with_default_and_custom_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "one", "body": "uno"}) + "\n\n" + json.dumps({"text": "two", "body": "dos"}) + "\n")
    assert list(read_documents([path])) == ["one", "two"]
    assert list(read_documents([path], text_field="body")) == ["uno", "dos"]


def test_parquet_column(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["alpha", "", "beta"], "id": [1, 2, 3]}), path)
    assert list(read_documents([path], text_field="content")) == ["alpha", "beta"]
    with pytest.raises(OpmixError, match=r"no column 'text'.*content"):
        list(read_documents([path]))


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(OpmixError, match=r"bad\.jsonl line 2 is not valid JSON"):
        list(read_documents([path]))


def test_missing_text_field_names_field_file_line_and_keys(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "x", "id": 3}\n')
    with pytest.raises(OpmixError) as info:
        list(read_documents([path]))
    message = str(info.value)
    assert "'text'" in message and "d.jsonl line 2" in message and "'content'" in message and "'id'" in message
    assert "\n" not in message


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(OpmixError, match="does not exist"):
        list(read_documents([tmp_path / "nope.txt"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OpmixError, match="holds no files"):
        list(read_documents([tmp_path / "empty"]))


def test_non_utf8_text_file_is_named(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(OpmixError, match=r"latin\.txt is not UTF-8"):
        list(read_documents([path]))


def test_token_arrays_npy_and_bin(tmp_path):
    np.save(tmp_path / "a.npy", np.array([1, 2, 3], dtype=np.int32))
    np.array([4, 5, 70000], dtype=np.uint32).tofile(tmp_path / "b.bin")
    np.array([6, 7], dtype=np.uint16).tofile(tmp_path / "c.bin")
    assert is_pretokenized([tmp_path / "a.npy", tmp_path / "c.bin"])
    a, c = read_token_arrays([tmp_path / "a.npy", tmp_path / "c.bin"])
    assert a.tolist() == [1, 2, 3] and c.tolist() == [6, 7]
    (b,) = read_token_arrays([tmp_path / "b.bin"], bin_dtype="uint32")
    assert b.tolist() == [4, 5, 70000]


def test_mixing_tokens_and_text_is_an_error(tmp_path):
    np.save(tmp_path / "a.npy", np.array([1, 2], dtype=np.int64))
    (tmp_path / "b.txt").write_text("text")
    assert not is_pretokenized([tmp_path / "b.txt"])
    with pytest.raises(OpmixError, match="mixes token arrays"):
        is_pretokenized([tmp_path])
    assert [p.name for p in list_files([tmp_path])] == ["a.npy", "b.txt"]
