"""Tests for the token cache and the built-in tokenizer it is used with."""

import os

import numpy as np
import pytest

from opmix.data import cache as cache_module
from opmix.data.cache import prepare_domain
from opmix.data.tokenizer import load_tokenizer
from opmix.errors import OpmixError


def counting_encoder(monkeypatch):
    calls = []
    real = cache_module.encode_batch

    def counted(tokenizer, texts):
        calls.append(len(texts))
        return real(tokenizer, texts)

    monkeypatch.setattr(cache_module, "encode_batch", counted)
    return calls


# --- tokenizer ---------------------------------------------------------------------------------------------------

def test_byte_tokenizer_roundtrip_and_eos(tok):
    text = "héllo wörld ∑ 日本語 😀\n\ttabs  and  spaces <|notaspecial|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 256 and len(tok) == 257


def test_byte_tokenizer_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tk")
    again = load_tokenizer(str(tmp_path / "tk"))
    text = "ça va? ✓"
    assert again(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert again.eos_token_id == 256 and len(again) == 257
    # The cache key sees the reloaded copy as the same tokenizer, so it reuses tokens made with the original.
    assert cache_module.tokenizer_identity(again) == cache_module.tokenizer_identity(tok)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(OpmixError, match="neither"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OpmixError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))


# --- cache -------------------------------------------------------------------------------------------------------

def test_shapes_dtype_and_content(tok, tmp_path, write_docs):
    docs = [f"document number {i} " * 3 for i in range(40)]
    path = write_docs(tmp_path / "d.jsonl", docs)
    dom = prepare_domain("web", [path], tok, seq_len=16, cache_dir=tmp_path / "c", eval_fraction=0.2, seed=1)
    assert dom.train.ndim == 2 and dom.train.shape[1] == 16 and dom.eval.shape[1] == 16
    assert dom.train.dtype == np.uint16 and isinstance(dom.train, np.memmap)
    assert dom.train_tokens == dom.train.size and dom.eval_tokens == dom.eval.size
    train_text = tok.decode(dom.train.reshape(-1).tolist())
    eval_text = tok.decode(dom.eval.reshape(-1).tolist())
    # Every full document boundary is an EOS, and no document is on both sides of the split.
    train_docs = set(train_text.split("<|endoftext|>")[:-1])
    eval_docs = set(eval_text.split("<|endoftext|>")[:-1])
    assert train_docs and eval_docs and train_docs <= set(docs) and eval_docs <= set(docs)
    assert not train_docs & eval_docs
    total = sum(len(d) + 1 for d in docs)
    assert 0.2 * total <= total - len(np.load(dom.path / "train.npy")) < 0.2 * total + 40


def test_split_is_deterministic_and_seed_dependent(tok, tmp_path, write_docs):
    path = write_docs(tmp_path / "d.jsonl", [f"doc {i} " * 5 for i in range(50)])
    a = prepare_domain("x", [path], tok, 8, tmp_path / "c1", seed=3)
    b = prepare_domain("x", [path], tok, 8, tmp_path / "c2", seed=3)
    c = prepare_domain("x", [path], tok, 8, tmp_path / "c3", seed=4)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.eval, b.eval)
    assert not np.array_equal(a.train[: len(c.train)], c.train[: len(a.train)])


def test_cache_reused_without_encoding_and_changes_retokenize(tok, tmp_path, monkeypatch, write_docs):
    calls = counting_encoder(monkeypatch)
    path = write_docs(tmp_path / "d.jsonl", [f"doc {i} " * 5 for i in range(50)])
    first = prepare_domain("x", [path], tok, 8, tmp_path / "c")
    assert calls
    n = len(calls)
    second = prepare_domain("x", [path], tok, 4, tmp_path / "c", max_eval_sequences=2)  # views only: no re-encode
    assert len(calls) == n
    assert np.array_equal(second.train.reshape(-1), first.train.reshape(-1)[: second.train.size])
    assert len(second.eval) == 2
    prepare_domain("x", [path], tok, 8, tmp_path / "c", eval_fraction=0.1)  # other split: re-encode
    assert len(calls) > n
    n = len(calls)
    write_docs(path, [f"changed {i} " * 5 for i in range(60)])
    os.utime(path, ns=(1, 1))  # guarantee a different mtime even on coarse-clock filesystems
    third = prepare_domain("x", [path], tok, 8, tmp_path / "c")
    assert len(calls) > n and "changed" in tok.decode(third.train[0].tolist())


def test_eval_files_and_interrupted_entry_is_not_reused(tok, tmp_path, monkeypatch, write_docs):
    train = write_docs(tmp_path / "train.jsonl", ["train text " * 4] * 5)
    evals = write_docs(tmp_path / "eval.jsonl", ["held out " * 4] * 3)
    dom = prepare_domain("x", [train], tok, 8, tmp_path / "c", eval_files=[evals])
    assert "held out" in tok.decode(dom.eval.reshape(-1).tolist())
    assert "held out" not in tok.decode(dom.train.reshape(-1).tolist())
    (dom.path / "meta.json").unlink()  # as if the process died before the entry was complete
    calls = counting_encoder(monkeypatch)
    prepare_domain("x", [train], tok, 8, tmp_path / "c", eval_files=[evals])
    assert calls


def test_pretokenized_npy_and_bin(tok, tmp_path, monkeypatch):
    calls = counting_encoder(monkeypatch)
    stream = np.arange(200) % 256
    np.save(tmp_path / "a.npy", stream[:120].astype(np.int64))
    stream[120:].astype(np.uint16).tofile(tmp_path / "b.bin")
    dom = prepare_domain("tok", [tmp_path / "a.npy", tmp_path / "b.bin"], tok, 10, tmp_path / "c", eval_fraction=0.1)
    assert not calls
    assert dom.train.shape == (18, 10) and dom.eval.shape == (2, 10)
    assert np.array_equal(np.concatenate([dom.train.reshape(-1), dom.eval.reshape(-1)]), stream)


def test_pretokenized_split_after_eos(tok, tmp_path):
    stream = np.full(100, 7, dtype=np.uint16)
    stream[84] = 256  # EOS: the last one before the 10% cut at 90
    np.save(tmp_path / "a.npy", stream)
    dom = prepare_domain("tok", [tmp_path / "a.npy"], tok, 5, tmp_path / "c", eval_fraction=0.1)
    assert dom.train.size == 85 and dom.eval.size == 15


def test_vocabulary_mismatch(tok, tmp_path):
    np.save(tmp_path / "a.npy", np.array([1, 2, 50256] * 10, dtype=np.int64))
    with pytest.raises(OpmixError, match=r"50256.*257.*vocabulary mismatch"):
        prepare_domain("gpt2ish", [tmp_path / "a.npy"], tok, 4, tmp_path / "c")


def test_empty_domain(tok, tmp_path):
    (tmp_path / "blank.txt").write_text("   \n\n")
    with pytest.raises(OpmixError, match="'empty'.*no non-empty documents"):
        prepare_domain("empty", [tmp_path / "blank.txt"], tok, 4, tmp_path / "c")
    np.save(tmp_path / "none.npy", np.zeros(0, dtype=np.uint16))
    with pytest.raises(OpmixError, match="'empty' has no tokens"):
        prepare_domain("empty", [tmp_path / "none.npy"], tok, 4, tmp_path / "c")


def test_too_small_domain_and_eval_split(tok, tmp_path, write_docs):
    path = write_docs(tmp_path / "d.jsonl", ["short", "tiny"])
    with pytest.raises(OpmixError, match=r"'small' has \d+ train tokens.*seq_len=64.*smaller seq_len"):
        prepare_domain("small", [path], tok, 64, tmp_path / "c")
    path = write_docs(tmp_path / "e.jsonl", ["a long enough document " * 4] * 9)
    tiny = write_docs(tmp_path / "tiny.jsonl", ["x"])
    with pytest.raises(OpmixError, match=r"'small' has 2 eval tokens.*seq_len=16.*more eval files"):
        prepare_domain("small", [path], tok, 16, tmp_path / "c", eval_files=[tiny])
    one_doc = write_docs(tmp_path / "one.jsonl", ["a single document " * 10])
    with pytest.raises(OpmixError, match=r"'small' has \d+ eval tokens.*eval_fraction"):
        prepare_domain("small", [one_doc], tok, 16, tmp_path / "c")


def test_documents_too_few_or_too_big_split_the_stream_at_the_fraction(tok, tmp_path, write_docs):
    one_doc = write_docs(tmp_path / "one.jsonl", ["one long document, " * 400])  # a single 7,600-byte file
    d = prepare_domain("one", [one_doc], tok, 32, tmp_path / "c", eval_fraction=0.1)
    total = d.train_tokens + d.eval_tokens
    assert d.train.shape[0] > 0 and 0.05 < d.eval_tokens / total < 0.15
    skewed = write_docs(tmp_path / "skewed.jsonl", ["small doc. " * 20] * 5 + ["huge document. " * 2000])
    d = prepare_domain("skewed", [skewed], tok, 32, tmp_path / "c", eval_fraction=0.05, seed=3)
    assert d.eval_tokens / (d.train_tokens + d.eval_tokens) < 0.1  # never most of the domain


def test_batch_encode_is_fast(tok, tmp_path, write_docs):
    docs = [("def f(x):\n    return x * 2  # ünïcode\n" * 40) for _ in range(1000)]  # ~1.6 MB
    path = write_docs(tmp_path / "big.jsonl", docs)
    import time

    started = time.perf_counter()
    dom = prepare_domain("big", [path], tok, 512, tmp_path / "c")
    assert time.perf_counter() - started < 5.0
    assert dom.train_tokens + dom.eval_tokens > 1_500_000


def test_damaged_entry_is_rebuilt_not_trusted(tmp_path, tok, monkeypatch, write_docs):
    src = write_docs(tmp_path / "d.jsonl", [f"document {i} " * 20 for i in range(30)])
    first = prepare_domain("d", [src], tok, 16, tmp_path / "cache", eval_fraction=0.1)
    train = first.path / "train.npy"
    expected = np.array(first.train)
    train.write_bytes(train.read_bytes()[:-64])  # truncated after the entry was complete
    calls = counting_encoder(monkeypatch)
    again = prepare_domain("d", [src], tok, 16, tmp_path / "cache", eval_fraction=0.1)
    assert calls and np.array_equal(np.array(again.train), expected)


def test_killed_tokenization_leaves_no_entry_that_looks_done(tmp_path, tok, monkeypatch, write_docs):
    src = write_docs(tmp_path / "d.jsonl", [f"document {i} " * 20 for i in range(30)])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill between the train and eval arrays

    monkeypatch.setattr(cache_module, "fault_point", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_domain("d", [src], tok, 16, tmp_path / "cache", eval_fraction=0.1)
    assert not list((tmp_path / "cache").rglob("meta.json"))
    monkeypatch.undo()
    calls = counting_encoder(monkeypatch)
    prepare_domain("d", [src], tok, 16, tmp_path / "cache", eval_fraction=0.1)
    assert calls  # tokenized again
