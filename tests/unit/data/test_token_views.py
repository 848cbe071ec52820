"""Pre-tokenized domains read in place: .npy (with and without header) and Megatron .bin/.idx files, sequence views
that give the rows a concatenate-and-copy would, a cache entry with no token copy, and bounded memory."""

import json
import math
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from opmix.data import cache as cache_module
from opmix.data import token_views
from opmix.data.cache import MIN_PIECE_TOKENS, prepare_domain
from opmix.data.readers import list_files, read_token_arrays
from opmix.data.token_files import TokenStream, open_token_file
from opmix.data.token_views import SequenceView
from opmix.errors import OpmixError

EOS = 256


def documents(seed: int, count: int, low: int = 50, high: int = 400) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.r_[rng.integers(0, 250, size=rng.integers(low, high)), EOS] for _ in range(count)]


def meta(domain) -> dict:
    return json.loads((domain.path / "meta.json").read_text())


# --- the old path, written plainly: concatenate everything, snap cuts to EOS boundaries, copy the two splits --------

def reference_split(stream: np.ndarray, fraction: float, eos: int = EOS):
    n = len(stream)
    ends = np.flatnonzero(stream == eos) + 1
    starts = np.concatenate([[0], ends[ends < n]]) if len(ends) else None
    target = math.ceil(fraction * n)
    blocks = max(1, min(cache_module.MAX_PIECES, target // MIN_PIECE_TOKENS))
    edges = [k * n // blocks for k in range(blocks + 1)]
    pieces = [(e - math.ceil(fraction * (e - s)), e) for s, e in zip(edges[:-1], edges[1:])]
    if starts is not None:
        bounds = np.append(starts, n)

        def snap(p):
            return int(bounds[np.argmin(np.abs(bounds - p))])  # argmin takes the lower one on a tie

        snapped = [(a, b) for a, b in ((snap(a), snap(b)) for a, b in pieces) if b > a]
        held = sum(b - a for a, b in snapped)
        if target / 2 <= held <= 2 * target and held < n:
            pieces = snapped
    held_out = np.zeros(n, dtype=bool)
    for a, b in pieces:
        held_out[a:b] = True
    touched = None
    if starts is not None:
        doc_of = np.searchsorted(starts, np.arange(n), side="right") - 1
        touched = len(np.unique(doc_of[held_out]))
    return stream[~held_out], stream[held_out], [[a, b - a] for a, b in pieces], touched


def rows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_npy_domain_matches_the_concatenate_and_copy_path(tok, tmp_path, dtype):
    stream = np.concatenate(documents(0, 700)).astype(dtype)
    np.save(tmp_path / "docs.npy", stream)
    dom = prepare_domain("docs", [tmp_path / "docs.npy"], tok, 32, tmp_path / "c", eval_fraction=0.1)
    train, evals, pieces, touched = reference_split(stream, 0.1)
    info = meta(dom)
    assert info["eval_pieces"] == pieces and info["eval_documents"] == touched and len(pieces) >= 4
    for start, length in pieces:  # whole documents held out
        assert (start == 0 or stream[start - 1] == EOS) and stream[start + length - 1] == EOS
    assert isinstance(dom.train, SequenceView) and dom.train.dtype == np.uint16 and dom.train.ndim == 2
    assert np.array_equal(np.asarray(dom.train), rows(train, 32))
    assert dom.train.shape == rows(train, 32).shape and dom.train_tokens == rows(train, 32).size
    # eval rows are cut inside each piece: never train tokens, never two pieces joined
    offsets = np.cumsum([0] + [length for _, length in pieces[:-1]])
    expected = np.concatenate([rows(evals[o:o + length], 32) for o, (_, length) in zip(offsets, pieces)])
    assert np.array_equal(np.asarray(dom.eval), expected)
    # no train/eval overlap: every held-out token is outside the train ranges
    train_ranges = info["train_ranges"]
    assert sum(e - s for s, e in train_ranges) + sum(length for _, length in pieces) == len(stream)
    for s, e in train_ranges:
        assert all(e <= ps or s >= ps + pl for ps, pl in pieces)


def test_sequence_view_behaves_like_the_array(tmp_path):
    parts = [np.arange(1000, dtype=np.uint16), np.arange(1000, 1777, dtype=np.uint32)]
    np.save(tmp_path / "a.npy", parts[0])
    np.save(tmp_path / "b.npy", parts[1])
    stream = TokenStream([open_token_file(tmp_path / n) for n in ("a.npy", "b.npy")], np.uint16)
    ranges = [(0, 300), (350, 990), (1010, 1777)]  # rows join ranges and files
    view = SequenceView(stream, ranges, 16)
    flat = np.concatenate([np.concatenate(parts)[a:b] for a, b in ranges]).astype(np.uint16)
    array = rows(flat, 16)
    assert len(view) == len(array) and view.shape == array.shape and view.size == array.size
    index = np.random.default_rng(0).integers(0, len(array), size=200)
    assert np.array_equal(view[index], array[index])
    assert np.array_equal(view[-1], array[-1]) and np.array_equal(view[5], array[5])
    for key in (slice(3, 40), slice(1, None, 3), slice(None, None, -2), slice(-10, None)):
        assert np.array_equal(np.asarray(view[key]), array[key])
        assert np.array_equal(np.asarray(view[key][1::2]), array[key][1::2])
    assert np.array_equal(view[2:9, :4], array[2:9, :4]) and np.array_equal(view[array[:, 0] % 2 == 0],
                                                                            array[array[:, 0] % 2 == 0])
    assert np.array_equal(np.asarray(view[4:30], dtype=np.int64), array[4:30].astype(np.int64))
    flat_view = view.reshape(-1)
    assert len(flat_view) == array.size and np.array_equal(flat_view[100:700], array.reshape(-1)[100:700])
    assert np.array_equal(view[1::2].reshape(-1)[5:90], array[1::2].reshape(-1)[5:90])
    again = pickle.loads(pickle.dumps(view))
    assert len(pickle.dumps(view)) < 10_000 and np.array_equal(again[index], array[index])
    with pytest.raises(IndexError):
        view[len(array)]


def test_probe_tokens_hash_of_a_view_equals_that_of_the_array(tok, tmp_path):
    from opmix.probes.cache import tokens_hash

    np.save(tmp_path / "docs.npy", np.concatenate(documents(1, 300)).astype(np.uint16))
    dom = prepare_domain("docs", [tmp_path / "docs.npy"], tok, 16, tmp_path / "c", eval_fraction=0.1)
    assert tokens_hash(dom.train, None) == tokens_hash(np.asarray(dom.train), None)


def test_headerless_npy_and_glob_domain_of_many_files(tok, tmp_path):
    docs = documents(2, 400)
    parts = [np.concatenate(docs[i:i + 100]) for i in range(0, 400, 100)]
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "part-0.npy", parts[0].astype(np.uint16))
    np.save(tmp_path / "shards" / "part-1.npy", parts[1].astype(np.uint32))
    parts[2].astype(np.uint16).tofile(tmp_path / "shards" / "part-2.npy")  # OLMo style: raw, no header
    parts[3].astype(np.uint16).tofile(tmp_path / "shards" / "part-3.bin")  # nanoGPT style
    pattern = str(tmp_path / "shards" / "part-*")
    assert [p.name for p in list_files(pattern)] == ["part-0.npy", "part-1.npy", "part-2.npy", "part-3.bin"]
    assert [len(a) for a in read_token_arrays(pattern)] == [len(p) for p in parts]
    dom = prepare_domain("many", pattern, tok, 32, tmp_path / "c", eval_fraction=0.1)
    train, evals, pieces, touched = reference_split(np.concatenate(parts), 0.1)
    assert meta(dom)["eval_pieces"] == pieces and meta(dom)["eval_documents"] == touched
    assert np.array_equal(np.asarray(dom.train), rows(train, 32))
    (tmp_path / "odd.npy").write_bytes(b"\x01\x02\x03")
    with pytest.raises(OpmixError, match=r"odd\.npy has 3 bytes.*raw token file.*bin_dtype"):
        prepare_domain("odd", [tmp_path / "odd.npy"], tok, 4, tmp_path / "c")


def test_entry_holds_no_token_copy_and_a_second_prepare_is_a_cache_hit(tok, tmp_path, monkeypatch):
    np.save(tmp_path / "docs.npy", np.concatenate(documents(3, 500)).astype(np.uint16))
    first = prepare_domain("docs", [tmp_path / "docs.npy"], tok, 32, tmp_path / "c", eval_fraction=0.1)
    assert sorted(p.name for p in first.path.iterdir()) == ["meta.json"]
    info = meta(first)
    assert info["train_source"] == info["eval_source"] == "files" and info["bytes"] == {}

    def no_scan(*args, **kwargs):
        raise AssertionError("the files were read again")

    monkeypatch.setattr(cache_module, "scan_stream", no_scan)
    second = prepare_domain("docs", [tmp_path / "docs.npy"], tok, 32, tmp_path / "c", eval_fraction=0.1)
    assert second.path == first.path and np.array_equal(np.asarray(second.train), np.asarray(first.train))
    assert np.array_equal(np.asarray(second.eval), np.asarray(first.eval))


def test_vocabulary_check_reads_in_chunks_and_names_the_file(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(token_views, "SCAN_TOKENS", 1000)
    stream = np.concatenate(documents(4, 100)).astype(np.uint16)
    stream[-5] = 300
    np.save(tmp_path / "bad.npy", stream)
    with pytest.raises(OpmixError, match=r"bad\.npy holds token id 300.*257 ids"):
        prepare_domain("bad", [tmp_path / "bad.npy"], tok, 16, tmp_path / "c")
    np.save(tmp_path / "neg.npy", np.array([1, 2, -3] * 100, dtype=np.int32))
    with pytest.raises(OpmixError, match="negative token ids"):
        prepare_domain("neg", [tmp_path / "neg.npy"], tok, 16, tmp_path / "c")


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_boundary_scan_in_small_chunks_gives_the_same_split(tok, tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(token_views, "SCAN_TOKENS", chunk)
    stream = np.concatenate(documents(5, 300, 5, 80) + documents(6, 3, 3000, 5000)).astype(np.uint16)
    np.save(tmp_path / "s.npy", stream)
    dom = prepare_domain("s", [tmp_path / "s.npy"], tok, 8, tmp_path / f"c{chunk}", eval_fraction=0.2)
    _, _, pieces, touched = reference_split(stream, 0.2)
    assert meta(dom)["eval_pieces"] == pieces and meta(dom)["eval_documents"] == touched


# --- Megatron-LM indexed datasets --------------------------------------------------------------------------------

MEGATRON_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
                  np.uint16: 8}


def write_megatron(prefix, docs: list[list[np.ndarray]], dtype) -> None:
    """PREFIX.bin/.idx as Megatron-LM's IndexedDatasetBuilder writes them: every sequence's tokens back to back;
    the index holds each sequence's size and byte pointer and, per document, the number of its first sequence,
    from 0 and closed by the number of sequences."""
    dtype = np.dtype(dtype)
    sequences = [seq for doc in docs for seq in doc]
    sizes = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize)]).astype(np.int64)
    doc_indices = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    with open(f"{prefix}.bin", "wb") as f:
        for seq in sequences:
            f.write(np.asarray(seq, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_CODES[dtype.type]))
        f.write(struct.pack("<Q", len(sequences)))
        f.write(struct.pack("<Q", len(doc_indices)))
        f.write(sizes.tobytes() + pointers.tobytes() + doc_indices.tobytes())


def megatron_docs(seed: int, count: int) -> list[list[np.ndarray]]:
    """Documents of one to three sentences (sequences); no EOS anywhere: boundaries come from the index."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 250, size=rng.integers(20, 150)) for _ in range(rng.integers(1, 4))]
            for _ in range(count)]


def test_megatron_dataset_dtype_and_document_boundaries_from_the_index(tok, tmp_path):
    docs = megatron_docs(7, 600)
    write_megatron(tmp_path / "corpus_text_document", docs, np.int32)  # int32: not the default bin_dtype
    stream = np.concatenate([s for d in docs for s in d])
    lengths = [sum(len(s) for s in d) for d in docs]
    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    (tmp_path / "folder").mkdir()
    for suffix in ("bin", "idx"):  # a folder holding the pair is one dataset (the .idx is part of the .bin)
        (tmp_path / "folder" / f"c.{suffix}").write_bytes((tmp_path / f"corpus_text_document.{suffix}").read_bytes())
    assert [p.name for p in list_files(tmp_path / "folder")] == ["c.bin"]
    (array,) = read_token_arrays(tmp_path / "corpus_text_document")  # named by its prefix, as Megatron does
    assert array.dtype == np.int32 and np.array_equal(array, stream)
    dom = prepare_domain("meg", [tmp_path / "corpus_text_document.bin"], tok, 32, tmp_path / "c", eval_fraction=0.1)
    info = meta(dom)
    assert len(info["eval_pieces"]) >= 4
    for start, length in info["eval_pieces"]:  # pieces start and end at documents of the index
        assert start in doc_starts and (start + length in doc_starts or start + length == len(stream))
    held = np.zeros(len(stream), dtype=bool)
    for start, length in info["eval_pieces"]:
        held[start:start + length] = True
    assert info["eval_documents"] == len(np.unique(np.searchsorted(doc_starts, np.flatnonzero(held), "right")))
    assert np.array_equal(np.asarray(dom.train), rows(stream[~held].astype(np.uint16), 32))
    # the same .bin without its index is raw uint16 data: another domain entirely
    assert open_token_file(tmp_path / "folder" / "c.bin").kind == "megatron"


def test_megatron_and_npy_files_in_one_domain(tok, tmp_path):
    docs = megatron_docs(8, 200)
    write_megatron(tmp_path / "m", docs, np.uint16)
    np.save(tmp_path / "n.npy", np.concatenate(documents(9, 200)).astype(np.uint32))
    dom = prepare_domain("mixed", [tmp_path / "m.bin", tmp_path / "n.npy"], tok, 16, tmp_path / "c",
                         eval_fraction=0.1)
    expected = np.concatenate([np.concatenate([s for d in docs for s in d]), np.load(tmp_path / "n.npy")])
    assert dom.train_tokens + meta(dom)["eval_stream_tokens"] <= len(expected)
    assert np.array_equal(np.asarray(dom.train.reshape(-1)[:100]), expected[:100].astype(np.uint16))


@pytest.mark.parametrize("damage, message", [
    (lambda idx: idx[:20], r"shorter than its 34-byte header"),
    (lambda idx: idx[:-8], r"bytes where its header .* needs"),
    (lambda idx: b"NOTMEGA\x00\x00" + idx[9:], r"not the magic"),
    (lambda idx: idx[:9] + struct.pack("<Q", 2) + idx[17:], r"version 2"),
    (lambda idx: idx[:17] + bytes([9]) + idx[18:], r"unknown dtype code 9"),
    (lambda idx: idx[:17] + bytes([7]) + idx[18:], r"float32, not integers"),
    (lambda idx: idx[:17] + bytes([4]) + idx[18:], r"sequence 1 starts at byte \d+ of the \.bin, not \d+"),
])
def test_damaged_megatron_index_is_a_clear_error(tok, tmp_path, damage, message):
    write_megatron(tmp_path / "m", megatron_docs(10, 20), np.uint16)
    idx = tmp_path / "m.idx"
    idx.write_bytes(damage(idx.read_bytes()))
    with pytest.raises(OpmixError, match=message) as info:
        prepare_domain("m", [tmp_path / "m.bin"], tok, 8, tmp_path / "c")
    assert "\n" not in str(info.value)


def test_megatron_bin_shorter_than_its_index_is_a_clear_error(tok, tmp_path):
    write_megatron(tmp_path / "m", megatron_docs(11, 20), np.uint16)
    data = tmp_path / "m.bin"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(OpmixError, match=r"sizes add up to \d+ uint16 tokens .*m\.bin has \d+ bytes"):
        prepare_domain("m", [data], tok, 8, tmp_path / "c")


# --- text: batches, determinism ------------------------------------------------------------------------------------

def test_tokenizing_in_many_small_batches_gives_the_tokens_of_one_call(tok, tmp_path, write_docs, monkeypatch):
    from opmix.data import tokenize_parallel

    docs = [f"document {i}: " + "wörds and more words " * (i % 13 + 1) for i in range(300)]
    path = write_docs(tmp_path / "d.jsonl", docs)
    one = prepare_domain("d", [path], tok, 16, tmp_path / "one", eval_fraction=0.1, seed=5)
    monkeypatch.setattr(tokenize_parallel, "BATCH_BYTES", 200)
    calls = []
    real = cache_module.encode_batch
    monkeypatch.setattr(cache_module, "encode_batch", lambda t, texts: calls.append(len(texts)) or real(t, texts))
    many = prepare_domain("d", [path], tok, 16, tmp_path / "many", eval_fraction=0.1, seed=5)
    assert len(calls) > 20
    assert np.array_equal(np.load(one.path / "train.npy"), np.load(many.path / "train.npy"))
    assert np.array_equal(np.load(one.path / "eval.npy"), np.load(many.path / "eval.npy"))
    # and the stream is the documents encoded in one call, in the seeded order, each closed by EOS
    order = np.random.default_rng(5).permutation(len(docs))
    ids = tok.backend_tokenizer.encode_batch_fast([docs[i] for i in order], add_special_tokens=False)
    whole = np.concatenate([np.r_[e.ids, EOS] for e in ids]).astype(np.uint16)
    split = np.concatenate([np.load(one.path / "train.npy"), np.load(one.path / "eval.npy")])
    assert np.array_equal(split, whole)  # the eval split is the tail of whole documents here


# --- memory ----------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
def test_preparing_a_large_mmap_domain_stays_far_below_its_size(tmp_path):
    tokens = 100_000_000  # 200 MB of uint16
    path = tmp_path / "big.npy"
    block = (np.arange(1 << 22) % 250).astype(np.uint16)
    block[::997] = EOS  # documents of ~1000 tokens
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": (tokens,)})
        for start in range(0, tokens, len(block)):
            f.write(block[: min(len(block), tokens - start)].tobytes())
    script = textwrap.dedent(f"""
        import numpy as np
        from opmix.data.cache import prepare_domain
        from opmix.data.sampler import MixtureSampler
        from opmix.data.tokenizer import load_tokenizer
        tok = load_tokenizer("builtin:bytes")
        def peak():  # this process's own (ru_maxrss would carry pytest's over the exec)
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
        before = peak()
        dom = prepare_domain("big", [{str(path)!r}], tok, 512, {str(tmp_path / "c")!r}, max_eval_sequences=64)
        batch, _ = MixtureSampler({{"big": dom.train}}, {{"big": 1.0}}, 64, 0).next_batch()
        assert batch.shape == (64, 512)
        print(peak() - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.split()[-1])
    assert grown < 80e6, f"peak RSS grew by {grown / 1e6:.0f} MB preparing a 200 MB domain"
