"""`opmix export`: a finished run's mixture in every trainer format, read back the way each trainer reads it (the
Hugging Face snippet is run on tiny local datasets, the Megatron snippet by bash), and the bad inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from opmix.errors import OpmixError
from opmix.export import FORMATS, export_mixture, parse_paths

# awkward weights (a Dirichlet draw): their floats do not sum to exactly 1, so the export has to make them
MIXTURE = {"code": 0.41290338477081716, "prose": 0.29571640287734813, "notes": 0.1913802015371829,
           "extra": 0.10000001081465178, "empty": 0.0}
ERM = {"code": 0.2, "prose": 0.2, "notes": 0.2, "extra": 0.2, "empty": 0.2}
HF_MIXTURE = {"code": 0.5, "prose": 0.3, "notes": 0.2, "extra": 0.0, "empty": 0.0}
PREFIXES = {d: f"/megatron/{d}_text_document" for d in MIXTURE}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _make_run(root: Path, mixture: dict, *, continual: bool = False, summary: bool = True) -> Path:
    """A finished run directory as the recipes leave it (summary.json + config.yaml), over real local data: JSONL
    with the default text field, JSONL with another text field, a folder of plain-text documents."""
    data = root / "data"
    code = _write_jsonl(data / "code.jsonl", [{"text": f"code {i}", "id": i} for i in range(300)])
    prose = _write_jsonl(data / "prose.jsonl", [{"body": f"prose {i}", "meta": "x"} for i in range(200)])
    notes = data / "notes"
    notes.mkdir()
    for i in range(5):
        (notes / f"n{i}.txt").write_text(f"notes {i}\nsecond line of the same document\n", encoding="utf-8")
    extra = _write_jsonl(data / "extra.jsonl", [{"text": f"extra {i}"} for i in range(50)])
    empty = _write_jsonl(data / "empty.jsonl", [{"text": f"empty {i}"} for i in range(10)])
    domains = [
        {"name": "code", "files": [str(code)], "eval_files": [], "text_field": "text"},
        {"name": "prose", "files": [str(prose)], "eval_files": [], "text_field": "body"},
        {"name": "notes", "files": [str(notes)], "eval_files": [], "text_field": "text"},
        {"name": "extra", "files": [str(extra)], "eval_files": [], "text_field": "text"},
        {"name": "empty", "files": [str(empty)], "eval_files": [], "text_field": "text"},
    ]
    run = root / "run"
    run.mkdir()
    config = {"seed": 3, "model": {"builtin": "llama-tiny"}, "domains": domains}
    if continual:
        config["run"] = "replay"
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if continual:
        names = list(mixture)
        stage2 = {names[0]: 0.1, names[1]: 0.9}
        content = {"method": "replay", "domains": names, "mixture": mixture, "stages": [
            {"stage": 1, "domain": names[0], "mixture": {names[0]: 1.0}, "components": None},
            {"stage": 2, "domain": names[1], "mixture": stage2, "components": {"old": 0.1, names[1]: 0.9}},
            {"stage": 3, "domain": names[-1], "mixture": mixture, "components": {"old": 0.7, names[-1]: 0.3}},
        ]}
    else:
        content = {"mixture": mixture, "components": {"old": 0.4, **{d: 0.6 / len(mixture) for d in mixture}},
                   "baselines": {"erm": {"name": "erm", "mixture": ERM}}}
    if summary:
        (run / "summary.json").write_text(json.dumps(content), encoding="utf-8")
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return _make_run(tmp_path, MIXTURE)


def _normalised(mixture: dict) -> dict:
    total = sum(mixture.values())
    return {d: w / total for d, w in mixture.items()}


def _assert_weights(weights: dict, mixture: dict, *, zeros_kept: bool) -> None:
    expected = _normalised(mixture)
    if not zeros_kept:
        expected = {d: w for d, w in expected.items() if w > 0}
    assert list(weights) == list(expected)  # the config's domain order
    assert weights == pytest.approx(expected, rel=1e-12, abs=0)
    assert sum(weights.values()) == 1.0  # exactly, read back and summed in the order written
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-15)


# -- each format, read back ----------------------------------------------------------------------------------------


def read_json(text: str) -> dict:
    return json.loads(text)["domains"]


def read_olmix(text: str) -> dict:
    config = yaml.safe_load(text)
    assert [s["name"] for s in config["data"]["sources"]] == list(config["mix"])
    return {d: entry["weight"] for d, entry in config["mix"].items()}


@dataclass
class _SourceMixtureConfig:  # the fields of OLMo-core's SourceMixtureConfig
    source_name: str
    target_ratio: float
    paths: list
    max_repetition_ratio: float = 1.0
    max_source_fraction: float = 1.0


@dataclass
class _SourceMixtureList:
    sources: list = field(default_factory=list)


def run_olmo_core(text: str, monkeypatch) -> list[_SourceMixtureConfig]:
    """Execute the snippet against stand-ins with OLMo-core's field names (keyword arguments must match them)."""
    module = types.ModuleType("olmo_core.data.source_mixture")
    module.SourceMixtureConfig, module.SourceMixtureList = _SourceMixtureConfig, _SourceMixtureList
    for name in ("olmo_core", "olmo_core.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "olmo_core.data.source_mixture", module)
    namespace: dict = {}
    exec(compile(text, "<olmo-core export>", "exec"), namespace)
    sources = namespace["source_list"].sources
    assert all(isinstance(s, _SourceMixtureConfig) and s.paths and s.max_repetition_ratio >= 1 for s in sources)
    return sources


def run_megatron(text: str, cwd: Path) -> tuple[list[str], list[str]]:
    """Source the snippet in bash: (the --data-path arguments, the tokens of the blend file it wrote)."""
    script = cwd / "blend.sh"
    script.write_text(text, encoding="utf-8")
    out = subprocess.run(["bash", "-c", 'source ./blend.sh && printf "%s\\n" "${DATA_ARGS[@]}"'], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # Megatron-LM reads --data-args-path as f.read().split()
    return out, (cwd / "megatron_blend.txt").read_text(encoding="utf-8").split()


def megatron_weights(tokens: list[str]) -> dict[str, float]:
    assert len(tokens) % 2 == 0
    return {tokens[i + 1]: float(tokens[i]) for i in range(0, len(tokens), 2)}


@pytest.mark.parametrize("fmt", ["json", "olmix"])
def test_yaml_and_json_formats_read_back_to_the_mixture(run_dir, fmt):
    text = export_mixture(run_dir, fmt)
    weights = read_json(text) if fmt == "json" else read_olmix(text)
    _assert_weights(weights, MIXTURE, zeros_kept=True)  # both take a weight of 0


def test_json_carries_source_recipe_components_and_paths(run_dir):
    out = json.loads(export_mixture(run_dir, "json", paths={"code": "/elsewhere/code.jsonl"}))
    assert out["source"] == str(run_dir.resolve()) and out["recipe"] == "pretrain" and out["mixture"] == "opmix"
    assert out["components"]["old"] == 0.4 and "stage" not in out
    assert out["paths"]["code"] == ["/elsewhere/code.jsonl"]
    assert out["paths"]["prose"] == [str(run_dir.parent / "data" / "prose.jsonl")]  # default: the config's files


def test_olmix_yaml_has_the_launch_config_layout(run_dir):
    text = export_mixture(run_dir, "olmix", paths={"code": "s3://bucket/code/*.npy"})
    config = yaml.safe_load(text)
    assert set(config) == {"data", "mix"}
    sources = {s["name"]: s["paths"] for s in config["data"]["sources"]}
    assert sources["code"] == ["s3://bucket/code/*.npy"]
    assert sources["notes"] == [str(run_dir.parent / "data" / "notes")]
    assert all(entry["repetition_factor"] == 1.0 for entry in config["mix"].values())
    assert config["mix"]["empty"]["weight"] == 0.0
    assert text.startswith("# Olmix mixture exported by opmix")


def test_olmo_core_snippet_builds_the_source_list(run_dir, monkeypatch):
    text = export_mixture(run_dir, "olmo-core", paths={"code": "/tok/code/*.npy"})
    sources = run_olmo_core(text, monkeypatch)
    _assert_weights({s.source_name: s.target_ratio for s in sources}, MIXTURE, zeros_kept=False)
    assert sources[0].paths == ["/tok/code/*.npy"]
    assert "left out, weight 0" in text and "empty" in text.split("left out, weight 0")[1].splitlines()[0]


def test_megatron_data_path_and_blend_file_agree(run_dir, tmp_path):
    text = export_mixture(run_dir, "megatron", paths=PREFIXES)
    args, blend = run_megatron(text, tmp_path)
    assert args[0] == "--data-path" and args[1:] == blend
    weights = megatron_weights(blend)
    _assert_weights({d: weights[PREFIXES[d]] for d in MIXTURE if MIXTURE[d] > 0}, MIXTURE, zeros_kept=False)
    assert PREFIXES["empty"] not in weights  # a dataset with no samples is left out
    assert "--data-args-path megatron_blend.txt" in text


def test_megatron_finds_indexed_datasets_in_the_config_and_splits_a_domain_by_size(tmp_path):
    run = _make_run(tmp_path, {"code": 0.25, "prose": 0.75})
    data = tmp_path / "indexed"
    data.mkdir()
    for name, size in [("code_a", 100), ("code_b", 300), ("prose", 10)]:
        (data / f"{name}.bin").write_bytes(b"\0" * size)
        (data / f"{name}.idx").write_bytes(b"\0")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["domains"][0]["files"] = [str(data / "code_a.bin"), str(data / "code_b.bin")]
    config["domains"][1]["files"] = [str(data / "prose.bin")]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _, blend = run_megatron(export_mixture(run, "megatron"), tmp_path)
    weights = megatron_weights(blend)
    assert weights == pytest.approx({str(data / "code_a"): 0.0625, str(data / "code_b"): 0.1875,
                                     str(data / "prose"): 0.75}, rel=1e-12)
    assert sum(weights.values()) == 1.0


def test_every_format_sums_to_exactly_one(run_dir, monkeypatch, tmp_path):
    assert set(FORMATS) == {"json", "olmix", "hf", "megatron", "olmo-core"}
    for fmt in FORMATS:
        text = export_mixture(run_dir, fmt, paths=PREFIXES if fmt == "megatron" else None)
        if fmt == "hf":
            line = next(x for x in text.splitlines() if x.startswith("probabilities = "))
            weights = eval(line.split("=", 1)[1])  # a list literal
        elif fmt == "megatron":
            weights = list(megatron_weights(run_megatron(text, tmp_path)[1]).values())
        elif fmt == "olmo-core":
            weights = [s.target_ratio for s in run_olmo_core(text, monkeypatch)]
        else:
            weights = list((read_json(text) if fmt == "json" else read_olmix(text)).values())
        assert sum(weights) == 1.0, fmt


def test_hf_snippet_runs_and_samples_the_domains_by_their_weights(tmp_path):
    run = _make_run(tmp_path, HF_MIXTURE)
    text = export_mixture(run, "hf")
    assert "left out, weight 0" in text  # extra and empty: never drawn, never exhausted
    counting = text + (
        "\nfrom collections import Counter\n"
        "import json, sys\n"
        "rows = [row['text'] for _, row in zip(range(400), dataset)]\n"
        "json.dump({'n': len(rows), 'columns': dataset.column_names,\n"
        "           'counts': Counter(r.split()[0] for r in rows)}, sys.stdout)\n")
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-c", counting], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["n"] == 400 and out["columns"] == ["text"]
    counts = Counter(out["counts"])
    assert set(counts) == {"code", "prose", "notes"}  # notes: one document per text file, as opmix reads them
    for domain in ("code", "prose", "notes"):
        assert counts[domain] / 400 == pytest.approx(HF_MIXTURE[domain], abs=0.07), counts


def test_hf_chooses_the_loader_by_suffix(run_dir):
    text = export_mixture(run_dir, "hf", paths={"extra": str(run_dir / "x" / "extra.parquet")})
    lines = {line.split(":")[0].strip().strip("'"): line for line in text.splitlines() if line.startswith("    '")}
    assert "load_dataset('json'" in lines["code"] and "'text')" in lines["code"]
    assert "load_dataset('json'" in lines["prose"] and "'body')" in lines["prose"]  # the domain's text_field
    assert 'load_dataset("text"' in lines["notes"] and 'sample_by="document"' in lines["notes"]
    assert str(run_dir.parent / "data" / "notes" / "**" / "*.txt") in lines["notes"]  # a folder: a recursive glob
    assert "load_dataset('parquet'" in lines["extra"]
    assert "seed=SEED" in text and "SEED = 3" in text and 'stopping_strategy="all_exhausted"' in text


# -- which mixture -------------------------------------------------------------------------------------------------


def test_which_selects_a_baseline(run_dir):
    _assert_weights(read_json(export_mixture(run_dir, "json", which="erm")), ERM, zeros_kept=True)
    out = json.loads(export_mixture(run_dir, "json", which="erm"))
    assert out["mixture"] == "erm" and "components" not in out


def test_a_continual_run_exports_its_last_stage(tmp_path):
    mixture = {"code": 0.35, "prose": 0.35, "notes": 0.3}
    run = _make_run(tmp_path, mixture, continual=True)
    out = json.loads(export_mixture(run, "json"))
    assert out["recipe"] == "continual" and out["stage"] == 3 and out["method"] == "replay"
    _assert_weights(out["domains"], mixture, zeros_kept=True)
    assert out["components"] == {"old": 0.7, "notes": 0.3}
    assert json.loads(export_mixture(run, "json", which="replay"))["domains"] == out["domains"]
    assert "last finished stage, stage 3" in export_mixture(run, "olmix")


def test_a_weight_too_small_to_train_on_counts_as_zero(tmp_path):
    run = _make_run(tmp_path, {"code": 0.6, "prose": 0.4 - 1e-15, "notes": 1e-15})
    assert json.loads(export_mixture(run, "json"))["domains"]["notes"] == 0.0
    assert "'notes'" not in export_mixture(run, "hf").split("domains = {")[1]


# -- bad input -----------------------------------------------------------------------------------------------------


def test_an_unfinished_run_says_to_wait_or_resume(tmp_path):
    run = _make_run(tmp_path, MIXTURE, summary=False)
    with pytest.raises(OpmixError, match="has not finished") as err:
        export_mixture(run, "json")
    assert "wait" in err.value.fix and "resume" in err.value.fix


def test_not_a_run_directory(tmp_path):
    with pytest.raises(OpmixError, match="does not exist"):
        export_mixture(tmp_path / "nowhere", "json")
    with pytest.raises(OpmixError, match="no config.yaml") as err:
        export_mixture(tmp_path, "json")
    assert "--out directory" in err.value.fix


def test_unknown_format(run_dir):
    with pytest.raises(OpmixError, match="unknown export format 'csv'") as err:
        export_mixture(run_dir, "csv")
    assert err.value.fix == "use one of: json, olmix, hf, megatron, olmo-core"


def test_unknown_which_lists_the_mixtures(run_dir):
    with pytest.raises(OpmixError, match="no mixture 'doremi'") as err:
        export_mixture(run_dir, "json", which="doremi")
    assert err.value.fix == "use --which with one of: opmix, erm"


def test_paths_naming_an_unknown_domain(run_dir):
    with pytest.raises(OpmixError, match=r"unknown domain\(s\) \['math'\]") as err:
        export_mixture(run_dir, "json", paths={"math": "/data/math"})
    assert "--paths DOMAIN=PATH" in err.value.fix


@pytest.mark.parametrize("item", ["code", "=/data/code", "code=", " = "])
def test_malformed_paths(item):
    with pytest.raises(OpmixError, match="malformed --paths entry") as err:
        parse_paths([item])
    assert "--paths DOMAIN=PATH" in err.value.fix


def test_parse_paths():
    assert parse_paths(["code=/data/a=b", " prose = s3://x/*.npy "]) == {"code": "/data/a=b", "prose": "s3://x/*.npy"}
    assert parse_paths([]) == {} and parse_paths(None) == {}
    with pytest.raises(OpmixError, match="twice"):
        parse_paths(["code=/a", "code=/b"])


def test_megatron_without_a_prefix_names_the_flag(run_dir):
    with pytest.raises(OpmixError, match="no Megatron-LM indexed dataset") as err:
        export_mixture(run_dir, "megatron", paths={"code": "/megatron/code"})
    assert "--paths prose=PREFIX" in err.value.fix  # code has one; prose is the first without


def test_hf_refuses_pretokenized_data(run_dir):
    with pytest.raises(OpmixError, match="pre-tokenized") as err:
        export_mixture(run_dir, "hf", paths={"code": "/tokens/code.npy"})
    assert "--paths code=PATH" in err.value.fix


# -- a real run ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_tiny_pretrain_run_exports(tmp_path, tiny_pretrain_raw):
    from opmix.config import PretrainConfig, load_config
    from opmix.recipes import pretrain
    from opmix.run.rundir import RunDir

    with RunDir(tmp_path / "run").lock() as run_dir:
        summary = pretrain.run(load_config(None, PretrainConfig, raw=tiny_pretrain_raw), run_dir)
    out = json.loads(export_mixture(tmp_path / "run", "json"))
    assert out["domains"] == pytest.approx(summary["mixture"], rel=1e-12) and sum(out["domains"].values()) == 1.0
    assert out["components"] == summary["components"]
    text = export_mixture(tmp_path / "run", "hf") + "\nprint(len(dataset), dataset.column_names)\n"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].endswith("['text']")
