"""Printing results: one formatter for every command that prints rows (``--format``)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import click

from stores import files

from ..names import escape_controls


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)  # strict JSON has no NaN
    if isinstance(v, Path):
        return str(v)
    return v


def _cell(v, max_width: int) -> str:
    if isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, list):
        s = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:8]) + (", ...]" if len(v) > 8 else "]")
    else:
        s = "NULL" if v is None else str(v)
    s = escape_controls(s.replace("\t", " "))  # newlines, NUL, escape sequences, bidi overrides: shown as escapes
    if len(s) <= max_width:
        return s
    keep = max_width - 1  # cut the middle: paths and texts keep their start and their end
    return s[: keep // 3] + "…" + s[len(s) - (keep - keep // 3):]


def format_rows(cols: list[str], rows: list[tuple] | list[list], fmt: str = "table", max_width: int = 60) -> str:
    """Rows as an aligned table, CSV, a JSON array of objects, or JSON lines."""
    if fmt in ("json", "jsonl"):
        objs = [{c: _json_value(v) for c, v in zip(cols, r)} for r in rows]
        if fmt == "jsonl":
            return "".join(json.dumps(o, default=str, ensure_ascii=False) + "\n" for o in objs)
        return json.dumps(objs, default=str, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")  # as DuckDB's COPY and pandas write it, not \r\n
        w.writerow(cols)
        w.writerows([["" if v is None else v for v in r] for r in rows])
        return buf.getvalue()
    cells = [[_cell(v, max_width) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def format_records(records: list[dict], fmt: str, columns: list[str] | None = None) -> str:
    cols = columns or (list(records[0]) if records else [])
    return format_rows(cols, [[r.get(c) for c in cols] for r in records], fmt)


def emit(text: str, output: str | Path | None = None) -> None:
    """Print, or write the same text to ``output`` (atomically)."""
    if output is None:
        click.echo(text, nl=False)
    else:
        files.write_text(output, text)
        click.echo(f"wrote {output}", err=True)
