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

import calendar
import logging
import sysconfig
from importlib import metadata
from pathlib import Path

from opmix.data.demo import docstring_documents, pick_documents, read_utf8, write_corpus

log = logging.getLogger(__name__)

CONTINUAL_DEMO_DOMAINS = ("c", "docs", "calendar", "packages")
MARKER = "continual_demo.json"
FORMAT = 1


def _c_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["include"])
    files = sorted(root.rglob("*.h"), key=lambda p: p.relative_to(root).parts)
    return [text for text in (read_utf8(f) for f in files) if text and text.strip()]


def _calendar_documents() -> list[str]:
    return [calendar.TextCalendar(firstweekday=year % 7).formatyear(year) for year in range(1600, 2600)]


def _package_documents() -> list[str]:
    texts = {}
    for dist in metadata.distributions():
        name, text = dist.metadata.get("Name"), dist.read_text("METADATA")
        if name and text and name.lower() not in texts:
            texts[name.lower()] = text
    return [texts[name] for name in sorted(texts)]


def build_continual_demo_corpus(out_dir, max_bytes: int = 800_000) -> dict[str, list[Path]]:
    """Write the four domains under ``out_dir`` (skipped when already built with these settings); domain -> files."""
    builders = {
        "c": lambda cap: pick_documents(_c_documents(), cap),
        "docs": lambda cap: pick_documents(docstring_documents(), cap),
        "calendar": lambda cap: pick_documents(_calendar_documents(), cap),
        "packages": lambda cap: pick_documents(_package_documents(), cap),
    }
    return write_corpus(out_dir, MARKER, FORMAT, {d: builders[d] for d in CONTINUAL_DEMO_DOMAINS}, max_bytes,
                        "continual demo")
