"""What the data tests share: the built-in byte tokenizer and a JSONL writer."""

import json

import pytest

from opmix.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:bytes")


@pytest.fixture(scope="session")
def write_docs():
    """``write_docs(path, docs)``: one JSONL line ``{"text": doc}`` per document; returns the path."""

    def write(path, docs):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        return path

    return write
