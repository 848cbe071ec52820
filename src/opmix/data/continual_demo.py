"""Four more real-text domains from the running Python installation, for the continual-midtraining demo.

They arrive after a model pretrained on the embedded demo corpus (``opmix.data.demo``: stdlib code, the language
reference, Unicode records) and differ from it, and from each other, in how close they are to what the model
knows, so they are forgotten at different rates:

- ``c``: the CPython C API headers (``include/python3.x/**/*.h``): code, but C, with macros and long comments.
- ``docs``: the docstrings of the stdlib modules, classes and functions (read with ``ast``, never imported):
  English about code, close to the pretraining ``prose``.
- ``calendar``: ``calendar.TextCalendar`` years 1600 onward (first weekday varying): rigid, tiny vocabulary,
  learned fast.
- ``packages``: the ``METADATA`` files of the installed distributions (``importlib.metadata``): headers plus
  Markdown/reStructuredText READMEs. Depends on what is installed; one environment always builds the same bytes.

Each domain is capped at ``max_bytes`` bytes, chosen without randomness (natural order, thinned by a fixed stride,
cut at the cap). Output: ``out_dir/<domain>/part-00000.jsonl`` and ``out_dir/continual_demo.json`` (written last).
"""

from __future__ import annotations

import ast
import calendar
import json
import logging
import math
import os
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from opmix.errors import OpmixError

log = logging.getLogger(__name__)

CONTINUAL_DEMO_DOMAINS = ("c", "docs", "calendar", "packages")
MARKER = "continual_demo.json"
FORMAT = 1
_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "distutils", "site-packages",
         "dist-packages", "__pycache__", "encodings", "pydoc_data", "lib-dynload", "venv"}


def _c_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["include"])
    files = sorted(root.rglob("*.h"), key=lambda p: p.relative_to(root).parts)
    return [text for text in (_read(f) for f in files) if text and text.strip()]


def _docstring_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        # prune in place (so the walk never enters site-packages), then sort the collected paths
        subdirs[:] = [d for d in subdirs if d not in _SKIP and not d.startswith(("config-", "."))]
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    docs = []
    for path in sorted(files, key=lambda p: p.relative_to(root).parts):
        try:
            tree = ast.parse(_read(path) or "")
        except (SyntaxError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        strings = [s for s in (ast.get_docstring(n) for n in nodes) if s and len(s) > 40]
        if strings:
            docs.append("\n\n".join(strings))
    return docs


def _calendar_documents() -> list[str]:
    return [calendar.TextCalendar(firstweekday=year % 7).formatyear(year) for year in range(1600, 2600)]


def _package_documents() -> list[str]:
    texts = {}
    for dist in metadata.distributions():
        name, text = dist.metadata.get("Name"), dist.read_text("METADATA")
        if name and text and name.lower() not in texts:
            texts[name.lower()] = text
    return [texts[name] for name in sorted(texts)]


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _cap(docs: list[str], max_bytes: int) -> list[str]:
    """Every k-th document in natural order (k fixed by the total size), cut at ``max_bytes``."""
    sizes = [len(d.encode("utf-8")) for d in docs]
    stride = max(1, math.floor(sum(sizes) / max_bytes))
    chosen, total = [], 0
    for i in range(0, len(docs), stride):
        if total + sizes[i] > max_bytes and chosen:
            break
        if sizes[i] <= max_bytes:
            chosen.append(docs[i])
            total += sizes[i]
    return chosen


def build_continual_demo_corpus(out_dir, max_bytes: int = 800_000) -> dict[str, list[Path]]:
    """Write the four domains under ``out_dir`` (skipped when already built with these settings); domain -> files."""
    if max_bytes < 1:
        raise OpmixError(f"max_bytes must be >= 1, got {max_bytes}", "give a positive byte cap per domain")
    out = Path(out_dir)
    settings = {"format": FORMAT, "max_bytes": int(max_bytes), "python": sys.version.split()[0]}
    marker = out / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        paths = {d: [out / p for p in files] for d, files in recorded["domains"].items()}
        if recorded.get("settings") == settings and all(p.is_file() for ps in paths.values() for p in ps):
            return paths
    builders = {"c": _c_documents, "docs": _docstring_documents, "calendar": _calendar_documents,
                "packages": _package_documents}
    result, sizes = {}, {}
    for domain in CONTINUAL_DEMO_DOMAINS:
        docs = _cap(builders[domain](), max_bytes)
        if not docs:
            raise OpmixError(f"found no text for the continual demo domain {domain!r} in this Python installation",
                             "use your own domains in a config (opmix continual --config FILE)")
        path = out / domain / "part-00000.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        os.replace(tmp, path)
        result[domain], sizes[domain] = [path], sum(len(d.encode("utf-8")) for d in docs)
        log.info("continual demo domain %r: %d documents, %d bytes", domain, len(docs), sizes[domain])
    record = {"settings": settings, "bytes": sizes,
              "domains": {d: [str(p.relative_to(out)) for p in ps] for d, ps in result.items()}}
    tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, marker)
    return result
