"""``pipeline sql``: read-only SQL over the store."""
from __future__ import annotations

import duckdb

from stores.catalog import Catalog

from .errors import InputError


def run_sql(cat: Catalog, query: str, params: dict | None = None, limit: int | None = None) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of a query on the store's read-only connection."""
    try:
        rel = cat.con.execute(query, params or None)
        cols = [d[0] for d in rel.description] if rel.description else []
        rows = (rel.fetchmany(limit) if limit else rel.fetchall()) if cols else []
    except duckdb.Error as exc:
        msg = str(exc).splitlines()[0]
        if "read-only" in msg.lower():
            msg += " (pipeline sql is read-only; stages write the store)"
        raise InputError(f"SQL error: {msg}") from None
    return cols, rows
