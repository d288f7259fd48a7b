"""Reading every block of a catalog file, and rebuilding a damaged one from what can be read.

DuckDB checks a block's checksum only when it reads the block, and reads column data lazily:
``SELECT count(*)`` or the schema queries of :mod:`stores.verify` can succeed on a catalog with a
flipped bit in a data block, which the next writer then hits ("computed checksum ... does not
match"). :func:`scan_catalog` reads every column of every row of every table (a hash of each
column, so nothing is sent to Python), which makes DuckDB read -- and checksum -- every data
block in use; the file opening at all means its header and metadata blocks were read.

:func:`rebuild_catalog` makes a new catalog file from a damaged one: the schema (tables, indexes,
views, sequences) from the old file's own definitions, and every table's rows one row group at
a time, so the row groups whose blocks fail their checksum are the only rows lost. Views that
cannot be re-created (the shard views name files) are left to the next writer, which re-creates
them (``Catalog.refresh_views``, migration m004).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

ROW_GROUP = 122_880  # DuckDB's row group size: a checksum failure loses at most this many rows per block


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).splitlines()[0].split()) if str(exc) else type(exc).__name__
    return text[:200]


def _tables(con, catalog: str) -> list[tuple[str, str, str]]:
    """(schema, table, CREATE statement) of every base table of ``catalog``."""
    return con.execute(
        "SELECT schema_name, table_name, sql FROM duckdb_tables() WHERE database_name = ? AND NOT temporary "
        "ORDER BY schema_name, table_name", [catalog]).fetchall()


def _quote(*names: str) -> str:
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


def scan_catalog(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(table, first line of the error) for every table of the connection's database that cannot
    be read in full (a block failing its checksum, a block past the end of the file)."""
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    bad = []
    for schema, table, _ in _tables(con, catalog):
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? AND table_name = ?",
            [catalog, schema, table]).fetchall()]
        if not cols:
            continue
        parts = ", ".join(f"bit_xor(hash({_quote(c)}))" for c in cols)
        try:
            con.execute(f"SELECT count(*), {parts} FROM {_quote(schema, table)}").fetchall()
        except duckdb.Error as exc:
            bad.append((table, _first_line(exc)))
    return bad


@dataclass
class Rebuilt:
    """What :func:`rebuild_catalog` recovered: rows kept and lost per table, objects not re-created."""

    rows: dict[str, int] = field(default_factory=dict)
    lost_rows: dict[str, int] = field(default_factory=dict)  # rows in row groups that could not be read
    skipped: list[str] = field(default_factory=list)  # views/indexes/sequences not re-created


def rebuild_catalog(damaged: Path, target: Path) -> Rebuilt:
    """Write a new catalog ``target`` holding everything of ``damaged`` that can be read.

    Raises ``duckdb.Error`` if ``damaged`` cannot be opened at all (its header or metadata are
    lost: nothing can be recovered from it)."""
    Path(target).unlink(missing_ok=True)
    out = Rebuilt()
    con = duckdb.connect(str(target))
    try:
        con.execute(f"ATTACH '{str(damaged).replace(chr(39), chr(39) * 2)}' AS damaged (READ_ONLY)")
        for (name,) in con.execute("SELECT sql FROM duckdb_sequences() WHERE database_name = 'damaged'").fetchall():
            _try(con, name, out, "a sequence")
        tables = _tables(con, "damaged")
        for schema, table, create in tables:
            if schema != "main":
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
            con.execute(create)
            kept = lost = 0
            total = con.execute(f"SELECT max(rowid) + 1 FROM damaged.{_quote(schema, table)}").fetchone()[0] or 0
            for start in range(0, int(total), ROW_GROUP):
                where = f"rowid >= {start} AND rowid < {start + ROW_GROUP}"
                try:
                    n = con.execute(f"INSERT INTO {_quote(schema, table)} SELECT * FROM damaged.{_quote(schema, table)} "
                                    f"WHERE {where}").fetchone()[0]
                    kept += int(n)
                except duckdb.Error:
                    lost += min(ROW_GROUP, int(total) - start)
            out.rows[table] = kept
            if lost:
                out.lost_rows[table] = lost
        for (sql,) in con.execute("SELECT sql FROM duckdb_indexes() WHERE database_name = 'damaged' AND sql IS NOT NULL"
                                  ).fetchall():
            _try(con, sql, out, "an index")
        for (sql,) in con.execute("SELECT sql FROM duckdb_views() WHERE database_name = 'damaged' AND NOT internal "
                                  "AND NOT temporary").fetchall():
            _try(con, sql, out, "a view")
        con.execute("DETACH damaged")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return out


def _try(con, sql: str, out: Rebuilt, what: str) -> None:
    try:
        con.execute(sql)
    except duckdb.Error:
        out.skipped.append(f"{what}: {' '.join(sql.split())[:80]}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
