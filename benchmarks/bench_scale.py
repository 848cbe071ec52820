"""Scale benchmark: large data (tokenization throughput, memory-mapped token domains) and processes (1 vs 2).

    python benchmarks/bench_scale.py                      # every section
    python benchmarks/bench_scale.py --only tokenization  # one section (comma-separated names)
    python benchmarks/bench_scale.py --only mmap --mmap-gb 5 --tmp /scratch

Sections:

- ``tokenization``: ``--text-mb`` (200) MB of generated text (the demo's stdlib docstrings and code, each copy
  varied), written as JSONL shards, tokenized by opmix's domain preparation (``prepare_domain``: read, encode in
  batches, shuffle, split, write the cache) against the ``tokenizers`` library encoding the same documents, already
  in memory, in one ``encode_batch_fast`` call. Target: opmix >= 0.8x the library's MB/s. With the built-in byte
  tokenizer and a byte-level BPE tokenizer trained here on a sample of the text (``--tokenizers``).
- ``mmap``: a ``--mmap-gb`` (5) GB uint16 ``.npy`` token domain (EOS-separated documents) in ``--tmp``: time to
  the first training batch (``prepare_domain`` + ``MixtureSampler.next_batch``) and peak RSS, each measured in a
  fresh process, on the first preparation (which checks every token) and on a cache hit. Target: peak RSS
  < 500 MB. Scaled down, with a note, when ``--tmp`` lacks the room.
- ``processes``: one pretraining run (``--process-model`` llama-1m, ``--process-steps`` 200, global batch 8 x 128
  tokens, 4 probes, 8 proxies, dropout off) on 1 process (1 and 2 threads) and on 2 processes (``torchrun``, gloo,
  1 thread each): seconds of full training, of the probes stage (concurrent, one per process) and of the proxy
  evaluation (split), and their ratios. Target: the 2-process probes stage < 0.65x the 1-process one.

Each section is a function ``bench_<name>(args) -> list of rows``; ``main`` prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EOS = 256
TARGET_RATIO = 0.8
TARGET_RSS_MB = 500
ENCODING_BYTES_PER_TOKEN = 80  # what the library's Encoding objects take, measured (~65), with a margin


# --- helpers ---------------------------------------------------------------------------------------------------------

def _run_python(code: str, timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _text_documents(total_bytes: int) -> list[str]:
    """Realistic, varied documents: the demo's stdlib docstrings and code; each pass over them is varied (a pass
    number and a rotation), so no two documents are equal and tokenizer caches see new words."""
    from opmix.data.demo import _code_documents, docstring_documents

    base = docstring_documents() + _code_documents(8 << 20)
    base = [d for d in base if d.strip()]
    docs, size, copy = [], 0, 0
    while size < total_bytes:
        for i, doc in enumerate(base):
            cut = (copy * 7919 + i * 104729) % max(1, len(doc))
            text = f"[{copy}:{i}] " + doc[cut:] + "\n" + doc[:cut]
            docs.append(text)
            size += len(text.encode("utf-8"))
            if size >= total_bytes:
                break
        copy += 1
    return docs


def _write_jsonl(docs: list[str], folder: Path, shards: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    per = -(-len(docs) // shards)
    for k in range(shards):
        path = folder / f"shard-{k:02d}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for doc in docs[k * per:(k + 1) * per]:
                f.write(json.dumps({"text": doc}) + "\n")
        paths.append(path)
    return paths


def _train_bpe(docs: list[str], folder: Path, vocab: int = 16384) -> Path:
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenizer) trained on ~8 MB of the text, saved for
    ``load_tokenizer``: what a lab's own BPE tokenizer costs to run, without downloading one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample, size = [], 0
    for doc in docs[::7]:
        sample.append(doc)
        size += len(doc)
        if size > 8 << 20:
            break
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(sample, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", model_max_length=1 << 30)
    tok.save_pretrained(folder)
    return folder


# --- sections --------------------------------------------------------------------------------------------------------

_BASELINE = """
import json, time, sys
from opmix.data.tokenizer import load_tokenizer
docs = [json.loads(line)["text"] for p in {paths!r} for line in open(p, encoding="utf-8")]
size = sum(len(d.encode("utf-8")) for d in docs)
backend = load_tokenizer({spec!r}).backend_tokenizer
calls = {calls}
per = -(-len(docs) // calls)
started = time.perf_counter()
tokens = 0
for k in range(calls):
    tokens += sum(len(e.ids) for e in backend.encode_batch_fast(docs[k * per:(k + 1) * per], add_special_tokens=False))
seconds = time.perf_counter() - started
print(json.dumps({{"bytes": size, "seconds": seconds, "tokens": tokens}}))
"""

_OPMIX = """
import json, time, logging
from opmix.data.cache import prepare_domain
from opmix.data.tokenizer import load_tokenizer
tok = load_tokenizer({spec!r})
started = time.perf_counter()
dom = prepare_domain("text", {paths!r}, tok, 1024, {cache!r}, eval_fraction=0.05)
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "tokens": dom.train_tokens + dom.eval_tokens}}))
"""


def bench_tokenization(args) -> list[dict]:
    """opmix's preparation of a text domain vs the library's one batch call, per tokenizer."""
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="opmix-bench-tok-") as tmp:
        tmp = Path(tmp)
        docs = _text_documents(int(args.text_mb * 1e6))
        size = sum(len(d.encode("utf-8")) for d in docs)
        paths = [str(p) for p in _write_jsonl(docs, tmp / "text")]
        specs = {}
        for name in args.tokenizers.split(","):
            if name == "bytes":
                specs[name] = "builtin:bytes"
            elif name == "bpe":
                specs[name] = str(_train_bpe(docs, tmp / "bpe"))
            else:
                raise SystemExit(f"unknown tokenizer {name!r}: use bytes and/or bpe")
        del docs
        for name, spec in specs.items():
            tokens_bound = size if name == "bytes" else size // 2  # ~1 token per byte / BPE fewer
            calls = 1
            while calls < 64 and tokens_bound / calls * ENCODING_BYTES_PER_TOKEN > 0.6 * _available_memory():
                calls *= 2
            if calls > 1:
                print(f"note: one call on {size / 1e6:.0f} MB would need ~{tokens_bound * 80 / 1e9:.0f} GB of "
                      f"Encoding objects; the library baseline runs as {calls} calls")
            base = _run_python(_BASELINE.format(paths=paths, spec=spec, calls=calls))
            ours = _run_python(_OPMIX.format(paths=paths, spec=spec, cache=str(tmp / f"cache-{name}")))
            base_rate, our_rate = size / 1e6 / base["seconds"], size / 1e6 / ours["seconds"]
            rows.append({"section": "tokenization", "case": f"{name}: tokenizers, {calls} batch call(s)",
                         "figure": f"{base_rate:.2f} MB/s", "detail": f"{size / 1e6:.0f} MB in {base['seconds']:.1f}s"})
            ratio = our_rate / base_rate
            rows.append({"section": "tokenization", "case": f"{name}: opmix prepare_domain",
                         "figure": f"{our_rate:.2f} MB/s",
                         "detail": f"{ratio:.2f}x the library (target >= {TARGET_RATIO}x: "
                                   f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"})
    return rows


_FIRST_BATCH = """
import json, resource, time
started = time.perf_counter()
from opmix.data.cache import prepare_domain
from opmix.data.sampler import MixtureSampler
from opmix.data.tokenizer import load_tokenizer
tok = load_tokenizer("builtin:bytes")
imported = time.perf_counter()
def hwm():  # this process's own peak (ru_maxrss would carry the parent's over the exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rss_imports = hwm()
dom = prepare_domain("big", [{path!r}], tok, {seq_len}, {cache!r}, eval_fraction=0.01, max_eval_sequences=256)
sampler = MixtureSampler({{"big": dom.train}}, {{"big": 1.0}}, {batch}, 0)
batch, _ = sampler.next_batch()
done = time.perf_counter()
peak = hwm()
print(json.dumps({{"seconds": done - imported, "peak_rss": peak, "rss_imports": rss_imports,
                  "rows": len(dom.train), "shape": list(batch.shape)}}))
"""


def _write_token_file(path: Path, tokens: int) -> None:
    block = (np.random.default_rng(0).integers(0, 250, size=1 << 24)).astype(np.uint16)
    block[np.random.default_rng(1).integers(0, len(block), size=len(block) // 1000)] = EOS  # ~1000-token documents
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": (tokens,)})
        for start in range(0, tokens, len(block)):
            f.write(block[:min(len(block), tokens - start)].tobytes())


def bench_mmap(args) -> list[dict]:
    """Time to first batch and peak RSS on a large memory-mapped token domain, first preparation and cache hit."""
    want = int(args.mmap_gb * 1e9)
    free = shutil.disk_usage(args.tmp).free
    size = want if free > want + (1 << 30) else max(0, free - (1 << 30)) // 2 * 2
    if size < want:
        print(f"note: {args.tmp} has {free / 1e9:.1f} GB free; the token domain is scaled down to "
              f"{size / 1e9:.2f} GB (asked {args.mmap_gb} GB)")
    if size < 1 << 24:
        return [{"section": "mmap", "case": "skipped", "figure": "-", "detail": "no room in --tmp"}]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="opmix-bench-mmap-") as tmp:
        path = Path(tmp) / "tokens.npy"
        started = time.perf_counter()
        _write_token_file(path, size // 2)
        print(f"wrote {size / 1e9:.2f} GB of uint16 tokens in {time.perf_counter() - started:.1f}s")
        code = _FIRST_BATCH.format(path=str(path), cache=str(Path(tmp) / "cache"), seq_len=args.seq_len,
                                   batch=args.batch)
        for case in ("first preparation (checks every token)", "cache hit"):
            result = _run_python(code)
            peak = result["peak_rss"] / 1e6
            rows.append({"section": "mmap", "case": f"{size / 1e9:.1f} GB .npy, {case}",
                         "figure": f"{result['seconds']:.2f} s to first batch",
                         "detail": f"peak RSS {peak:.0f} MB (after imports {result['rss_imports'] / 1e6:.0f} MB; "
                                   f"target < {TARGET_RSS_MB} MB: {'met' if peak < TARGET_RSS_MB else 'NOT met'}), "
                                   f"{result['rows']} train rows"})
    return rows


# --- processes: 1 vs 2 on CPU (gloo) ------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stage_seconds(run: Path) -> dict[str, float]:
    """Wall seconds of the probes stage (the first probe's start to the proxies' start, in rank 0's run.log) and the
    ledger's seconds of full training (prefix + final: the optimizer steps) and of proxy evaluation."""
    import datetime

    def stamp(line: str) -> float:
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    lines = (run / "run.log").read_text().splitlines()
    probes_start = stamp(next(line for line in lines if ": LoRA probe," in line))
    proxies_start = stamp(next(line for line in lines if "proxies: evaluating" in line))
    ledger = {e["stage"]: e for e in json.loads((run / "ledger.json").read_text())["stages"]}
    return {"full training": ledger["prefix"]["seconds"] + ledger["final"]["seconds"],
            "probes": proxies_start - probes_start, "proxy evaluation": ledger["proxies"]["seconds"]}


def bench_processes(args) -> list[dict]:
    """The same pretraining run (same seed and global batch) on 1 process and on 2 (torchrun, gloo on CPU)."""
    import yaml

    from opmix.data.demo import build_demo_corpus

    root = Path(args.tmp) / "opmix-bench-processes"
    shutil.rmtree(root, ignore_errors=True)
    corpus = build_demo_corpus(root / "corpus", max_bytes=600_000)
    global_batch = 8
    raw = {
        "seed": 0, "model": {"builtin": args.process_model}, "tokenizer": "builtin:bytes",
        "domains": [{"name": n, "files": [str(p) for p in paths]} for n, paths in corpus.items()],
        "data": {"seq_len": 128, "eval_fraction": 0.05, "max_eval_sequences": 16},
        "train": {"steps": args.process_steps, "lr": 3e-3, "eval_batch_size": 16},
        "method": {"n_proxies": 8, "lora": {"dropout": 0.0}, "probe_cache": {"enabled": False}},
        "baseline": "none",
    }
    setups = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1)]
    results = {}
    for name, processes, threads in setups:
        folder = root / f"p{processes}t{threads}"
        folder.mkdir(parents=True)
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "batch_size": global_batch // processes}}))
        cli = ["-m", "opmix.cli", "pretrain", "--config", str(config), "--out", str(folder / "run"), "-q"]
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                         "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
        started = time.perf_counter()
        done = subprocess.run(launcher + cli, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: failed\n{done.stderr[-3000:]}")
        results[name] = {**_stage_seconds(folder / "run"), "whole run": time.perf_counter() - started,
                         "mixture": json.loads((folder / "run" / "summary.json").read_text())["mixture"]}
        print(f"  {name}: {results[name]['whole run']:.1f} s", flush=True)
    stages = ["full training", "probes", "proxy evaluation", "whole run"]
    rows = [{"section": "processes", "case": f"{name}: {stage}", "figure": f"{results[name][stage]:.1f} s",
             "detail": f"{args.process_model}, {args.process_steps} steps, global batch {global_batch} x 128"}
            for name in results for stage in stages]
    two = results[setups[2][0]]
    for base, _, _ in setups[:2]:
        for stage in stages:
            target = " (target < 0.65x)" if stage == "probes" else ""
            rows.append({"section": "processes", "case": f"2 processes / {base}: {stage}",
                         "figure": f"{two[stage] / results[base][stage]:.2f}x", "detail": target.strip()})
    mixtures = [r["mixture"] for r in results.values()]
    gap = max(abs(m[d] - mixtures[0][d]) for m in mixtures for d in m)
    rows.append({"section": "processes", "case": "largest mixture difference between the runs",
                 "figure": f"{gap:.1e}", "detail": "same seed and global batch"})
    return rows


SECTIONS = {"tokenization": bench_tokenization, "mmap": bench_mmap, "processes": bench_processes}


def print_table(rows: list[dict]) -> None:
    columns = ["section", "case", "figure", "detail"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for the generated data (default /tmp)")
    parser.add_argument("--text-mb", type=float, default=200.0, help="MB of text for the tokenization section")
    parser.add_argument("--tokenizers", default="bytes,bpe", help="tokenization: bytes and/or bpe")
    parser.add_argument("--mmap-gb", type=float, default=5.0, help="GB of tokens for the mmap section")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--process-model", default="llama-1m", help="processes: the built-in model")
    parser.add_argument("--process-steps", type=int, default=200, help="processes: the run's optimizer steps")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    rows = []
    for name in names:
        started = time.perf_counter()
        rows += SECTIONS[name](args)
        print(f"[{name}: {time.perf_counter() - started:.0f}s]", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
