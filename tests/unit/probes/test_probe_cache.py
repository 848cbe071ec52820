"""The probe cache: keys by content, hits across runs (same proposal, compute saved in the ledger), misses when the
data a probe draws from changes, damaged entries retrained, and off when disabled."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

from opmix.cli import main
from opmix.probes.cache import DEFAULT_FOLDER, ProbeCache, probe_key, tokens_hash


@pytest.fixture
def base_checkpoint(tmp_path):
    checkpoint = tmp_path / "base"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"files": {"trainable.safetensors": {"sha256": "abc"}}}))
    return checkpoint


def test_key_depends_on_base_mixture_data_and_settings_only_where_drawn(base_checkpoint):
    data = {"a": "h1", "b": "h2", "c": "h3"}
    key, source = probe_key(base_checkpoint, {"a": 0.5, "b": 0.5, "c": 0.0}, data, {"steps": 4})
    assert source["data"] == {"a": "h1", "b": "h2"}  # an undrawn domain is not part of the probe
    assert probe_key(base_checkpoint, {"a": 0.5, "b": 0.5, "c": 0.0}, {**data, "c": "changed"}, {"steps": 4})[0] == key
    assert probe_key(base_checkpoint, {"a": 0.5, "b": 0.5}, {**data, "b": "changed"}, {"steps": 4})[0] != key
    assert probe_key(base_checkpoint, {"a": 0.4, "b": 0.6}, data, {"steps": 4})[0] != key
    assert probe_key(base_checkpoint, {"a": 0.5, "b": 0.5}, data, {"steps": 5})[0] != key
    (base_checkpoint / "state.json").write_text(json.dumps({"files": {"trainable.safetensors": {"sha256": "d"}}}))
    assert probe_key(base_checkpoint, {"a": 0.5, "b": 0.5}, data, {"steps": 4})[0] != key


def test_tokens_hash_is_content_and_memoised(tmp_path):
    tokens = np.arange(64, dtype=np.uint16).reshape(8, 8)
    first = tokens_hash(tokens, tmp_path)
    assert (tmp_path / "train.sha256").read_text().strip() == first
    assert tokens_hash(tokens.copy(), None) == first
    changed = tokens.copy()
    changed[3, 3] += 1
    assert tokens_hash(changed, None) != first


def test_a_damaged_entry_is_a_miss(tmp_path, caplog):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    cache = ProbeCache(tmp_path / "cache")
    cache.store("k1", {"x": 1}, adapter, {"flops": 10.0})
    found, entry = cache.lookup("k1")
    assert (found / "adapter_model.safetensors").read_bytes() == b"weights" and entry["cost"]["flops"] == 10.0
    (found / "adapter_model.safetensors").write_bytes(b"weightz")
    assert cache.lookup("k1") is None and "damaged" in caplog.text
    assert cache.lookup("absent") is None


def _run(raw, out) -> dict:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["pretrain", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    ledger = {row["stage"]: row for row in json.loads((out / "ledger.json").read_text())["stages"]}
    return {"ledger": ledger, "proxies": (out / "proxies.csv").read_text(),
            "mixture": json.loads((out / "summary.json").read_text())["mixture"]}


@pytest.mark.slow
def test_second_run_reuses_every_probe_and_a_changed_file_retrains_only_its_probes(tmp_path, tiny_pretrain_base):
    raw = copy.deepcopy(tiny_pretrain_base)
    raw["baseline"] = "none"
    first = _run(raw, tmp_path / "first")
    probes = [s for s in first["ledger"] if s.startswith("probe_")]
    assert len(probes) == 4 and all(first["ledger"][p]["flops"] > 0 for p in probes)
    assert len(list((tmp_path / DEFAULT_FOLDER).iterdir())) == 4

    second = _run(raw, tmp_path / "second")  # same folder, same settings: every probe is a hit
    assert second["proxies"] == first["proxies"] and second["mixture"] == first["mixture"]
    for p in probes:
        assert second["ledger"][p]["flops"] == 0.0
        assert second["ledger"][p]["saved_flops"] == pytest.approx(first["ledger"][p]["flops"])

    off = copy.deepcopy(raw)
    off["method"]["probe_cache"] = {"enabled": False}
    assert all(_run(off, tmp_path / "off")["ledger"][p]["flops"] > 0 for p in probes)  # disabled: trained

    # one domain's data changes: a new prefix, hence new probes (the base weights are part of the key)
    changed = copy.deepcopy(raw)
    source = [p for p in changed["domains"] if p["name"] == "records"][0]
    files = []
    for i, path in enumerate(source["files"]):
        copy_path = tmp_path / f"records_{i}.txt"
        text = open(path, encoding="utf-8").read()
        copy_path.write_text(text[: len(text) // 2], encoding="utf-8")
        files.append(str(copy_path))
    source["files"] = files
    third = _run(changed, tmp_path / "third")
    assert all(third["ledger"][p]["flops"] > 0 for p in probes)
    assert len(list((tmp_path / DEFAULT_FOLDER).iterdir())) == 8
