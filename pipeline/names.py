"""Names and texts: one cleaning rule, one identity rule and one control-character rule, used
by every stage and reader.

Control characters (C0 and C1, DEL, Unicode line/paragraph separators and bidirectional
overrides, which can make a printed name lie about itself) are refused in class names,
labels and attribute texts that come from a user's file, with a one-line error naming where
they are; texts from an LLM have them replaced by spaces; what is printed has them escaped.
Whitespace is not refused where it is harmless: in attribute texts line breaks and tabs
collapse to one space (:func:`clean_text`), in names a tab counts as a space.
"""
from __future__ import annotations

import re
import unicodedata

from .errors import InputError

_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BLANKS_RE = re.compile(r"\s+")


def control_characters(text: str) -> list[str]:
    """The control characters in ``text`` (in order, each once)."""
    return list(dict.fromkeys(_CONTROL_RE.findall(str(text))))


def describe_char(ch: str) -> str:
    """``U+0000 NUL``-style name of a character (for messages)."""
    names = {"\x00": "NUL", "\n": "newline", "\r": "carriage return", "\x1b": "escape", "\x7f": "DEL"}
    name = names.get(ch) or unicodedata.name(ch, "") or "control character"
    return f"U+{ord(ch):04X} {name}"


def escape_controls(text: str) -> str:
    """Control characters as ``\\n``, ``\\x00``, ``\\u202e`` escapes: safe to print on one line."""
    return _CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def strip_controls(text: str) -> str:
    """Control characters replaced by spaces, blanks collapsed (for untrusted generated text)."""
    return _BLANKS_RE.sub(" ", _CONTROL_RE.sub(" ", str(text))).strip()


def check_text(text: str, where: str | None = None, what: str = "text") -> str:
    """Refuse ``text`` if it holds a control character: one line naming ``where`` and the character."""
    bad = control_characters(text)
    if bad:
        shown = escape_controls(text)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}the {what} '{shown}' contains {', '.join(describe_char(c) for c in bad[:3])}; "
                         "control characters are not allowed, remove them.")
    return text


def clean_text(text: str, where: str | None = None, what: str = "attribute text") -> str:
    """An attribute text from a file: line breaks and tabs are blanks in prose (CuPL's sentences
    hold them; CLIP's tokenizer collapses whitespace anyway), so runs of whitespace become one
    space; any other control character is refused with one line naming ``where``."""
    return check_text(_BLANKS_RE.sub(" ", str(text)).strip(), where, what)


def _collapse(name: str) -> str:
    return _BLANKS_RE.sub(" ", str(name).replace("_", " ")).strip()


def clean_class_name(name: str, where: str | None = None) -> str:
    """DCLIP's wordify ('_' -> space) plus whitespace collapsing; case is kept for display.

    A name with a control character is refused (:class:`InputError` naming ``where``, e.g.
    "classes.txt: line 3" or "attrs.json: key 'cat'").
    """
    check_text(str(name), where, "class name")
    return _collapse(name)


def norm_class_name(name: str) -> str:
    """The identity of a class: names equal after this normalisation are the same class.

    Never raises (it also reads labels already stored). The SQL view ``class_confusions``
    applies the same rule to image labels.
    """
    return _collapse(name).lower()


# ---- class prompt sets ------------------------------------------------------------------
CLIP_TEMPLATE = "a photo of a {}."  # CLIP's class prompt
PHOTO_PROMPTS = "clip"  # the template set of the CLIP_TEMPLATE class prompts (named after CLIP's prompt)
