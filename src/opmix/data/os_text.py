"""Text out of two documentation formats the operating system ships in other languages: manual pages (roff /
mdoc source, ``roff_to_text``) and gettext message catalogs (``.mo``, ``mo_messages``). Used by the test beds
(``opmix.data.testbed``) for real non-English technical writing."""

from __future__ import annotations

import re
import struct
import unicodedata
from pathlib import Path

_GLYPHS = {
    "em": "\u2014", "en": "\u2013", "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "aq": "'",
    "dq": '"', "bu": "\u2022", "co": "\u00a9", "mi": "-", "hy": "-", "pl": "+", "mu": "\u00d7", ">=": "\u2265",
    "<=": "\u2264", "->": "\u2192", "<-": "\u2190", "ti": "~", "ha": "^", "rs": "\\", "at": "@", "sh": "#",
    "Do": "$", "ba": "|", "ga": "`", "dg": "\u2020", "de": "\u00b0", "tm": "\u2122", "rg": "\u00ae",
    "ss": "\u00df", "Bq": "\u201e", "bq": "\u201a", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039",
    "fc": "\u203a", "aa": "\u00b4", "/l": "\u0142", "/L": "\u0141", "/o": "\u00f8", "/O": "\u00d8",
    "AE": "\u00c6", "ae": "\u00e6", "oe": "\u0153", "OE": "\u0152", "sc": "\u00a7", "ps": "\u00b6",
    "shc": "\u00ad", "char94": "^", "char92": "\\", "eu": "\u20ac", "Eu": "\u20ac",
}
_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327",
            "o": "\u030a", "v": "\u030c"}
_GREEK = dict(zip("abgdezyhiklmncoprstufxqw", "αβγδεζηθικλμνξοπρστυφχψω"))


def _glyph(name: str) -> str:
    """A roff special character (``\\(xx``, ``\\[name]``): named glyphs, accented letters (``:u`` = ü),
    Greek (``*a`` = α) and code points (``u00DF``); unknown ones are dropped."""
    if name in _GLYPHS:
        return _GLYPHS[name]
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    if len(name) == 2 and name[0] == "*" and name[1].lower() in _GREEK:
        letter = _GREEK[name[1].lower()]
        return letter.upper() if name[1].isupper() else letter
    match = re.fullmatch(r"u([0-9A-Fa-f]{4,6})", name)
    if match and int(match.group(1), 16) <= 0x10FFFF:
        return chr(int(match.group(1), 16))
    return ""
_ESCAPE = re.compile(r"\\(\((..)|\[([^\]]*)\]|f(?:\(..|\[[^\]]*\]|.)|s[-+]?\d+|\*(?:\(..|\[[^\]]*\]|.)|"
                     r"n(?:\(..|\[[^\]]*\]|.)|(.))")
_TEXT_MACROS = {"SH", "SS", "B", "I", "SM", "SB", "IP", "TP", "Nm", "Nd", "Ar", "Op", "It", "Xr", "Pa", "Dq",
                "Ql", "Sy", "Em", "Li", "Cm", "Ev", "Va", "Dv", "Fn", "Fa", "Ft", "Sh", "Ss", "Fl", "Ic", "Ad"}
_JOINED_MACROS = {"BR", "BI", "IR", "IB", "RB", "RI"}
_BREAK_MACROS = {"PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "Pp", "Bl", "El", "Bd", "Ed", "SH", "SS",
                 "Sh", "Ss", "It"}


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        glyph = match.group(2) or match.group(3)
        if glyph is not None:
            return _glyph(glyph)
        single = match.group(4)
        if single is None:
            return ""  # font, size, string and register escapes
        return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " ", "&": "", "|": "", "^": "", "%": "", "c": "",
                ":": "", "/": "", ",": "", "t": "\t", "\\": "\\"}.get(single, single)

    return _ESCAPE.sub(replace, text)


def _macro_args(rest: str) -> list[str]:
    return [a if b == "" else b for a, b in re.findall(r'"((?:[^"]|"")*)"|(\S+)', rest)]


def roff_to_text(source: str) -> str:
    """Plain text of a manual page: comments and requests dropped, font and glyph escapes resolved."""
    out: list[str] = []
    skipping = False
    for line in source.splitlines():
        if skipping:  # a macro definition or an ignored block, until ".."
            skipping = line.strip() != ".."
            continue
        if line.startswith((".\\\"", "'\\\"", ".\\#", "\\\"")):
            continue
        line = re.sub(r'\\".*$', "", line)
        if line.startswith((".", "'")):
            match = re.match(r"[.']\s*(\S+)\s*(.*)$", line)
            if not match:
                continue
            name, rest = match.group(1), match.group(2)
            if name in ("de", "ig", "am", "ds"):
                skipping = name != "ds"
                continue
            if name in _BREAK_MACROS:
                out.append("")
            args = _macro_args(rest)
            if name in _JOINED_MACROS:
                out.append(_unescape("".join(args)))
            elif name in _TEXT_MACROS and args and not (name in ("TP", "IP") and args[0].isdigit()):
                words = [_unescape(a) for a in (args[:1] if name == "IP" else args)]
                out.append(("-" if name == "Fl" else "") + " ".join(words))
            if name in ("SH", "SS", "Sh", "Ss"):
                out.append("")
            continue
        out.append(_unescape(line))
    text = "\n".join(out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def mo_messages(path: Path) -> list[str]:
    """The translated strings of a GNU gettext ``.mo`` catalog, in catalog order (untranslated entries, the header
    and translations identical to their original left out; plural forms on separate lines)."""
    data = path.read_bytes()
    if len(data) < 20:
        return []
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(struct.unpack("<I", data[:4])[0])
    if order is None:
        return []
    count, originals, translations = struct.unpack(order + "3I", data[8:20])
    entries = []
    for i in range(count):
        olen, ooff = struct.unpack(order + "2I", data[originals + 8 * i: originals + 8 * i + 8])
        tlen, toff = struct.unpack(order + "2I", data[translations + 8 * i: translations + 8 * i + 8])
        entries.append((data[ooff: ooff + olen], data[toff: toff + tlen]))
    charset = "utf-8"
    for msgid, msgstr in entries:
        if msgid == b"":
            found = re.search(rb"charset=([A-Za-z0-9_.:-]+)", msgstr)
            if found:
                charset = found.group(1).decode("ascii")
    messages = []
    for msgid, msgstr in entries:
        if not msgid or not msgstr:
            continue
        try:
            original, translated = msgid.decode(charset), msgstr.decode(charset)
        except (LookupError, UnicodeDecodeError):
            return []
        original = original.split("\x04")[-1]  # drop a message context
        forms = [f.strip() for f in translated.split("\x00") if f.strip()]
        forms = [f for i, f in enumerate(forms) if f not in forms[:i] and f not in original.split("\x00")]
        if forms:
            messages.append("\n".join(forms))
    return messages


