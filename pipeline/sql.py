"""``pipeline sql``: read-only SQL over the store.

The catalog is opened with ``Catalog(sandbox=True)`` (:mod:`stores.sandbox`): DuckDB's external
access off and its configuration locked, every table and view of the store queryable, files of
the user's own readable only when named with ``--allow-read``. On top of that, one statement per
call, and only statements that read (:func:`stores.sandbox.read_statement`): a ``SELECT 1; COPY
...`` never reaches DuckDB.
"""
from __future__ import annotations

import os
import re
import threading
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


DEFAULT_TIMEOUT = 60.0  # seconds a query may run (``--timeout``)
DEFAULT_MEMORY_LIMIT = "2GiB"  # DuckDB's memory for one query (``--memory-limit``); beyond it, it spills or fails


def run_sql(cat: Catalog, query: str, params: dict | None = None, limit: int | None = None,
            timeout: float | None = DEFAULT_TIMEOUT) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of one read-only statement on the store's connection, stopped
    (``con.interrupt()`` from a timer thread) after ``timeout`` seconds."""
    try:
        statement = read_statement(cat.con, query)
    except SqlRefused as exc:
        raise InputError(str(exc)) from None
    stopped = threading.Event()

    def stop():
        stopped.set()
        cat.con.interrupt()

    timer = threading.Timer(timeout, stop) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        rel = cat.con.execute(statement, params or None)
        cols = [d[0] for d in rel.description] if rel.description else []
        rows = (rel.fetchmany(limit) if limit else rel.fetchall()) if cols else []
    except (duckdb.Error, RuntimeError) as exc:
        if stopped.is_set():
            raise InputError(f"the query was stopped after {timeout:g} s (--timeout SECONDS allows longer; "
                             "--limit or a WHERE clause makes it cheaper).") from None
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise InputError(f"the query needs more memory than --memory-limit allows: {explain_error(exc)}") from None
        if not isinstance(exc, duckdb.Error):
            raise
        raise InputError(explain_error(exc)) from None
    finally:
        if timer is not None:
            timer.cancel()
    return cols, rows


def check_output_outside(output: Path | None, store_root: Path) -> None:
    """``-o`` of ``pipeline sql`` never writes into the store (it would replace a catalog or shard)."""
    if output is None:
        return
    real = Path(os.path.realpath(output))
    root = Path(os.path.realpath(store_root))
    if real == root or root in real.parents:
        raise InputError(f"-o {output} is inside the store {root}; pipeline sql never writes there (write the "
                         "rows elsewhere).")
