"""``opmix export``: a finished run's mixture in the form the trainers people already run read.

``export_mixture(run_dir, fmt, paths=None, which="opmix")`` returns the text; ``FORMATS`` names the formats:

- ``json``: ``{"source", "recipe", "mixture", "domains": {domain: weight}, "paths", "components"?, "stage"?, ...}``;
- ``olmix``: an Olmix launch-config fragment, ``data.sources`` (name, paths) and the ``mix`` (weight,
  repetition_factor), to merge into an Olmix launch config;
- ``hf``: a Python snippet building the mixture with ``datasets.interleave_datasets`` over one
  ``datasets.load_dataset`` per domain;
- ``megatron``: a bash snippet writing Megatron-LM's blend file for ``--data-args-path`` and setting the
  equivalent ``--data-path`` arguments;
- ``olmo-core``: a Python snippet building OLMo-core's ``SourceMixtureList`` of ``SourceMixtureConfig``.

Which mixture: ``which="opmix"`` (the default) is the mixture the run's final model trained on (for a pretraining run
OP-Mix's, or the safe mixture when the guard kept it; for a continual run that of its method). A baseline's name
(``erm``, ``natural``, ... from ``summary["baselines"]``) gives that baseline's mixture. For a continual run the
mixture is that of the **last finished stage** (``summary["stages"][-1]``, which covers every domain the run has
seen; its ``stage`` number is reported), and its method's name (``replay``, ...) is accepted for ``which`` too.

Weights: renormalised over the domains with weight, each printed at full precision (the shortest text that reads
back as the same float), and adjusted in the last bits so that, read back and summed in the order written, they add
up to exactly 1.0 (trainers that check ``sum(...) == 1`` accept them). A domain whose weight is 0 (or below
``ZERO_WEIGHT`` of the total) is kept at 0 in ``json`` and ``olmix`` (Olmix skips zero-weight entries) and left out,
with a comment, where the trainer would choke on it (``hf``: with ``stopping_strategy="all_exhausted"`` a source
that is never drawn is never exhausted; ``megatron``, ``olmo-core``: a source with no samples).

Data paths: ``paths`` maps a domain to its data path (a file, folder, glob or, for Megatron, the prefix of an
indexed ``.bin``/``.idx`` dataset); a domain not in it uses its ``files`` from the run's ``config.yaml``. Megatron
needs indexed datasets: a domain whose files are not ``PREFIX.bin`` files with their ``PREFIX.idx`` is an error
asking for ``--paths DOMAIN=PREFIX``.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from opmix.errors import OpmixError

FORMATS = ("json", "olmix", "hf", "megatron", "olmo-core")
OPMIX = "opmix"
ZERO_WEIGHT = 1e-12  # a weight below this share of the total is treated as 0 (no trainer can use it)

_JSONL_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet",)
_TOKEN_SUFFIXES = (".npy", ".bin")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")  # `datasets` decompresses these by their suffix
_MEGATRON_BLEND_FILE = "megatron_blend.txt"


def parse_paths(items: Sequence[str] | None) -> dict[str, str]:
    """``["code=/data/code", ...]`` (the CLI's ``--paths DOMAIN=PATH ...``) -> ``{"code": "/data/code", ...}``."""
    paths: dict[str, str] = {}
    for item in items or ():
        domain, sep, path = item.partition("=")
        domain, path = domain.strip(), path.strip()
        if not sep or not domain or not path:
            raise OpmixError(f"malformed --paths entry {item!r}",
                             "write each as --paths DOMAIN=PATH, e.g. --paths code=/data/code_text_document")
        if domain in paths:
            raise OpmixError(f"--paths names domain {domain!r} twice",
                             f"give one --paths {domain}=PATH per domain")
        paths[domain] = path
    return paths


def export_mixture(run_dir: Path, fmt: str, paths: Mapping[str, str] | None = None, which: str = OPMIX) -> str:
    """The mixture of the finished run in ``run_dir`` as text in format ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise OpmixError(f"unknown export format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    run = _load_run(Path(run_dir), which)
    overrides = dict(paths or {})
    unknown = sorted(set(overrides) - set(run["known"]))
    if unknown:
        raise OpmixError(f"--paths names unknown domain(s) {unknown} (the run's domains: {run['known']})",
                         "give --paths DOMAIN=PATH for the run's domains only")
    run["paths"] = {d: [overrides[d]] if d in overrides else run["files"].get(d, []) for d in run["weights"]}
    run["given"] = set(overrides)
    return {"json": _json, "olmix": _olmix, "hf": _hf, "megatron": _megatron, "olmo-core": _olmo_core}[fmt](run)


# -- reading the run ---------------------------------------------------------------------------------------------


def _load_run(run_dir: Path, which: str) -> dict:
    if not run_dir.is_dir():
        raise OpmixError(f"run directory {run_dir} does not exist", "give the --out directory of an opmix run")
    config_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not config_path.is_file():
        raise OpmixError(f"{run_dir} is not an opmix run directory (no config.yaml)",
                         "give the --out directory of an opmix run")
    if not summary_path.is_file():
        raise OpmixError(
            f"run {run_dir} has not finished (no summary.json), so it has no final mixture yet",
            f"wait for it to finish (`opmix status {run_dir}` shows its progress), or resume it by running its "
            "command again if it stopped")
    summary = _read(summary_path, json.loads)
    config = _read(config_path, yaml.safe_load) or {}
    if not isinstance(summary, dict) or not isinstance(config, dict):
        raise OpmixError(f"{run_dir} holds a damaged summary.json or config.yaml",
                         "resume the run with its command to rewrite them")

    continual = "stages" in summary
    stage = summary["stages"][-1] if continual and summary["stages"] else None
    own = [OPMIX] + ([summary["method"]] if continual and summary.get("method") else [])
    baselines = {name: b.get("mixture") for name, b in (summary.get("baselines") or {}).items()}
    if not baselines and isinstance(summary.get("baseline"), dict) and "name" in summary["baseline"]:
        baselines = {summary["baseline"]["name"]: summary["baseline"].get("mixture")}  # older summaries
    if which in own:
        mixture = (stage or summary).get("mixture")
        components = (stage or summary).get("components")
    elif which in baselines:
        mixture, components = baselines[which], None
    else:
        names = list(dict.fromkeys([*own, *baselines]))
        raise OpmixError(f"run {run_dir} has no mixture {which!r}", f"use --which with one of: {', '.join(names)}")

    domains = [d for d in config.get("domains") or [] if isinstance(d, dict) and "name" in d]
    files = {d["name"]: [str(f) for f in d.get("files") or []] for d in domains}
    fields = {d["name"]: d.get("text_field") or "text" for d in domains}
    order = [d["name"] for d in domains if d["name"] in (mixture or {})]
    order += [d for d in mixture or {} if d not in order]
    weights = _weights(mixture, order, run_dir)
    run = {"dir": run_dir.resolve(), "recipe": "continual" if continual else "pretrain", "which": which,
           "weights": weights, "files": files, "text_field": fields, "known": list(dict.fromkeys([*files, *order])),
           "seed": config.get("seed") or 0, "components": components}
    if continual:
        run["method"] = summary.get("method")
        run["stage"] = stage.get("stage", len(summary["stages"])) if stage else None
    return run


def _read(path: Path, parse):
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise OpmixError(f"cannot read {path} ({exc})", "resume the run with its command to rewrite it") from exc


def _weights(mixture, order: list[str], run_dir: Path) -> dict[str, float]:
    """Renormalised weights in ``order``: those with weight sum to exactly 1.0 (read back and summed in order)."""
    try:
        raw = [float(mixture[d]) for d in order]
    except (TypeError, ValueError, KeyError) as exc:
        raise OpmixError(f"the mixture in {run_dir / 'summary.json'} is not a domain -> weight map ({exc})",
                         "resume the run with its command to rewrite it") from exc
    if not raw or not all(math.isfinite(w) and w >= 0 for w in raw) or math.fsum(raw) <= 0:
        raise OpmixError(f"the mixture in {run_dir / 'summary.json'} has no usable weights: {dict(zip(order, raw))}",
                         "resume the run with its command to rewrite it")
    total = math.fsum(raw)
    kept = [w / total if w / total >= ZERO_WEIGHT else 0.0 for w in raw]
    kept = [w / math.fsum(kept) for w in kept]
    return dict(zip(order, _sum_to_one(kept)))


def _sum_to_one(weights: list[float]) -> list[float]:
    """Nudge the largest weight by a few units in the last place so that ``sum(weights) == 1.0`` exactly."""
    weights = list(weights)
    k = max(range(len(weights)), key=weights.__getitem__)
    weights[k] += 1.0 - sum(weights)
    for _ in range(10_000):
        total = sum(weights)
        if total == 1.0:
            break
        weights[k] = math.nextafter(weights[k], 2.0 if total < 1.0 else 0.0)
    return weights


# -- formats -----------------------------------------------------------------------------------------------------


def _describe(run: dict) -> str:
    own = run["which"] == OPMIX or run["which"] == run.get("method")
    method = run.get("method") if run["recipe"] == "continual" else OPMIX
    label = ("OP-Mix's mixture" if method in (OPMIX, "grid") else f"the {method!r} mixture") if own else \
        f"the {run['which']!r} baseline's mixture"
    where = f"{run['recipe']} run {run['dir']}"
    if run["recipe"] == "continual":
        where += f" (method {run.get('method')}; the mixture of its last finished stage, stage {run.get('stage')})"
    return f"{label} of the {where}"


def _positive(run: dict) -> dict[str, float]:
    return {d: w for d, w in run["weights"].items() if w > 0}


def _need_paths(run: dict, domains) -> None:
    for d in domains:
        if not run["paths"].get(d):
            raise OpmixError(f"domain {d!r} has no data files in the run's config.yaml",
                             f"give its data with --paths {d}=PATH")


def _zero_note(run: dict, why: str, prefix: str = "# ") -> list[str]:
    zero = [d for d, w in run["weights"].items() if w == 0]
    return [f"{prefix}left out, weight 0 ({why}): {', '.join(zero)}"] if zero else []


def _json(run: dict) -> str:
    out = {"source": str(run["dir"]), "recipe": run["recipe"], "mixture": run["which"]}
    if run["recipe"] == "continual":
        out["method"] = run.get("method")
        out["stage"] = run.get("stage")
    out["domains"] = dict(run["weights"])
    if run.get("components"):
        out["components"] = dict(run["components"])
    out["paths"] = run["paths"]
    return json.dumps(out, indent=2) + "\n"


def _olmix(run: dict) -> str:
    _need_paths(run, run["weights"])
    header = [
        f"# Olmix mixture exported by opmix: {_describe(run)}.",
        "# Merge `data` and `mix` into an Olmix launch config (with its infra, training and eval sections); `mix`",
        "# weights sum to 1 and Olmix skips zero-weight entries. repetition_factor 1.0 (Olmix's default) allows no",
        "# repetition of a domain's tokens: raise it for a domain with too few tokens for the target budget.",
    ]
    if not run["given"] >= set(run["weights"]):
        header.append("# paths: the domains' files from the run's config; Olmix trains on tokenized .npy files: give"
                      " them with --paths DOMAIN=GLOB.")
    body = {
        "data": {"sources": [{"name": d, "paths": run["paths"][d]} for d in run["weights"]]},
        "mix": {d: {"weight": w, "repetition_factor": 1.0} for d, w in run["weights"].items()},
    }
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=10**9)


def _olmo_core(run: dict) -> str:
    _need_paths(run, _positive(run))
    lines = [
        f"# OLMo-core source mixture exported by opmix: {_describe(run)}.",
        "# target_ratio values sum to 1. Use it as",
        "#   SourceMixtureDatasetConfig(source_list=source_list, requested_tokens=..., global_batch_size=...)",
        "# (the source_mixture_config of a NumpyFSLDatasetConfig); OLMo-core releases before SourceMixtureList take",
        "#   SourceMixtureDatasetConfig(source_configs=source_list.sources, max_tokens=..., ...).",
        "# max_repetition_ratio 1.0 (OLMo-core's default) allows no repetition: raise it for a domain with too few",
        "# tokens for requested_tokens.",
        *_zero_note(run, "OLMo-core would build a source with no tokens"),
    ]
    if not run["given"] >= set(_positive(run)):
        lines.append("# paths: the domains' files from the run's config; OLMo-core reads tokenized numpy token files:"
                     " give them with --paths DOMAIN=GLOB.")
    lines += ["from olmo_core.data.source_mixture import SourceMixtureConfig, SourceMixtureList", "",
              "source_list = SourceMixtureList(", "    sources=["]
    for d, w in _positive(run).items():
        lines += [
            "        SourceMixtureConfig(",
            f"            source_name={d!r},",
            f"            target_ratio={w!r},",
            f"            paths={run['paths'][d]!r},",
            "            max_repetition_ratio=1.0,",
            "        ),",
        ]
    lines += ["    ]", ")"]
    return "\n".join(lines) + "\n"


def _megatron(run: dict) -> str:
    prefixes = {d: _megatron_prefixes(run, d) for d in _positive(run)}  # domain -> [(prefix, share of its weight)]
    entries = [(prefix, run["weights"][d] * share) for d, shares in prefixes.items() for prefix, share in shares]
    weights = _sum_to_one([w for _, w in entries])
    tokens = [tok for (prefix, _), w in zip(entries, weights) for tok in (repr(w), prefix)]
    named = [f"#   {d}: {run['weights'][d]!r} -> {' '.join(p for p, _ in shares)}" for d, shares in prefixes.items()]
    lines = [
        f"# Megatron-LM data blend exported by opmix: {_describe(run)}.",
        "# Weights sum to 1; a domain split over several indexed datasets shares its weight by their .bin sizes.",
        "# domains (weight -> dataset prefixes):",
        *named,
        *_zero_note(run, "Megatron-LM cannot build a dataset with no samples"),
        f"# Source this file: it writes the blend file {_MEGATRON_BLEND_FILE}, which Megatron-LM reads with",
        f"#   --data-args-path {_MEGATRON_BLEND_FILE}",
        "# (whitespace-separated weight/prefix pairs, the same tokens as --data-path; it may not hold comments), and",
        "# sets DATA_ARGS to the same blend on the command line:  pretrain_gpt.py \"${DATA_ARGS[@]}\" ...",
        f"cat > {_MEGATRON_BLEND_FILE} <<'OPMIX_BLEND'",
        *(f"{tokens[i]} {tokens[i + 1]}" for i in range(0, len(tokens), 2)),
        "OPMIX_BLEND",
        "DATA_ARGS=(--data-path " + " ".join(shlex.quote(t) for t in tokens) + ")",
    ]
    return "\n".join(lines) + "\n"


def _megatron_prefixes(run: dict, domain: str) -> list[tuple[str, float]]:
    """The indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) of a domain, each with its share of the domain."""
    fix = (f"give the prefix of its Megatron indexed dataset (PREFIX.bin + PREFIX.idx, e.g. from "
           f"tools/preprocess_data.py) with --paths {domain}=PREFIX")
    if domain in run["given"]:
        prefix = run["paths"][domain][0]
        if prefix.endswith((".bin", ".idx")):  # Megatron-LM adds these to the prefix itself
            prefix = prefix[:-4]
        if any(c.isspace() for c in prefix):
            raise OpmixError(f"Megatron prefix {prefix!r} of domain {domain!r} contains whitespace, which "
                             "Megatron-LM's blend splits on", "move or link the dataset to a path without spaces")
        return [(prefix, 1.0)]
    files = [Path(f) for f in run["paths"][domain]]
    if not files or not all(f.suffix == ".bin" and f.is_file() and f.with_suffix(".idx").is_file() for f in files):
        raise OpmixError(f"domain {domain!r} has no Megatron-LM indexed dataset (its files are "
                         f"{[str(f) for f in files]})", fix)
    if any(any(c.isspace() for c in str(f)) for f in files):
        raise OpmixError(f"a file of domain {domain!r} has whitespace in its path, which Megatron-LM's blend "
                         "splits on", fix)
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    return [(str(f.with_suffix("")), s / total if total else 1 / len(files)) for f, s in zip(files, sizes)]


def _hf(run: dict) -> str:
    weights = _positive(run)
    _need_paths(run, weights)
    lines = [
        f"# Hugging Face `datasets` mixture exported by opmix: {_describe(run)}.",
        "# probabilities are the domains' weights (they sum to 1); stopping_strategy=\"all_exhausted\" oversamples:",
        "# the mixture ends once every domain has been used up at least once. For large data pass streaming=True",
        "# to each load_dataset (interleave_datasets takes the same arguments for streamed datasets).",
        *_zero_note(run, "with stopping_strategy=\"all_exhausted\" a domain that is never drawn is never used up, "
                         "so the mixture would not end"),
        "from datasets import concatenate_datasets, interleave_datasets, load_dataset",
        "",
        f"SEED = {int(run['seed'])!r}",
        "",
        "",
        "def text_only(dataset, field):",
        "    \"\"\"Keep only the document text, in a column named \"text\", so that the domains interleave.\"\"\"",
        "    dataset = dataset.select_columns([field])",
        "    return dataset if field == \"text\" else dataset.rename_column(field, \"text\")",
        "",
        "",
        "domains = {",
    ]
    for d in weights:
        parts = [_hf_load(loader, files, run["text_field"].get(d, "text"))
                 for loader, files in _hf_groups(d, run["paths"][d]).items()]
        if len(parts) == 1:
            lines.append(f"    {d!r}: {parts[0]},")
        else:
            lines += [f"    {d!r}: concatenate_datasets([", *(f"        {p}," for p in parts), "    ]),"]
    lines += [
        "}",
        f"probabilities = {list(weights.values())!r}",
        "dataset = interleave_datasets(",
        "    list(domains.values()), probabilities=probabilities, seed=SEED, stopping_strategy=\"all_exhausted\"",
        ")",
    ]
    return "\n".join(lines) + "\n"


def _hf_load(loader: str, files: list[str], field: str) -> str:
    if loader == "text":  # opmix reads a plain text file as one document
        return f"load_dataset(\"text\", data_files={files!r}, split=\"train\", sample_by=\"document\")"
    return f"text_only(load_dataset({loader!r}, data_files={files!r}, split=\"train\"), {field!r})"


def _hf_groups(domain: str, paths: list[str]) -> dict[str, list[str]]:
    """Loader (``json``, ``parquet``, ``text``) -> data_files of a domain; an existing folder becomes one recursive
    glob per file suffix found in it."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        p = Path(path)
        if p.is_dir():
            suffixes = sorted({_data_suffix(f) for f in p.rglob("*")
                               if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)})
            found = [(str(p / "**" / f"*{s}"), s) for s in suffixes]
        else:
            found = [(path, _data_suffix(p))]
        for pattern, suffix in found:
            if suffix in _TOKEN_SUFFIXES:
                raise OpmixError(f"domain {domain!r} is pre-tokenized ({pattern}), which `datasets` cannot load as "
                                 "text", f"give its text files with --paths {domain}=PATH")
            loader = "json" if suffix in _JSONL_SUFFIXES else "parquet" if suffix in _PARQUET_SUFFIXES else "text"
            groups.setdefault(loader, []).append(pattern)
    return groups


def _data_suffix(path: Path) -> str:
    """The suffix that names the file's format (``.jsonl`` for ``x.jsonl.gz``); ``""`` for none."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""
