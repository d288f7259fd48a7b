"""``pipeline sql``: read-only SQL over the store.

The catalog is opened with ``Catalog(sandbox=True)`` (:mod:`stores.sandbox`): DuckDB's external
access off and its configuration locked, every table and view of the store queryable, files of
the user's own readable only when named with ``--allow-read``. On top of that, one statement per
call, and only statements that read (:func:`stores.sandbox.read_statement`): a ``SELECT 1; COPY
...`` never reaches DuckDB.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb

from stores.catalog import Catalog
from stores.sandbox import SqlRefused, explain_error, read_statement, reader_for, view_name_for

from .errors import InputError

_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.+)")


def parse_allow_read(values) -> list[tuple[str, Path]]:
    """``--allow-read FILE`` or ``NAME=FILE`` -> (view name, absolute path); the file must exist."""
    out: list[tuple[str, Path]] = []
    names: set[str] = set()
    for value in values or ():
        text = str(value)
        m = _NAMED.fullmatch(text)
        if m and not Path(text).exists():
            name, path = m.group(1), Path(m.group(2))
        else:
            path = Path(text)
            name = view_name_for(path)
        path = path.expanduser().resolve()
        if not path.is_file():
            raise InputError(f"--allow-read {value}: no such file (give a CSV, TSV, Parquet or JSON file).")
        if reader_for(path) is None:
            raise InputError(f"--allow-read {value}: unknown kind of file; name it .csv, .tsv, .parquet, .json or "
                             f".jsonl (optionally .gz).")
        if name.lower() in names:
            raise InputError(f"--allow-read {value}: a view named {name!r} is already allowed; pass NAME=FILE.")
        names.add(name.lower())
        out.append((name, path))
    return out


def run_sql(cat: Catalog, query: str, params: dict | None = None, limit: int | None = None) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of one read-only statement on the store's connection."""
    try:
        statement = read_statement(cat.con, query)
    except SqlRefused as exc:
        raise InputError(str(exc)) from None
    try:
        rel = cat.con.execute(statement, params or None)
        cols = [d[0] for d in rel.description] if rel.description else []
        rows = (rel.fetchmany(limit) if limit else rel.fetchall()) if cols else []
    except duckdb.Error as exc:
        raise InputError(explain_error(exc)) from None
    return cols, rows
