"""Test beds of data unlike the demo corpora: named domain sets and continual-midtraining orderings.

The demo corpora (``opmix.data.demo``, ``opmix.data.continual_demo``) are all English or code from the Python
installation itself. The method looked fine on them and failed on users' data of other kinds (technical documents
in two natural languages, two kinds of source code, changelogs). These test beds differ from the demo in kind:
other natural languages and scripts, other kinds of code and configuration, domains whose sizes and difficulty
differ by orders of magnitude, and changelogs. Everything is built offline, without randomness (generated domains
use a fixed-seed splitmix64 stream), so one environment always builds the same bytes.

Sources are the packages opmix itself depends on (torch with its headers and torchgen, transformers, numpy, scipy,
sympy and networkx via torch), the standard library, and, for the other natural languages and the changelogs, the
operating system's documentation (``/usr/share/man/<lang>``, ``/usr/share/locale/<lang>``, ``/usr/share/doc``). A
Python installation carries no real non-English prose beyond a few kilobytes (``test/cjkencodings``), so the
language domains need the OS files; where they are missing (minimal container images often drop them) a *generated
stand-in* is used and a warning is logged: see each domain. Everything else depends only on the installed versions
of those packages (and of the OS packages for the OS domains): another environment builds other bytes.

Sizes below are at the default cap (``DEFAULT_MAX_BYTES``, 1 MB per domain) on the reference machine (Debian 12,
CPython 3.11.7, torch 2.13, transformers 5.24); "zlib" is compressed/raw size at level 9, a rough difficulty figure
(``domain_stats``). Build times there, on 2 busy cores: languages 6 s, code-kinds 14 s (``json`` imports each
architecture's config module: most of it), skewed 4 s, changelogs 1 s.

``languages``: technical text in four natural languages and three scripts (the demo is English only).

- ``en``: the docstrings of numpy, scipy and torch (read with ``ast``, never imported; test folders left out), one
  document per module file: English numpydoc/Google-style API documentation with parameter tables and doctests,
  not the language reference the demo's ``prose`` is. Falls back to the stdlib docstrings. 0.98 MB, 376
  documents, zlib 0.29.
- ``de``, ``ru``, ``ja``: German (Latin script with umlauts), Russian (Cyrillic, 2 bytes per letter in UTF-8) and
  Japanese (kana and kanji, 3 bytes per character, no spaces between words): the translated manual pages
  (``/usr/share/man/<lang>/man*/``, roff markup stripped to text) and the translated program messages of the
  gettext catalogs (``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``, the ``msgstr`` strings; lists of country,
  language and keyboard names left out): manual pages up to half the cap, messages for the rest. Real technical
  writing, from the OS. 0.99 MB each, ~300 documents, zlib 0.30 / 0.23 / 0.27 (here 1.2 / 0.33 / 0.40 MB of
  manual pages and 2.3 / 3.9 / 2.1 MB of messages to choose from). Without either source: a generated stand-in (the
  stdlib docstrings with letters mapped into the target script: pseudo-German spelling, Latin-to-Cyrillic
  transliteration, one katakana per letter), non-ASCII but not a real language.

``code-kinds``: four kinds of code and configuration, none of them the stdlib Python or C headers of the demo.

- ``cpp``: the C++ headers shipped with torch (``torch/include``: c10, ATen, torch/csrc, pybind11, fmt...; the
  ~30 MB of generated per-operator headers in ``ATen/ops`` left out): templates, namespaces, macros. Large and
  hard. Falls back to any C/C++ headers under site-packages, then to the Python C API headers. 0.98 MB,
  386 documents, zlib 0.21.
- ``pyml``: Python of the deep-learning stack (transformers, torch, peft, accelerate, huggingface_hub,
  safetensors, tokenizers; tests left out): typed, tensor-heavy library code, unlike the stdlib's. 0.98 MB,
  430 documents, zlib 0.18.
- ``json``: the default configuration of every model architecture transformers knows (``CONFIG_MAPPING``, each
  ``to_json_string()``, sorted keys): real ``config.json`` files, numbers and snake_case keys. Falls back to the
  ``.json`` files under site-packages. 0.98 MB (462 of the 822 architectures of transformers 5.24, ~2 KB
  each), zlib 0.08: the most compressible domain.
- ``yaml``: every ``.yaml``/``.yml`` file under site-packages (here torchgen's ``native_functions.yaml`` and
  ``derivatives.yaml``: operator schemas, dispatch tables, C++ formulas in strings), cut at blank lines. Falls
  back to the ``json`` configs dumped with PyYAML. 0.82 MB (all there is), 216 documents, zlib 0.13.

``skewed``: sizes and difficulty far apart, so neither the uniform nor the size-proportional mixture is right.

- ``logs`` (tiny, near-duplicate; ``max_bytes / 20``: 49 KB, 249 documents, zlib 0.11): generated job-scheduler
  log lines from five templates with a handful of values each, one job per document (~200 bytes). Learned almost
  at once; weighting it like the others repeats it dozens of times per epoch of the rest.
- ``table`` (large, easy; the full cap): generated daily weather CSV, one station-month per document, smooth
  seasonal values with small noise. Rigid and predictable: low loss, little to gain from more of it. 0.98 MB,
  965 documents, zlib 0.13 (zlib cannot use the smooth columns; a model can).
- ``mixed`` (hard, diverse; ``0.4 x max_bytes``): 2 KB pieces of every other kind of text file found in the
  installed packages (Fortran, Cython, C, CUDA, CMake, Jinja templates, XSLT, grammars, stubs, CSS, JavaScript,
  Markdown, reST, CSV, INI/TOML...) plus the ``RECORD`` manifests of ``*.dist-info`` (paths with base64 sha256
  hashes: high entropy mixed with words), with an equal byte budget per kind so no one kind dominates. 0.39 MB,
  458 documents, zlib 0.29. Which kinds exist depends strongly on what is installed.
- ``prose`` (medium natural text; ``0.4 x max_bytes``): the docstrings of sympy and networkx, cut before their
  examples (doctests), so mostly English sentences. Falls back to the stdlib docstrings. 0.39 MB, 171
  documents, zlib 0.28.

``changelogs`` (optional set): release histories, which users had and the demo has none of.

- ``debian``: the Debian changelogs of the installed OS packages (``/usr/share/doc/*/changelog.Debian.gz``):
  rigidly templated entries (package, version, urgency, bullet list, maintainer line), groups of whole entries.
  0.98 MB of ~16 MB, 305 documents, zlib 0.27.
- ``news``: upstream release notes (``/usr/share/doc/*/{NEWS,NEWS.md,changelog}.gz``, the first 64 KB of each,
  i.e. the most recent releases; Debian-format ones left out): free-form English about software changes.
  0.98 MB, ~290 documents, zlib 0.33.
- ``pynews``: the Python side: IDLE's ``NEWS.txt``/``NEWS2x.txt``/``HISTORY.txt`` (stdlib) and the
  changelog/history sections of the installed distributions' ``METADATA``. Small: 0.38 MB (all there is),
  111 documents, zlib 0.29.
  Without the OS files, ``debian`` and ``news`` fall back to generated entries (installed distributions' names and
  versions in Debian or NEWS form, a few sentence templates): near-duplicates, not real changelogs.

``CONTINUAL_CASES`` names orderings for continual midtraining (``start``: the domains the model is pretrained on;
``stages``: the domains added one per stage, in order); domains may come from any set.

Output (same conventions as the demo corpora): ``out_dir/<domain>/part-NNNNN.jsonl`` (``{"text": ...}`` per line,
~512 KB per file, atomic writes) and, per domain, ``out_dir/testbed-<domain>.json``, written last, which marks the
domain complete and records the settings it was built with; a domain already built with the same settings is reused
(so sets and cases that share domains, built into one folder, build each domain once; bump ``FORMAT`` when a
builder or ``DOMAIN_SHARE`` changes, since the marker records only the cap and the Python version). Each domain is
at most its cap, selected without randomness and spread evenly over its sources; long files are cut into documents
of a few KB at blank lines (a few hundred documents per domain, so document-level eval splits have many of them).

Use: ``build_domain_set("languages", out_dir)`` -> {domain: [files]};
``start, stages = build_continual_case("docs-code-lang", out_dir)``; ``build_domains(["en", "logs"], out_dir)``.
"""

from __future__ import annotations

import ast
import calendar
import datetime
import gzip
import importlib.util
import json
import logging
import os
import re
import struct
import sysconfig
import zlib
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from opmix.data.demo import docstring_documents, read_utf8, write_corpus
from opmix.data.os_text import mo_messages, roff_to_text
from opmix.errors import OpmixError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1_000_000
FORMAT = 1
MARKER = "testbed-{domain}.json"

DOMAIN_SETS: dict[str, tuple[str, ...]] = {
    "languages": ("en", "de", "ru", "ja"),
    "code-kinds": ("cpp", "pyml", "json", "yaml"),
    "skewed": ("logs", "table", "mixed", "prose"),
    "changelogs": ("debian", "news", "pynews"),
}

# Each domain's cap as a fraction of max_bytes (1.0 when absent): the skewed set's sizes differ on purpose.
DOMAIN_SHARE: dict[str, float] = {"logs": 1 / 20, "mixed": 0.4, "prose": 0.4}

CONTINUAL_CASES: dict[str, dict] = {
    "docs-code-lang": {
        "start": ("en",),
        "stages": ("pyml", "de", "cpp", "news"),
        "about": "the users' failing case: English docs, then code, another natural language, another kind of "
                 "code, changelogs",
    },
    "easy-to-hard": {
        "start": ("prose",),
        "stages": ("json", "yaml", "cpp", "mixed"),
        "about": "domains added from the most to the least compressible (zlib), the new domain ever harder",
    },
    "hard-to-easy": {
        "start": ("prose",),
        "stages": ("mixed", "cpp", "yaml", "json"),
        "about": "the same domains from the least to the most compressible: later stages are easy to learn",
    },
    "dup-in-middle": {
        "start": ("en", "pyml"),
        "stages": ("ja", "logs", "cpp"),
        "about": "a tiny near-duplicate domain in the middle: a whole stage of it repeats it for many epochs; "
                 "what the mixture gives it is mostly wasted",
    },
    "languages": {
        "start": ("en",),
        "stages": ("de", "ru", "ja"),
        "about": "one natural language after another, further from English each time (script, bytes per char)",
    },
}

_SKIP_DIRS = {"__pycache__", "tests", "test", "testing", "_vendor", "vendor", "idle_test"}
_DOC_CHUNK = 8_000
_PARSE_YIELD = 0.2  # docstring bytes per byte of source (numpy/scipy/torch: 0.21): how many files to parse


# ---------------------------------------------------------------------------------------------------- public API


def build_domain_set(name: str, out_dir, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, list[Path]]:
    """Write the domains of ``DOMAIN_SETS[name]`` under ``out_dir`` (each skipped when already built with these
    settings); domain -> its JSONL files, in the set's order."""
    if name not in DOMAIN_SETS:
        raise OpmixError(f"unknown test-bed domain set {name!r}", f"use one of {sorted(DOMAIN_SETS)}")
    return build_domains(DOMAIN_SETS[name], out_dir, max_bytes)


def build_domains(domains: Iterable[str], out_dir, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, list[Path]]:
    """Write the named domains (from any set) under ``out_dir``; domain -> its JSONL files, in the given order."""
    domains = list(domains)
    unknown = [d for d in domains if d not in _BUILDERS]
    if unknown:
        raise OpmixError(f"unknown test-bed domain(s) {unknown}", f"use domains of {sorted(_BUILDERS)}")
    result = {}
    for domain in domains:
        builder = _BUILDERS[domain]
        share = DOMAIN_SHARE.get(domain, 1.0)
        files = write_corpus(out_dir, MARKER.format(domain=domain), FORMAT,
                             {domain: lambda cap, b=builder, s=share: b(max(1, int(cap * s)))},
                             max_bytes, f"test-bed {domain}")
        result[domain] = files[domain]
    return result


def build_continual_case(name: str, out_dir, max_bytes: int = DEFAULT_MAX_BYTES
                         ) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Write the domains of ``CONTINUAL_CASES[name]`` under ``out_dir``; (start domains, stage domains in order),
    each domain -> its JSONL files."""
    if name not in CONTINUAL_CASES:
        raise OpmixError(f"unknown continual test case {name!r}", f"use one of {sorted(CONTINUAL_CASES)}")
    case = CONTINUAL_CASES[name]
    built = build_domains([*case["start"], *case["stages"]], out_dir, max_bytes)
    return {d: built[d] for d in case["start"]}, {d: built[d] for d in case["stages"]}


def domain_stats(files: Iterable[Path]) -> dict:
    """Bytes, documents, zlib compression ratio (compressed / raw, level 9: a rough difficulty figure) and the
    first line of 30 characters or more (else the first non-empty line) of the first document of a built domain."""
    from opmix.data.readers import read_documents

    docs = list(read_documents(list(files)))
    raw = "".join(docs).encode("utf-8")
    lines = [line.strip() for line in docs[0].splitlines() if line.strip()] if docs else []
    first = next((line for line in lines if len(line) >= 30), lines[0] if lines else "")
    return {"bytes": len(raw), "documents": len(docs),
            "zlib_ratio": len(zlib.compress(raw, 9)) / max(1, len(raw)), "sample": first[:100]}


# ---------------------------------------------------------------------------------------------- shared helpers


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _spread(docs: list[str], max_bytes: int) -> list[str]:
    """Documents evenly spread over the whole list, in order, at most ``max_bytes`` in all.

    Unlike an integer stride cut at the cap (``pick_documents``), this reaches the end of the list whatever the
    ratio of the total to the cap, so every source of a domain is represented."""
    sizes = [_utf8_size(d) for d in docs]
    chosen, used = [], 0
    for i in _even(sizes, 0.98 * max_bytes):
        if used + sizes[i] <= max_bytes:
            chosen.append(docs[i])
            used += sizes[i]
    return chosen


def _even(sizes: list[float], target: float) -> list[int]:
    """Indices of items worth about ``target`` bytes, spread evenly in byte space: item i is kept when the bytes
    kept so far plus half of it stay within target/total of the bytes seen so far (items much larger than that
    share are passed over). At least one item (the smallest) when there are any."""
    total = sum(sizes)
    if total <= target:
        return list(range(len(sizes)))
    share, kept, seen, chosen = target / total, 0.0, 0.0, []
    for i, size in enumerate(sizes):
        seen += size
        if kept + size / 2 <= share * seen:
            chosen.append(i)
            kept += size
    if not chosen and sizes:
        chosen = [min(range(len(sizes)), key=lambda i: (sizes[i], i))]
    return chosen


def _thin(items: list, sizes: list[float], max_bytes: int, factor: float = 2.0) -> list:
    """The items to read when each gives about sizes[i] bytes of text and max_bytes are needed: about ``factor``
    times the cap's worth, evenly spread (``_spread`` cuts at the cap later)."""
    return [items[i] for i in _even(sizes, factor * max_bytes)]


def _chunks(text: str, limit: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` UTF-8 bytes, at blank lines where possible, else at line ends
    (a single longer line is cut by characters). Whitespace-only pieces are dropped."""
    units: list[str] = []
    for para in re.split(r"(?<=\n)(?=[ \t]*\n)", text):
        if _utf8_size(para) <= limit:
            units.append(para)
            continue
        for line in para.splitlines(keepends=True):
            while _utf8_size(line) > limit:
                units.append(line[: limit // 4])
                line = line[limit // 4:]
            units.append(line)
    pieces, current, size = [], [], 0
    for unit in units:
        unit_size = _utf8_size(unit)
        if current and size + unit_size > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(unit)
        size += unit_size
    if current:
        pieces.append("".join(current))
    return [p.strip("\n") for p in pieces if p.strip()]


def _package_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _site_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    dirs = []
    for key in ("purelib", "platlib"):
        folder = Path(paths[key])
        if folder.is_dir() and folder not in dirs:
            dirs.append(folder)
    return dirs


def _walk(root: Path, keep: Callable[[str], bool], skip: Iterable[str] = ()) -> list[Path]:
    """Files under ``root`` whose name passes ``keep``, sorted by their path relative to root; folders named in
    _SKIP_DIRS or ``skip`` (a name or a relative path), hidden folders and symlinked files left out."""
    skip = set(skip)
    found = []
    for folder, subdirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and d not in skip and not d.startswith(".")
                      and os.path.normpath(os.path.join(rel, d)) not in skip]
        for n in names:
            path = os.path.join(folder, n)
            if keep(n) and not os.path.islink(path):
                found.append(Path(path))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _package_files(packages: Iterable[str], suffixes: tuple[str, ...], skip: Iterable[str] = ()) -> list[Path]:
    files = []
    for name in packages:
        root = _package_dir(name)
        if root is not None and root.is_dir():
            files.extend(_walk(root, lambda n: n.endswith(suffixes), skip))
    return files


def _read_files_as_chunks(files: list[Path], max_bytes: int, limit: int) -> list[str]:
    """Read about twice ``max_bytes`` of the files (evenly spread), cut each into chunks, spread to the cap."""
    chosen = _thin(files, [f.stat().st_size for f in files], max_bytes)
    docs = []
    for path in chosen:
        text = read_utf8(path)
        if text and text.strip():
            docs.extend(_chunks(text, limit))
    return _spread(docs, max_bytes)


class _Rng:
    """splitmix64: a fixed, tiny, platform-independent random stream for the generated domains."""

    _MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.state = seed & self._MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self._MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def choice(self, seq):
        return seq[self.below(len(seq))]


# ------------------------------------------------------------------------------------------------- docstrings


def _definitions(body: list[ast.stmt]) -> Iterable[ast.AST]:
    """The classes and functions of a body and, recursively, of their bodies (not those nested in other
    statements: walking only definitions is several times faster than ``ast.walk``)."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
            yield from _definitions(node.body)


def _module_docstrings(path: Path, prose_only: bool) -> str | None:
    text = read_utf8(path)
    try:
        tree = ast.parse(text or "")
    except (SyntaxError, ValueError):
        return None
    strings = []
    for node in [tree, *_definitions(tree.body)]:
        doc = ast.get_docstring(node)
        if doc and prose_only:
            doc = re.split(r"^\s*(?:>>>|Examples?\s*$|Example usage)", doc, maxsplit=1, flags=re.M)[0].strip()
        if doc and len(doc) > 40:
            strings.append(doc)
    return "\n\n".join(strings) if strings else None


def _docstring_domain(packages: tuple[str, ...], max_bytes: int, prose_only: bool) -> list[str]:
    files = _package_files(packages, (".py",))
    if not files:
        log.warning("none of %s is installed; the stdlib docstrings stand in", ", ".join(packages))
        docs = docstring_documents()
        if prose_only:
            docs = [re.split(r"^\s*>>>", d, maxsplit=1, flags=re.M)[0] for d in docs]
        return _spread([c for d in docs for c in _chunks(d, _DOC_CHUNK)], max_bytes)
    # parsing is the slow part (~1 s per MB of source): parse about 1.3x what the cap needs
    chosen = _thin(files, [f.stat().st_size * _PARSE_YIELD for f in files], max_bytes, factor=1.3)
    docs = []
    for path in chosen:
        text = _module_docstrings(path, prose_only)
        if text:
            docs.extend(_chunks(text, _DOC_CHUNK))
    return _spread(docs, max_bytes)


def _en_documents(max_bytes: int) -> list[str]:
    return _docstring_domain(("numpy", "scipy", "torch"), max_bytes, prose_only=False)


def _prose_documents(max_bytes: int) -> list[str]:
    return _docstring_domain(("sympy", "networkx"), max_bytes, prose_only=True)


# ------------------------------------------------------------------------------- other natural languages (OS)

_MAN_ROOT = Path("/usr/share/man")
_LOCALE_ROOT = Path("/usr/share/locale")
_SKIP_CATALOGS = ("iso_", "xkeyboard-config")  # lists of country, language and keyboard names, not prose
def _man_documents(lang: str) -> list[str]:
    root = _MAN_ROOT / lang
    if not root.is_dir():
        return []
    seen, docs = set(), []
    for path in _walk(root, lambda n: True):
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            source = raw.decode("utf-8")
        except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, zlib.error):
            continue
        if source.lstrip().startswith(".so "):  # a redirect to another page
            continue
        docs.extend(_chunks(roff_to_text(source), _DOC_CHUNK))
    return docs


def _catalog_documents(lang: str) -> list[str]:
    folder = _LOCALE_ROOT / lang / "LC_MESSAGES"
    if not folder.is_dir():
        return []
    docs = []
    for path in sorted(folder.glob("*.mo")):
        if path.name.startswith(_SKIP_CATALOGS):
            continue
        try:
            messages = mo_messages(path)
        except (OSError, struct.error):
            continue
        if messages:
            docs.extend(_chunks("\n".join(messages), 3_000))
    return docs


_LATIN = "abcdefghijklmnopqrstuvwxyz"
_PSEUDO = {  # one letter of the script per Latin letter (case folded where the script has none)
    "ru": str.maketrans(_LATIN + _LATIN.upper(), "абцдефгхийклмнопкрстувшхыз" + "АБЦДЕФГХИЙКЛМНОПКРСТУВШХЫЗ"),
    "ja": str.maketrans(_LATIN + _LATIN.upper(), "アブクドエフグハイジクルムンオプクルストウヴワクヤズ" * 2),
}


def _pseudo_language(lang: str, max_bytes: int) -> list[str]:
    """Generated stand-in for a missing language: the stdlib docstrings with letters mapped into its script."""
    log.warning("no %r manual pages or gettext catalogs in this OS; the %r domain is a generated stand-in "
                "(stdlib docstrings mapped into the script), not real text", lang, lang)
    docs = [c for d in docstring_documents() for c in _chunks(d, _DOC_CHUNK)]
    if lang in _PSEUDO:
        docs = [d.translate(_PSEUDO[lang]) for d in docs]
    else:
        def german(text: str) -> str:
            for a, b in (("ae", "ä"), ("oe", "ö"), ("ue", "ü"), ("ss", "ß"), ("th", "z"), ("c", "k"), ("w", "v")):
                text = text.replace(a, b)
            return text
        docs = [german(d) for d in docs]
    return _spread(docs, max_bytes)


def _language_domain(lang: str) -> Callable[[int], list[str]]:
    def build(max_bytes: int) -> list[str]:
        """Manual pages up to half the cap, program messages for the rest (catalogs are the larger source)."""
        pages, messages = _man_documents(lang), _catalog_documents(lang)
        if not pages and not messages:
            return _pseudo_language(lang, max_bytes)
        docs = _spread(pages, max_bytes // 2 if messages else max_bytes)
        return docs + _spread(messages, max_bytes - sum(_utf8_size(d) for d in docs))

    return build


# ---------------------------------------------------------------------------------------------- kinds of code


def _cpp_documents(max_bytes: int) -> list[str]:
    header = (".h", ".hpp", ".cuh", ".hxx")
    torch = _package_dir("torch")
    files = _walk(torch / "include", lambda n: n.endswith(header), skip={"ATen/ops"}) if torch else []
    if not files:
        log.warning("torch's C++ headers are missing; using the C/C++ headers found under site-packages")
        files = [f for root in _site_dirs() for f in _walk(root, lambda n: n.endswith(header))]
    if not files:
        files = _walk(Path(sysconfig.get_paths()["include"]), lambda n: n.endswith(header))
    return _read_files_as_chunks(files, max_bytes, _DOC_CHUNK)


def _pyml_documents(max_bytes: int) -> list[str]:
    packages = ("transformers", "torch", "peft", "accelerate", "huggingface_hub", "safetensors", "tokenizers")
    return _read_files_as_chunks(_package_files(packages, (".py",)), max_bytes, _DOC_CHUNK)


def _hf_configs(max_bytes: int) -> list[str]:
    try:
        from transformers import CONFIG_MAPPING
        from transformers.utils import logging as hf_logging
    except ImportError:
        return []
    import warnings

    names = sorted(CONFIG_MAPPING.keys())
    # importing each config's module is the slow part (~20 ms each): take about 1.15x what the cap needs
    names = _thin(names, [2_000] * len(names), max_bytes, factor=1.15)
    docs = []
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in names:
                try:
                    config = CONFIG_MAPPING[name]()
                    docs.append(config.to_json_string(use_diff=False).strip())
                except Exception:  # a config that cannot be built with its defaults (optional dependencies...)
                    continue
    finally:
        hf_logging.set_verbosity(verbosity)
    return docs


def _json_documents(max_bytes: int) -> list[str]:
    docs = _hf_configs(max_bytes)
    if not docs:
        log.warning("transformers' model configs are unavailable; using the .json files under site-packages")
        files = [f for root in _site_dirs() for f in _walk(root, lambda n: n.endswith(".json"))]
        return _read_files_as_chunks(files, max_bytes, _DOC_CHUNK)
    return _spread([c for d in docs for c in _chunks(d, _DOC_CHUNK)], max_bytes)


def _yaml_documents(max_bytes: int) -> list[str]:
    files = [f for root in _site_dirs() for f in _walk(root, lambda n: n.endswith((".yaml", ".yml")))]
    docs = _read_files_as_chunks(files, max_bytes, 4_000)
    if docs:
        return docs
    import yaml

    log.warning("no YAML files under site-packages; using the json domain's configs dumped as YAML")
    dumped = [yaml.safe_dump(json.loads(d), sort_keys=True) for d in _hf_configs(max_bytes)]
    return _spread(dumped, max_bytes)


# -------------------------------------------------------------------------------------- skewed: generated


def _logs_documents(max_bytes: int) -> list[str]:
    """One job's life per document: few templates, few values; a near-duplicate domain."""
    rng = _Rng(20240501)
    clock = datetime.datetime(2024, 5, 1, 8, 0, 0)
    docs, total, job = [], 0, 1000
    while total < max_bytes:
        job += 1
        worker = rng.below(4) + 1
        lines = []

        def emit(level: str, message: str, seconds: int) -> None:
            nonlocal clock
            clock += datetime.timedelta(seconds=seconds)
            lines.append(f"{clock:%Y-%m-%d %H:%M:%S} {level:<5} {message}")

        emit("INFO", f"scheduler: job {job} queued on worker-{worker}", rng.below(3) + 1)
        emit("INFO", f"worker-{worker}: job {job} started", 1)
        outcome = rng.below(10)
        if outcome == 0:
            emit("WARN", f"worker-{worker}: job {job} retry 1/3 after timeout", 30)
        if outcome == 1:
            emit("ERROR", f"worker-{worker}: job {job} failed: disk quota exceeded", rng.below(5) + 1)
        else:
            seconds = rng.choice((2, 3, 5, 8))
            emit("INFO", f"worker-{worker}: job {job} finished in {seconds}.0 s (exit 0)", seconds)
        doc = "\n".join(lines)
        docs.append(doc)
        total += _utf8_size(doc)
    return _spread(docs, max_bytes)


_STATIONS = ("ALPHA", "BRAVO", "CEDAR", "DELTA", "EAGLE", "FJORD", "GRANITE", "HARBOR")
_MEAN_TEMP = (1.5, 2.5, 6.0, 10.0, 14.5, 18.0, 20.0, 19.5, 15.5, 10.5, 5.5, 2.5)


def _table_documents(max_bytes: int) -> list[str]:
    """Daily weather rows, one station-month per document: rigid, smooth, predictable."""
    rng = _Rng(1990)
    docs, total, year, month = [], 0, 1990, 1
    while total < max_bytes:
        for s, station in enumerate(_STATIONS):
            rows = ["date,station,temp_c,rain_mm,wind_kmh,status"]
            for day in range(1, calendar.monthrange(year, month)[1] + 1):
                temp = _MEAN_TEMP[month - 1] + s * 0.5 + (rng.below(5) - 2) * 0.5
                rain = 0.0 if rng.below(4) else rng.below(8) * 0.5
                wind = 10 + rng.below(3) * 5
                rows.append(f"{year:04d}-{month:02d}-{day:02d},{station},{temp:.1f},{rain:.1f},{wind},ok")
            doc = "\n".join(rows)
            docs.append(doc)
            total += _utf8_size(doc)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return _spread(docs, max_bytes)


_MIXED_SUFFIXES = (".f", ".f90", ".pyf", ".pyx", ".pxi", ".pxd", ".pyi", ".c", ".cc", ".cpp", ".cu", ".cmake",
                   ".jinja", ".xsl", ".lark", ".g4", ".css", ".js", ".html", ".md", ".rst", ".txt", ".csv", ".ini",
                   ".cfg", ".toml", ".in", ".sh")


def _mixed_documents(max_bytes: int) -> list[str]:
    """2 KB pieces of every other kind of text file in site-packages and of the dist-info RECORD manifests, with an
    equal byte budget per kind (water-filling: kinds with less text give their share to the others)."""
    groups: dict[str, list[Path]] = {}
    for root in _site_dirs():
        for path in _walk(root, lambda n: n.endswith(_MIXED_SUFFIXES) or n == "RECORD"):
            kind = "RECORD" if path.name == "RECORD" else path.suffix
            groups.setdefault(kind, []).append(path)
    budget, remaining = {}, max_bytes
    sizes = {k: sum(f.stat().st_size for f in files) for k, files in groups.items()}
    for i, kind in enumerate(sorted(groups, key=lambda k: (sizes[k], k))):
        budget[kind] = min(sizes[kind], remaining // (len(groups) - i))
        remaining -= budget[kind]
    picked = {k: _read_files_as_chunks(groups[k], budget[k], 2_000) for k in sorted(groups) if budget[k] > 0}
    docs = []  # interleaved, so every part of the domain holds every kind
    for i in range(max((len(d) for d in picked.values()), default=0)):
        docs.extend(d[i] for d in picked.values() if i < len(d))
    return _spread(docs, max_bytes)


# ------------------------------------------------------------------------------------------------- changelogs

_DOC_ROOT = Path("/usr/share/doc")
_DEBIAN_ENTRY = re.compile(r"\S[^\n]*\([^)\n]*\)[^\n]*;\s*urgency=")  # "pkg (1.2-3) unstable; urgency=low"
_NEWS_HEAD = 64_000


def _gzip_head(path: Path, limit: int) -> str | None:
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read(limit)
        return raw.decode("utf-8", errors="ignore") if raw else None
    except (OSError, EOFError, zlib.error):
        return None


def _os_changelogs(patterns: tuple[str, ...]) -> list[Path]:
    if not _DOC_ROOT.is_dir():
        return []
    seen, files = set(), []
    for package in sorted(p for p in _DOC_ROOT.iterdir() if p.is_dir()):
        for name in patterns:
            path = package / name
            real = os.path.realpath(path)
            if path.is_file() and real not in seen:
                seen.add(real)
                files.append(path)
    return files


def _generated_changelog(style: str, max_bytes: int) -> list[str]:
    log.warning("no OS changelogs in %s; the %r domain is generated from the installed distributions", _DOC_ROOT,
                style)
    rng = _Rng(7)
    notes = ("Fix a crash when the input is empty.", "Add support for Python 3.12.", "Update the documentation.",
             "Drop support for Python 3.7.", "Speed up loading of large files.", "New upstream release.")
    dists = sorted({(d.metadata.get("Name") or "", d.version or "0") for d in metadata.distributions()})
    docs = []
    for name, version in (d for d in dists if d[0]):
        items = "\n".join(f"  * {rng.choice(notes)}" for _ in range(rng.below(3) + 1))
        if style == "debian":
            docs.append(f"{name.lower()} ({version}-1) unstable; urgency=medium\n\n{items}\n\n"
                        f" -- Maintainer <maint@example.org>  Mon, 0{rng.below(9) + 1} Jan 2024 12:00:00 +0000")
        else:
            docs.append(f"{name} {version}\n{'=' * (len(name) + len(version) + 1)}\n\n{items}")
    return _spread(docs, max_bytes)


def _debian_documents(max_bytes: int) -> list[str]:
    files = _os_changelogs(("changelog.Debian.gz",))  # not the per-architecture binNMU boilerplate
    if not files:
        return _generated_changelog("debian", max_bytes)
    docs = []
    for path in _thin(files, [f.stat().st_size * 3.5 for f in files], max_bytes):
        text = _gzip_head(path, 1 << 30)
        if not text:
            continue
        entries = re.split(r"\n(?=" + _DEBIAN_ENTRY.pattern + ")", text)
        docs.extend(c for e in _group(entries, 4_000) for c in _chunks(e, 4_000))
    return _spread(docs, max_bytes)


def _group(entries: list[str], limit: int) -> list[str]:
    """Consecutive entries joined into documents of up to ``limit`` bytes (a longer entry stays alone)."""
    docs, current, size = [], [], 0
    for entry in (e.strip("\n") for e in entries):
        if not entry.strip():
            continue
        if current and size + _utf8_size(entry) > limit:
            docs.append("\n\n".join(current))
            current, size = [], 0
        current.append(entry)
        size += _utf8_size(entry) + 2
    if current:
        docs.append("\n\n".join(current))
    return docs


def _news_documents(max_bytes: int) -> list[str]:
    files = _os_changelogs(("NEWS.gz", "NEWS.md.gz", "changelog.gz"))
    if not files:
        return _generated_changelog("news", max_bytes)
    docs = []
    for path in _thin(files, [min(f.stat().st_size * 3.5, _NEWS_HEAD) for f in files], max_bytes):
        text = _gzip_head(path, _NEWS_HEAD)
        if text and not _DEBIAN_ENTRY.match(text):  # a Debian-native package's changelog.gz is a Debian one
            text = text[: text.rfind("\n") + 1] or text  # the cut may fall inside a line
            docs.extend(_chunks(text, 4_000))
    return _spread(docs, max_bytes)


_HISTORY_HEADING = re.compile(r"^(?:#+\s*|\.\.\s*)?(?:change\s*log|changes|history|release\s+(?:notes|history)|"
                              r"what'?s\s+new|news)\b.*$", re.I | re.M)


def _pynews_documents(max_bytes: int) -> list[str]:
    texts = []
    idle = Path(sysconfig.get_paths()["stdlib"]) / "idlelib"
    for name in ("NEWS.txt", "NEWS2x.txt", "HISTORY.txt"):
        text = read_utf8(idle / name)
        if text:
            texts.append(text)
    readmes = {}
    for dist in metadata.distributions():
        name, text = dist.metadata.get("Name"), dist.read_text("METADATA")
        if name and text and name.lower() not in readmes:
            readmes[name.lower()] = text
    for name in sorted(readmes):
        match = _HISTORY_HEADING.search(readmes[name], readmes[name].find("\n\n"))
        if match and len(readmes[name]) - match.start() > 500:
            texts.append(readmes[name][match.start():])
    docs = [c for t in texts for c in _chunks(t, 4_000)]
    return _spread(docs, max_bytes) if docs else _generated_changelog("news", max_bytes)


_BUILDERS: dict[str, Callable[[int], list[str]]] = {
    "en": _en_documents,
    "de": _language_domain("de"),
    "ru": _language_domain("ru"),
    "ja": _language_domain("ja"),
    "cpp": _cpp_documents,
    "pyml": _pyml_documents,
    "json": _json_documents,
    "yaml": _yaml_documents,
    "logs": _logs_documents,
    "table": _table_documents,
    "mixed": _mixed_documents,
    "prose": _prose_documents,
    "debian": _debian_documents,
    "news": _news_documents,
    "pynews": _pynews_documents,
}
assert all(d in _BUILDERS for ds in DOMAIN_SETS.values() for d in ds)
