"""Reading what users hand us, bounded: size checked before a byte is read, only regular
files, JSON nesting checked before Python's recursive parser sees it.

* :func:`read_bytes_bounded` / :func:`read_text_bounded`: ``os.stat`` first (a 4 GB sparse
  file named ``.jpg`` is refused without reading it), then at most ``limit + 1`` bytes are
  read (a file that grows meanwhile is refused too). FIFOs, devices and folders are refused:
  reading them could block forever or never end.
* :func:`json_depth` / :func:`loads_json`: ``json.loads`` recurses once per ``[`` or ``{``, so
  100,000 of them raise ``RecursionError``; the depth is measured first, by a linear scan
  that skips string literals, and anything deeper than ``max_depth`` is refused with one line.
* :class:`ByteSize`: the command-line type of the size limits (``256M``, ``4G``, ``1048576``).
"""
from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from .errors import InputError

MiB = 1 << 20
DEFAULT_MAX_IMAGE_BYTES = 256 * MiB  # a 100-megapixel RGB TIFF is ~300 MB; JPEGs are far smaller
DEFAULT_MAX_FILE_BYTES = 256 * MiB  # attribute JSON, class lists, boxes, templates (ImageNet CuPL: ~10 MB)
# bounds on what one LLM answer may cost (issue 21: a 50 MB answer took 86 s and 7.8 GB)
MAX_ANSWER_BYTES = 1 << 20  # a response body larger than this is an unusable answer (--max-answer-bytes)
MAX_ITEM_CHARS = 300  # an attribute longer than this is dropped (--max-item-chars)
MAX_ITEMS_PER_CLASS = 200  # attributes kept per class over all samples (--max-items-per-class)
MAX_JSON_DEPTH = 64  # our files nest 2-3 levels; json's own limit is Python's recursion limit (~1000)


class JSONTooDeep(ValueError):
    """JSON nested deeper than allowed (raised before parsing)."""

    def __init__(self, depth: int, max_depth: int):
        super().__init__(f"nested deeper than {max_depth} levels (at least {depth})")
        self.depth, self.max_depth = depth, max_depth


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def regular_file_size(path: str | os.PathLike) -> int:
    """The size of a regular file; OSError for a missing one, ValueError for anything else
    (a folder, a FIFO, a device, a socket)."""
    st = os.stat(path)  # follows symlinks: a link to /dev/zero is a device
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise ValueError(f"not a regular file ({kind})")
    return st.st_size


def read_limited(path: str | os.PathLike, limit: int, option: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ValueError (with the reason) for
    anything else. OSError (missing, unreadable) passes through."""
    size = regular_file_size(path)
    hint = f"; {option} allows more" if option else ""
    if size > limit:
        raise ValueError(f"file too large ({human_bytes(size)}, the limit is {human_bytes(limit)}{hint})")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew after the stat
        raise ValueError(f"file too large (over {human_bytes(limit)}{hint})")
    return data


def read_bytes_bounded(path: str | os.PathLike, limit: int = DEFAULT_MAX_FILE_BYTES, *, what: str = "",
                       option: str | None = "--max-file-bytes") -> bytes:
    """:func:`read_limited` with every failure as a one-line :class:`InputError` naming the file."""
    label = f"{what} {path}" if what else str(path)
    try:
        return read_limited(path, limit, option)
    except FileNotFoundError:
        raise InputError(f"{label}: no such file.") from None
    except ValueError as exc:
        raise InputError(f"{label}: {exc}.") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read it ({exc.strerror or exc}).") from None


def decode_utf8(raw: bytes, where: str) -> str:
    """UTF-8 (a BOM is dropped) or a one-line error with the line and the byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{where}: not UTF-8 text (line {line}, byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); re-save it as UTF-8."
        ) from None


def read_text_bounded(path: str | os.PathLike, limit: int = DEFAULT_MAX_FILE_BYTES, *, what: str = "",
                      option: str | None = "--max-file-bytes") -> str:
    label = f"{what} {path}" if what else str(path)
    return decode_utf8(read_bytes_bounded(path, limit, what=what, option=option), label)


# ---- JSON -------------------------------------------------------------------------------
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS_RE = re.compile(r"[\[\]{}]")


def json_depth(text: str, stop_at: int | None = None) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text, string literals skipped; linear time,
    no recursion. Stops early once ``stop_at`` is exceeded. For invalid JSON the count is
    still an upper bound on what ``json.loads`` would recurse into before failing."""
    depth = best = 0
    for m in _BRACKETS_RE.finditer(_STRING_RE.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > best:
                best = depth
                if stop_at is not None and best > stop_at:
                    return best
        else:
            depth = max(depth - 1, 0)
    return best


def loads_json(text: str, *, max_depth: int = MAX_JSON_DEPTH, **kwargs) -> Any:
    """``json.loads`` that refuses deep nesting first (:class:`JSONTooDeep`, a ValueError);
    ``json.JSONDecodeError`` as usual for invalid JSON."""
    if text.count("[") + text.count("{") > max_depth:  # cheap: shallow texts skip the scan
        depth = json_depth(text, stop_at=max_depth)
        if depth > max_depth:
            raise JSONTooDeep(depth, max_depth)
    try:
        return json.loads(text, **kwargs)
    except RecursionError:  # belt and braces: a smaller recursion limit than max_depth
        raise JSONTooDeep(max_depth, max_depth) from None


def load_json_file(path: str | os.PathLike, limit: int = DEFAULT_MAX_FILE_BYTES, *, what: str = "",
                   option: str | None = "--max-file-bytes", max_depth: int = MAX_JSON_DEPTH, **kwargs) -> Any:
    """A JSON file, bounded in size and depth; every failure one line naming the file."""
    label = f"{what} {path}" if what else str(path)
    text = read_text_bounded(path, limit, what=what, option=option)
    try:
        return loads_json(text, max_depth=max_depth, **kwargs)
    except JSONTooDeep as exc:
        raise InputError(f"{label}: JSON {exc}; not a file this command reads.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None


# ---- the command-line type of a size ----------------------------------------------------
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_byte_size(text: str) -> int | None:
    """``256M``, ``4G``, ``1.5GiB``, ``1048576`` -> bytes (binary units); None if not a size."""
    m = _SIZE_RE.match(str(text))
    if not m:
        return None
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return int(value) if value < 2**63 else None
