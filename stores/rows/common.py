"""Inserting by column name and fetching rows as dicts: the helpers every section uses."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa

if TYPE_CHECKING:
    from ..catalog import Catalog


def insert_arrow(cat: Catalog, table: str, data: pa.Table, *, replace: bool = False) -> int:
    """Insert an Arrow table into ``table`` by column name. Returns the number of rows."""
    if data.num_rows == 0:
        return 0
    cols = ", ".join(f'"{c}"' for c in data.column_names)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    arrow_rows = data  # noqa: F841  (DuckDB's replacement scan reads this local by name)
    cat.con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM arrow_rows")
    return data.num_rows


def insert_columns(cat: Catalog, table: str, columns: dict[str, Any], *, replace: bool = False) -> int:
    """Insert parallel columns (lists, numpy arrays or Arrow arrays) by name."""
    return insert_arrow(cat, table, pa.table(columns), replace=replace)


def fetch_dicts(cat: Catalog, sql: str, args: Sequence | None = None) -> list[dict]:
    cur = cat.con.execute(sql, list(args) if args is not None else None)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
