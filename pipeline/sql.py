"""``pipeline sql``: read-only SQL over the store, printed as a table, CSV or JSON."""
from __future__ import annotations

import csv
import io
import json

import duckdb

from stores.catalog import Catalog

from .attributes import InputError


def run_sql(cat: Catalog, query: str, params: dict | None = None, fmt: str = "table", max_width: int = 60) -> str:
    try:
        rel = cat.con.execute(query, params or None)
        cols = [d[0] for d in rel.description] if rel.description else []
        rows = rel.fetchall() if cols else []
    except duckdb.Error as exc:
        msg = str(exc).splitlines()[0]
        if "read-only" in msg.lower():
            msg += " (pipeline sql is read-only; stages write the store)"
        raise InputError(f"SQL error: {msg}") from None
    return format_rows(cols, rows, fmt, max_width)


def _cell(v, max_width: int) -> str:
    if isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, list):
        s = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:8]) + (", ...]" if len(v) > 8 else "]")
    else:
        s = "NULL" if v is None else str(v)
    return s if len(s) <= max_width else s[: max_width - 1] + "…"


def format_rows(cols: list[str], rows: list[tuple], fmt: str = "table", max_width: int = 60) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows([["" if v is None else v for v in r] for r in rows])
        return buf.getvalue()
    cells = [[_cell(v, max_width) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"
