"""The embedded demo corpus: three domains of real text harvested from the running Python installation.

No network and no extra packages: everything comes from the standard library of the interpreter running opmix.

- ``code``: the standard library's own ``.py`` source files, one document per file. Folders that distro Pythons
  split out or omit (``test``, ``idlelib``, ``tkinter``, ``lib2to3``, ``ensurepip``, ``distutils``...), generated
  tables (``encodings``, ``_sysconfigdata*``), third-party packages (``site-packages``) and ``pydoc_data`` (the
  prose below) are left out.
- ``prose``: the language reference as ``pydoc`` ships it (``pydoc_data.topics.topics``), one document per topic:
  English technical writing. If a distro dropped ``pydoc_data``, the docstrings of the stdlib modules
  (read with ``ast``, never imported) stand in for it.
- ``records``: structured records made from ``unicodedata``: one line per assigned code point, e.g.
  ``U+0041 LATIN CAPITAL LETTER A; category Lu; bidi L; combining 0; mirrored 0; width Na; decomposition -;
  numeric -``, 100 consecutive assigned code points per document.

The three differ in exactly the ways a data mixture cares about: code is indentation-heavy and repetitive in its
identifiers, prose is free-running English, records are rigid key/value lines with a tiny vocabulary. A model
trained on one of them has a visibly higher loss on the others.

Each domain is capped at ``max_bytes`` bytes of UTF-8 text (default 1.5 MB), chosen without randomness: documents in
their natural order (sorted file paths, topic names, code points), thinned by a fixed stride so the selection
spreads over the whole source, then cut at the cap. The prose source is smaller than the cap (about 0.5 MB on
CPython 3.11). The content depends on the Python version (its stdlib and Unicode data), so two machines with
different Pythons get different corpora; one interpreter always builds the same bytes.

Output: ``out_dir/<domain>/part-NNNNN.jsonl`` (``{"text": ...}`` per line, ~512 KB per file, atomic writes) and
``out_dir/demo.json``, written last, which marks the corpus complete and records the settings it was built with.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import sys
import sysconfig
import unicodedata
from pathlib import Path

from opmix.errors import OpmixError

log = logging.getLogger(__name__)

DEMO_DOMAINS = ("code", "prose", "records")
DEFAULT_MAX_BYTES = 1_500_000
SHARD_BYTES = 512_000
MARKER = "demo.json"
DEMO_FORMAT = 1
_SKIP_PARTS = {
    "test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "distutils",
    "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data", "lib-dynload", "venv",
}
_RECORDS_PER_DOC = 100


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        # Prune in place so the walk never enters site-packages (it can hold gigabytes of third-party code).
        subdirs[:] = [d for d in subdirs if d not in _SKIP_PARTS and not d.startswith(("config-", "."))]
        files.extend(Path(folder) / n for n in names if n.endswith(".py") and not n.startswith("_sysconfigdata"))
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _code_documents(max_bytes: int) -> list[str]:
    files = _stdlib_files()
    chosen = _select([f.stat().st_size for f in files], max_bytes)  # file size == UTF-8 size: no reading needed
    return [text for text in (read_utf8(files[i]) for i in chosen) if text and text.strip()]


def _prose_documents(max_bytes: int) -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        log.info("pydoc_data is missing from this Python; using stdlib docstrings as the prose domain")
        return pick_documents(docstring_documents(), max_bytes)
    docs = [topics[name] for name in sorted(topics) if isinstance(topics[name], str) and topics[name].strip()]
    return pick_documents(docs, max_bytes)


def docstring_documents() -> list[str]:
    docs = []
    for path in _stdlib_files():
        text = read_utf8(path)
        try:
            tree = ast.parse(text or "")
        except SyntaxError:
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        strings = [s for s in (ast.get_docstring(n) for n in nodes) if s and len(s) > 40]
        if strings:
            docs.append("\n\n".join(strings))
    return docs


def _record_line(cp: int, name: str) -> str:
    char = chr(cp)
    lower, upper = char.lower(), char.upper()
    numeric = unicodedata.numeric(char, None)
    fields = [
        f"U+{cp:04X} {name}",
        f"category {unicodedata.category(char)}",
        f"bidi {unicodedata.bidirectional(char)}",
        f"combining {unicodedata.combining(char)}",
        f"mirrored {unicodedata.mirrored(char)}",
        f"width {unicodedata.east_asian_width(char)}",
        f"decomposition {unicodedata.decomposition(char) or '-'}",
        f"numeric {'-' if numeric is None else repr(numeric)}",
    ]
    if len(lower) == 1 and lower != char:
        fields.append(f"lower U+{ord(lower):04X}")
    if len(upper) == 1 and upper != char:
        fields.append(f"upper U+{ord(upper):04X}")
    return "; ".join(fields)


def _record_documents(max_bytes: int) -> list[str]:
    assigned = [(cp, name) for cp in range(sys.maxunicode + 1) if (name := unicodedata.name(chr(cp), None))]
    groups = [assigned[i : i + _RECORDS_PER_DOC] for i in range(0, len(assigned), _RECORDS_PER_DOC)]
    # Formatting all ~150k lines is the slow part, so choose groups by an estimated size (a line is its name plus
    # about 92 bytes of fields), format only those, then cut exactly at the cap.
    estimates = [sum(len(name) + 92 for _, name in group) for group in groups]
    docs = ["\n".join(_record_line(cp, name) for cp, name in groups[i]) + "\n" for i in _select(estimates, max_bytes)]
    return pick_documents(docs, max_bytes)


def _select(sizes: list[int], max_bytes: int) -> list[int]:
    """Indices of every k-th document (k fixed by the total size) in natural order, cut at max_bytes."""
    stride = max(1, math.floor(sum(sizes) / max_bytes))
    chosen, total = [], 0
    for i in range(0, len(sizes), stride):
        if total + sizes[i] > max_bytes and chosen:
            break
        if sizes[i] <= max_bytes:
            chosen.append(i)
            total += sizes[i]
    return chosen


def pick_documents(docs: list[str], max_bytes: int) -> list[str]:
    return [docs[i] for i in _select([len(d.encode("utf-8")) for d in docs], max_bytes)]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_shards(folder: Path, docs: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("part-*.jsonl"):
        stale.unlink()
    paths, lines, size = [], [], 0

    def flush() -> None:
        path = folder / f"part-{len(paths):05d}.jsonl"
        _write_atomic(path, "".join(lines).encode("utf-8"))
        paths.append(path)

    for doc in docs:
        line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
        if lines and size + len(line) > SHARD_BYTES:
            flush()
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        flush()
    return paths


def build_demo_corpus(out_dir, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, list[Path]]:
    """Write the demo domains under ``out_dir`` (skipped when already built with these settings); domain -> files."""
    builders = {"code": _code_documents, "prose": _prose_documents, "records": _record_documents}
    return write_corpus(out_dir, MARKER, DEMO_FORMAT, {d: builders[d] for d in DEMO_DOMAINS}, max_bytes, "demo")


def write_corpus(out_dir, marker_name: str, version: int, builders, max_bytes: int, label: str) -> dict[str, list[Path]]:
    """Build each domain's documents with ``builders[domain](max_bytes)`` and write them as JSONL shards; a marker
    (written last) records the settings, so a second call with the same settings reuses the files."""
    if max_bytes < 1:
        raise OpmixError(f"{label} max_bytes must be >= 1, got {max_bytes}", "give a positive byte cap per domain")
    out = Path(out_dir)
    settings = {"format": version, "max_bytes": int(max_bytes), "python": sys.version.split()[0]}
    marker = out / marker_name
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        paths = {d: [out / p for p in files] for d, files in recorded.get("domains", {}).items()}
        if recorded.get("settings") == settings and all(p.is_file() for ps in paths.values() for p in ps):
            log.info("%s corpus already built in %s", label, out)
            return paths
    result: dict[str, list[Path]] = {}
    sizes: dict[str, int] = {}
    for domain, build in builders.items():
        docs = build(max_bytes)
        if not docs:
            raise OpmixError(f"found no text for the {label} domain {domain!r} in this Python installation",
                             "use your own domains in a config (--config FILE)")
        result[domain] = _write_shards(out / domain, docs)
        sizes[domain] = sum(len(d.encode("utf-8")) for d in docs)
        log.info("%s domain %r: %d documents, %d bytes", label, domain, len(docs), sizes[domain])
    record = {
        "settings": settings,
        "bytes": sizes,
        "domains": {d: [str(p.relative_to(out)) for p in ps] for d, ps in result.items()},
    }
    _write_atomic(marker, json.dumps(record, indent=1).encode("utf-8"))
    return result
