"""The bad-input matrix (with test_bad_input.py): each bad input is caught before training, with one line naming the
problem and the fix, exit code 2, and no run directory left behind; the exceptions say why they differ."""

from __future__ import annotations

import errno
import json
import re

import numpy as np
import pytest
import torch
import yaml

from opmix.cli import main


def _tiny_llama_dir(folder, vocab_size=300, weights="safetensors"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    if weights == "safetensors":
        LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    else:  # a pickle checkpoint only: its bytes are never read, so any content shows the refusal
        config.save_pretrained(folder)
        (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    return folder


def _first_domain(raw, tmp, name, content):
    path = tmp / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    raw["domains"][0]["files"] = [str(path)]


def _not_utf8(raw, tmp):
    _first_domain(raw, tmp, "latin1.txt", "caf\xe9 ".encode("latin-1") * 400)


def _empty_folder(raw, tmp):
    (tmp / "nothing").mkdir()
    raw["domains"][0]["files"] = [str(tmp / "nothing")]


def _smaller_than_a_sequence(raw, tmp):
    _first_domain(raw, tmp, "short.txt", "tiny")


def _eval_split_too_small(raw, tmp):
    (tmp / "eval.txt").write_text("tiny")
    raw["domains"][0]["eval_files"] = [str(tmp / "eval.txt")]


def _duplicate_names(raw, tmp):
    raw["domains"][1]["name"] = raw["domains"][0]["name"]


def _domain_named_old(raw, tmp):
    raw["domains"][0]["name"] = "old"


def _wrong_text_field(raw, tmp):
    _first_domain(raw, tmp, "docs.jsonl", "\n".join(json.dumps({"content": "x" * 100}) for _ in range(50)))


def _text_not_a_string(raw, tmp):
    _first_domain(raw, tmp, "docs.jsonl", json.dumps({"text": 42}) + "\n")


def _nan_weight(raw, tmp):
    raw["method"]["initial_mixture"] = {d["name"]: float("nan") for d in raw["domains"]}


def _misspelled_key(raw, tmp):
    raw["train"]["stpes"] = 10


def _misspelled_section(raw, tmp):
    raw["methd"] = {}


def _wrong_type(raw, tmp):
    raw["train"]["steps"] = "many"


def _token_ids_past_the_vocabulary(raw, tmp):
    np.save(tmp / "ids.npy", np.arange(4000, dtype=np.uint16) % 300)
    raw["domains"][0]["files"] = [str(tmp / "ids.npy")]


def _tokenizer_larger_than_the_model(raw, tmp):
    raw["model"] = {"path": str(_tiny_llama_dir(tmp / "model", vocab_size=100))}


def _pickle_weights_only(raw, tmp):
    raw["model"] = {"path": str(_tiny_llama_dir(tmp / "model", weights="bin"))}


def _remote_code(raw, tmp):
    folder = tmp / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_custom_lm", "auto_map": {"AutoConfig": "modeling.MyConfig",
                                                   "AutoModelForCausalLM": "modeling.MyModel"}}))
    (folder / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    raw["model"] = {"path": str(folder)}


def _model_path_missing(raw, tmp):
    raw["model"] = {"path": str(tmp / "no-model")}


def _tokenizer_missing(raw, tmp):
    raw["tokenizer"] = str(tmp / "no-tokenizer")


def _infeasible_caps(raw, tmp):
    raw["method"]["proposer"] = {"repetition_factor": 1e-6}


def _too_few_proxies(raw, tmp):
    raw["method"]["n_proxies"] = 5  # laws over old + 3 domains have 5 parameters


def _probes_longer_than_the_budget(raw, tmp):
    raw["method"]["probe_fraction"] = 1.5


def _prefix_is_the_whole_budget(raw, tmp):
    raw["method"]["prefix_fraction"] = 0.99


def _mixed_token_and_text_files(raw, tmp):
    np.save(tmp / "ids.npy", np.arange(4000, dtype=np.uint16) % 200)
    raw["domains"][0]["files"] = [str(tmp / "ids.npy"), *raw["domains"][1]["files"]]


def _odd_sized_bin(raw, tmp):
    _first_domain(raw, tmp, "ids.bin", b"\x01\x00" * 2000 + b"\x01")


CASES = {
    "file not UTF-8": (_not_utf8, r"latin1\.txt is not UTF-8"),
    "folder with no files": (_empty_folder, "holds no files"),
    "domain smaller than one sequence": (_smaller_than_a_sequence,
                                         "at most 6 tokens, fewer than one train and one eval sequence of seq_len=32"),
    "eval split smaller than one sequence": (_eval_split_too_small, "eval tokens, fewer than one sequence"),
    "duplicate domain names": (_duplicate_names, "duplicate domain name"),
    "domain named old": (_domain_named_old, "named 'old'"),
    "wrong text field": (_wrong_text_field, r"docs\.jsonl line 1 has no text field 'text'"),
    "text field not a string": (_text_not_a_string, "is int, not a string"),
    "NaN weights": (_nan_weight, "weight of .* is nan"),
    "misspelled key": (_misspelled_key, "unknown config key 'train.stpes'.*did you mean 'train.steps'"),
    "misspelled section": (_misspelled_section, "unknown config key 'methd'.*did you mean 'method'"),
    "wrong value type": (_wrong_type, "config train.steps: .*integer"),
    "token ids past the vocabulary": (_token_ids_past_the_vocabulary, "vocabulary mismatch"),
    "tokenizer larger than the model": (_tokenizer_larger_than_the_model, "257 tokens but .* 100 rows"),
    "pickle weights only": (_pickle_weights_only, r"no \.safetensors weights \(only \['pytorch_model\.bin'\]\)"),
    "remote code without the flag": (_remote_code, "needs its own Python code.*--trust-remote-code"),
    "model path missing": (_model_path_missing, "is not a directory"),
    "tokenizer missing": (_tokenizer_missing, "neither 'builtin:bytes' nor an existing folder"),
    "infeasible repetition caps": (_infeasible_caps, "caps sum to .* < 1"),
    "fewer proxies than law parameters": (_too_few_proxies, "n_proxies=5 cannot overdetermine the laws"),
    "probes longer than the budget": (_probes_longer_than_the_budget, "method.probe_fraction"),
    "prefix is the whole budget": (_prefix_is_the_whole_budget, "prefix steps of 20"),
    "token and text files mixed": (_mixed_token_and_text_files, "mixes token arrays"),
    ".bin of odd size": (_odd_sized_bin, "not a multiple of uint16"),
}


def _run(raw, tmp, *extra):
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return main(["pretrain", "--config", str(config), "--out", str(tmp / "run"), *extra])


def _error_line(capsys) -> str:
    """The error is one line, the last; before it only the run's own progress lines (no traceback, no second
    error, no library noise such as warnings)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and not any("Traceback" in line or "Warning" in line for line in lines), lines
    assert sum(line.startswith("opmix: error: ") for line in lines) == 1, lines
    err = lines[-1]
    assert err.startswith("opmix: error: ") and "; fix: " in err, err
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case, tmp_path, tiny_pretrain_raw, capsys):
    mutate, pattern = CASES[case]
    mutate(tiny_pretrain_raw, tmp_path)
    capsys.readouterr()  # what building the case printed
    code = _run(tiny_pretrain_raw, tmp_path)
    err = _error_line(capsys)
    assert code == 2
    assert re.search(pattern, err), err
    assert not (tmp_path / "run").exists()  # nothing finished: no partial run left behind


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("seed: 0\nmodel: [unclosed\n")
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert re.search(r"not valid YAML at line \d", _error_line(capsys))


@pytest.mark.parametrize("where", ["config", "cache", "scratch"])
def test_out_of_disk_space(where, tmp_path, tiny_pretrain_raw, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "config":  # the first file a run writes
        monkeypatch.setattr("opmix.run.atomic._write_all", full)
    elif where == "cache":  # the token cache, streamed to disk
        monkeypatch.setattr("opmix.data.tokenize_parallel.SplitWriter.write", full)
    else:  # the scratch file the encoded documents go to before their shuffled write
        monkeypatch.setattr("opmix.data.tokenize_parallel._to_tokens", full)
    assert _run(tiny_pretrain_raw, tmp_path) == 2
    assert re.search(r"out of disk space writing .*; fix: free disk space on ", _error_line(capsys))
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_pretrain_raw, capsys):
    """An absurd learning rate blows up on the second update; the checkpoint of the first is kept (the run
    directory is not removed) and the message names it."""
    tiny_pretrain_raw["train"].update(lr=1e30, checkpoint_every=1)
    assert _run(tiny_pretrain_raw, tmp_path) == 2
    err = _error_line(capsys)
    assert re.search(r"became (nan|inf) at step 1 of prefix; .*last good checkpoint \(step 1\) is kept", err), err
    assert "lower train.lr" in err
    state = json.loads((tmp_path / "run" / "prefix" / "checkpoint" / "state.json").read_text())
    assert state["loop"]["step"] == 1
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "run" / "prefix" / "checkpoint" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values())  # no non-finite value reached the weights


def test_resume_with_another_config_is_refused_and_keeps_the_run(tmp_path, tiny_pretrain_raw, capsys):
    from opmix.config import PretrainConfig, load_config

    run = tmp_path / "run"
    run.mkdir()
    started = load_config(None, PretrainConfig, ["seed=1"], raw=dict(tiny_pretrain_raw)).model_dump(mode="json")
    (run / "config.yaml").write_text(yaml.safe_dump(started))
    assert _run(tiny_pretrain_raw, tmp_path) == 2
    assert "was started with a different config: seed is 1 there but 0 now" in _error_line(capsys)
    assert (run / "config.yaml").is_file()  # an existing run is never removed


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is valid with a CUDA device")
def test_bf16_without_cuda(tmp_path, tiny_pretrain_raw, capsys):
    tiny_pretrain_raw["train"]["precision"] = "bf16"
    assert _run(tiny_pretrain_raw, tmp_path) == 2
    assert "needs a CUDA device" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


# Inputs the checks before tokenization catch (opmix.workspace.check_inputs): files, kinds, the model directory,
# seq_len against the model's positions, the tokenizer against its vocabulary, and domains too small by their file
# sizes. Each answers in seconds, before any domain is tokenized, with the fix named.


def _tiny_gpt2_dir(folder, n_positions=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=300, n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=256, eos_token_id=256)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _seq_len_past_learned_positions(raw, tmp):  # GPT-2's position table: an IndexError at the first step
    raw["model"] = {"path": str(_tiny_gpt2_dir(tmp / "gpt2", n_positions=16))}


def _seq_len_past_rotary_positions(raw, tmp):
    raw["model"] = {"path": str(_tiny_llama_dir(tmp / "model"))}  # max_position_embeddings=64
    raw["data"]["seq_len"] = 128


def _no_weight_file(raw, tmp):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2).save_pretrained(tmp / "model")
    raw["model"] = {"path": str(tmp / "model")}


def _truncated_weights(raw, tmp):  # an interrupted copy
    folder = _tiny_llama_dir(tmp / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    raw["model"] = {"path": str(folder)}


def _bf16_without_cuda(raw, tmp):
    if torch.cuda.is_available():
        pytest.skip("bf16 is valid with a CUDA device")
    raw["train"]["precision"] = "bf16"


def _glob_matching_nothing(raw, tmp):
    raw["domains"][0]["files"] = [str(tmp / "data" / "*.txt")]


def _not_gzip_data(raw, tmp):
    _first_domain(raw, tmp, "docs.jsonl.gz", b"plain bytes, not gzip " * 100)


def _gzip_under_a_plain_name(raw, tmp):
    import gzip

    _first_domain(raw, tmp, "docs.txt", gzip.compress(b"some text " * 500))


def _zst_without_a_zstd_module(raw, tmp):
    _first_domain(raw, tmp, "docs.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"\x00" * 64)


def _archive(raw, tmp):
    _first_domain(raw, tmp, "docs.tar.gz", b"\x1f\x8b" + b"\x00" * 64)


def _small_last_domain(raw, tmp):  # the big domains before it are not tokenized first
    path = tmp / "short.txt"
    path.write_text("tiny")
    raw["domains"][-1]["files"] = [str(path)]


def _eval_split_too_small_by_size(raw, tmp):  # <= 102 tokens: a 10% eval split cannot hold a 32-token sequence
    _first_domain(raw, tmp, "small.txt", "word " * 20)


def _not_utf8_in_the_last_domain(raw, tmp):
    path = tmp / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 400)
    raw["domains"][-1]["files"] = [str(path)]


CHEAP_CASES = {  # name: (mutate, problem pattern, fix pattern)
    "seq_len past GPT-2's n_positions": (
        _seq_len_past_learned_positions, r"data\.seq_len=32 is longer than the 16 positions .*n_positions",
        r"set data\.seq_len to 16 or less"),
    "seq_len past Llama's max_position_embeddings": (
        _seq_len_past_rotary_positions, r"data\.seq_len=128 is longer than the 64 positions .*max_position_embeddings",
        r"set data\.seq_len to 64 or less"),
    "tokenizer larger than the model": (
        _tokenizer_larger_than_the_model, "257 tokens but .* 100 rows", "use the tokenizer the model was trained with"),
    "no weight file": (
        _no_weight_file, r"no weight file \(model\.safetensors / pytorch_model\.bin\) in .*model",
        r"weights included \(model\.safetensors\)"),
    "truncated weights": (
        _truncated_weights, r"weight file .*model\.safetensors is truncated or damaged", "copy or save the model again"),
    "bf16 without CUDA": (_bf16_without_cuda, "train.precision=bf16 needs a CUDA device", "use precision: auto"),
    "glob matching nothing": (
        _glob_matching_nothing, r"config domains\.0\.files: the pattern .*data/\*\.txt matches no file",
        "check the pattern"),
    ".gz that is not gzip": (
        _not_gzip_data, r"cannot decompress .*docs\.jsonl\.gz as gzip", r"gunzip -k .*docs\.jsonl\.gz"),
    "gzip data named .txt": (
        _gzip_under_a_plain_name, r"docs\.txt holds gzip-compressed data but its name does not end in \.gz",
        r"rename it to docs\.txt\.gz"),
    ".zst without a zstd module": (
        _zst_without_a_zstd_module, r"docs\.jsonl\.zst is Zstandard-compressed \(\.zst\) and the zstandard module",
        r"pip install zstandard, or decompress it \(zstd -d "),
    "archive": (_archive, r"docs\.tar\.gz is an archive \(\.tar\.gz\)", r"extract it \(tar -xzf "),
    "small last domain": (
        _small_last_domain, "has at most 6 tokens, fewer than one train and one eval sequence of seq_len=32",
        "add more data to the domain, or use a smaller data.seq_len"),
    "eval split too small by file size": (
        _eval_split_too_small_by_size, r"held-out eval split \(data\.eval_fraction=0\.1\) has at most 22, fewer than",
        "raise data.eval_fraction, give the domain eval_files"),
    "not UTF-8 in the last domain": (
        _not_utf8_in_the_last_domain, r"latin1\.txt is not UTF-8 text \(bad byte at offset 3\)", "convert it to UTF-8"),
}


@pytest.mark.parametrize("case", list(CHEAP_CASES))
def test_cheap_checks_answer_before_tokenizing(case, tmp_path, tiny_pretrain_raw, capsys, monkeypatch):
    import time

    mutate, problem, fix = CHEAP_CASES[case]
    mutate(tiny_pretrain_raw, tmp_path)
    capsys.readouterr()
    if case == ".zst without a zstd module":
        monkeypatch.setattr("opmix.data.readers._zstd_open", lambda: None)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a domain was tokenized before the bad input was reported")

    monkeypatch.setattr("opmix.data.cache.prepare_domain", no_tokenizing)  # what load_domains calls
    started = time.perf_counter()
    code = _run(tiny_pretrain_raw, tmp_path)
    elapsed = time.perf_counter() - started
    err = _error_line(capsys)
    assert code == 2
    problem_part, fix_part = err.split("; fix: ", 1)
    assert re.search(problem, problem_part), err
    assert re.search(fix, fix_part), err
    assert elapsed < 20, f"{elapsed:.1f}s"  # a slow shared machine; seconds in practice
    assert not (tmp_path / "run").exists()
