"""The eval set represents the domain: spread over the whole held-out split, interleaved held-out pieces for a
single-document or pre-tokenized stream, and a warning when the split is one document or one slice."""

import json
import re

import numpy as np

from opmix.data.cache import MIN_PIECE_TOKENS, prepare_domain, spread_indices

EOS = 256


def numbered_text(lines: int) -> str:
    """Text whose every 16-byte line says where it is, so a slice of it shows where it came from."""
    return "".join(f"line {i:09d}\n" for i in range(lines))


def meta(domain) -> dict:
    return json.loads((domain.path / "meta.json").read_text())


def test_spread_indices():
    assert spread_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert spread_indices(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert spread_indices(7, 1).tolist() == [0]
    for available in range(2, 60):
        for count in range(2, available):
            idx = spread_indices(available, count)
            assert len(idx) == count and idx[0] == 0 and idx[-1] == available - 1
            assert np.all(np.diff(idx) >= 1)


def test_capped_eval_set_spreads_over_the_whole_eval_split(tok, tmp_path, write_docs):
    docs = [f"d{i:03d} " * (20 + i % 7) for i in range(400)]  # every word names its document
    path = write_docs(tmp_path / "d.jsonl", docs)
    full = prepare_domain("web", [path], tok, 16, tmp_path / "c", eval_fraction=0.2)
    capped = prepare_domain("web", [path], tok, 16, tmp_path / "c", eval_fraction=0.2, max_eval_sequences=8)
    available = np.load(full.path / "eval.npy")
    rows = available[: len(available) // 16 * 16].reshape(-1, 16)
    assert len(full.eval) == len(rows) > 100
    assert capped.eval.shape == (8, 16) and capped.eval_tokens == 8 * 16
    assert np.array_equal(capped.eval[0], rows[0]) and np.array_equal(capped.eval[-1], rows[-1])
    assert np.array_equal(capped.eval, rows[spread_indices(len(rows), 8)])
    # the eight sequences come from many documents, not from the first one or two
    seen = {re.search(r"d(\d{3})", tok.decode(row.tolist())).group(1) for row in capped.eval}
    assert len(seen) >= 6
    assert capped.warnings == [] and full.warnings == []


def test_single_document_eval_comes_from_several_places_and_train_plus_eval_is_everything(tok, tmp_path):
    text = numbered_text(8000)  # 128,000 bytes in one document
    path = tmp_path / "book.txt"
    path.write_text(text)
    dom = prepare_domain("book", [path], tok, 64, tmp_path / "c", eval_fraction=0.1, max_eval_sequences=16)
    info = meta(dom)
    pieces = info["eval_pieces"]
    n = len(text) + 1  # and the EOS
    assert len(pieces) >= 4 and pieces[0][0] < n / 4 and pieces[-1][0] + pieces[-1][1] == n
    assert all(length >= MIN_PIECE_TOKENS for _, length in pieces)
    # train + eval = every token of the document, once: the pieces where the meta says, the rest in order
    stream = np.append(np.frombuffer(text.encode(), np.uint8).astype(np.uint16), EOS)
    held_out = np.zeros(n, dtype=bool)
    for start, length in pieces:
        held_out[start : start + length] = True
    assert np.array_equal(np.load(dom.path / "eval.npy"), stream[held_out])
    assert np.array_equal(np.load(dom.path / "train.npy"), stream[~held_out])
    assert abs(held_out.mean() - 0.1) < 0.01
    # each eval sequence is one contiguous slice of the document (none joins two pieces), and together they come
    # from its beginning, middle and end
    positions = []
    for row in dom.eval:
        chunk = tok.decode(row.tolist())
        assert chunk in text
        positions.append(text.index(chunk) / n)
    assert min(positions) < 0.25 and max(positions) > 0.85 and any(0.4 < x < 0.6 for x in positions)
    assert len(dom.warnings) == 1 and "single document" in dom.warnings[0] and "'book'" in dom.warnings[0]


def test_one_document_eval_split_warns_and_many_documents_do_not(tok, tmp_path, write_docs):
    train = write_docs(tmp_path / "train.jsonl", [f"train text {i} " * 8 for i in range(20)])
    one = write_docs(tmp_path / "one.jsonl", ["held out text " * 20])
    many = write_docs(tmp_path / "many.jsonl", [f"held out {i} " * 10 for i in range(6)])
    lonely = prepare_domain("lonely", [train], tok, 16, tmp_path / "c", eval_files=[one])
    assert meta(lonely)["eval_documents"] == 1
    assert len(lonely.warnings) == 1 and "'lonely'" in lonely.warnings[0] and "eval_files" in lonely.warnings[0]
    fine = prepare_domain("fine", [train], tok, 16, tmp_path / "c", eval_files=[many])
    assert meta(fine)["eval_documents"] == 6 and fine.warnings == []
    # the tail of a shuffled multi-document stream counts its whole documents
    split = prepare_domain("split", [train], tok, 16, tmp_path / "c", eval_fraction=0.2)
    assert meta(split)["eval_documents"] >= 2 and split.warnings == []


def test_pretokenized_stream_without_separators(tok, tmp_path):
    small = (np.arange(3000) % 200).astype(np.uint16)
    np.save(tmp_path / "small.npy", small)
    dom = prepare_domain("small", [tmp_path / "small.npy"], tok, 16, tmp_path / "c", eval_fraction=0.1)
    assert meta(dom)["eval_pieces"] == [[2700, 300]] and meta(dom)["eval_documents"] is None
    assert len(dom.warnings) == 1 and "contiguous slice" in dom.warnings[0]
    big = (np.arange(200_000) % 200).astype(np.uint16)
    np.save(tmp_path / "big.npy", big)
    dom = prepare_domain("big", [tmp_path / "big.npy"], tok, 16, tmp_path / "c", eval_fraction=0.1)
    pieces = meta(dom)["eval_pieces"]
    assert len(pieces) == 9 and pieces[0][0] < 30_000 and dom.warnings == []
    assert len(dom.train.reshape(-1)) + sum(p[1] for p in pieces) > 199_000


def test_pretokenized_stream_with_separators_holds_out_whole_documents(tok, tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.r_[rng.integers(0, 200, size=rng.integers(50, 400)), EOS] for _ in range(600)]
    stream = np.concatenate(docs).astype(np.uint16)
    np.save(tmp_path / "docs.npy", stream)
    dom = prepare_domain("docs", [tmp_path / "docs.npy"], tok, 32, tmp_path / "c", eval_fraction=0.1)
    info = meta(dom)
    assert len(info["eval_pieces"]) >= 4
    for start, length in info["eval_pieces"]:
        assert start == 0 or stream[start - 1] == EOS  # a piece starts a document ...
        assert stream[start + length - 1] == EOS  # ... and ends one
    evals = np.concatenate([stream[start:start + length] for start, length in info["eval_pieces"]])
    assert not (dom.path / "eval.npy").exists()  # read in place: the entry holds no copy of the tokens
    assert info["eval_documents"] == int(np.sum(evals == EOS)) and 0.05 < len(evals) / len(stream) < 0.2
    assert dom.warnings == []


def test_pieces_shorter_than_a_sequence_are_cut_across(tok, tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(numbered_text(3000))  # 48,000 tokens: 0.1 of it is two pieces of about 2,400
    dom = prepare_domain("book", [path], tok, 4096, tmp_path / "c", eval_fraction=0.1)
    assert len(meta(dom)["eval_pieces"]) == 2 and all(p[1] < 4096 for p in meta(dom)["eval_pieces"])
    assert dom.eval.shape == (1, 4096)


def test_same_inputs_same_eval_set(tok, tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(numbered_text(6000))
    a = prepare_domain("book", [path], tok, 32, tmp_path / "c1", eval_fraction=0.1, max_eval_sequences=20)
    b = prepare_domain("book", [path], tok, 32, tmp_path / "c2", eval_fraction=0.1, max_eval_sequences=20)
    assert np.array_equal(a.eval, b.eval) and meta(a)["eval_pieces"] == meta(b)["eval_pieces"]
    assert np.array_equal(a.train, b.train)


def test_workspace_collects_eval_warnings_as_notes(tmp_path, caplog, write_docs):
    from opmix.config.base import DataConfig, DomainConfig, ModelConfig, TrainConfig
    from opmix.run.rundir import RunDir
    from opmix.workspace import open_workspace

    book = tmp_path / "book.txt"
    book.write_text(numbered_text(400))
    many = write_docs(tmp_path / "many.jsonl", [f"document {i} " * 12 for i in range(40)])
    domains = [DomainConfig(name="book", files=[book]), DomainConfig(name="many", files=[many])]
    with caplog.at_level("WARNING", logger="opmix.workspace"):
        ws = open_workspace(RunDir(tmp_path / "run"), ModelConfig(builtin="llama-1m"), "builtin:bytes", domains,
                            DataConfig(seq_len=16, eval_fraction=0.1), TrainConfig(), seed=0)
    assert len(ws.notes) == 1 and "'book'" in ws.notes[0] and "single document" in ws.notes[0]
    assert ws.notes[0] in caplog.text
