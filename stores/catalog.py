"""The store: one directory with ``catalog.duckdb``, Parquet shards and Faiss indexes.

Layout::

    STORE/
      catalog.duckdb          classes, attributes, attribute_embeddings, runs, predictions,
                              alignments, ... (native tables) and views over the shards
      images/part-*.parquet   one row per indexed image     -> view ``images``
      regions/part-*.parquet  one row per region embedding  -> view ``regions``
      faiss/*.index + *.json  Faiss indexes with a provenance sidecar

Shards are written in pairs and committed by their record in the ``shards`` table
(:mod:`stores.shards` explains the protocol); opening a store for writing settles what a killed
writer left (:func:`stores.shards.recover`). A shard that cannot be read is left out of the
views (``Catalog.unreadable_shards``) so the rest of the store stays usable and
``pipeline verify`` can report it.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import duckdb

from .errors import ModelMismatchError, StoreError, StoreVersionError
from .migrations import SCHEMA_VERSION, migrate, pending_migrations

DEFAULT_STORE = "./zsl-store"
CATALOG_FILE = "catalog.duckdb"

# Shard-backed tables: name -> (directory, DuckDB column types of an empty placeholder)
SHARD_TABLES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "images": (
        "images",
        [
            ("image_id", "BIGINT"),
            ("path", "VARCHAR"),
            ("sha256", "VARCHAR"),
            ("width", "INTEGER"),
            ("height", "INTEGER"),
            ("label", "VARCHAR"),
            ("index_run_id", "BIGINT"),
        ],
    ),
    "regions": (
        "regions",
        [
            ("region_id", "BIGINT"),
            ("image_id", "BIGINT"),
            ("kind", "VARCHAR"),
            ("x0", "REAL"),
            ("y0", "REAL"),
            ("x1", "REAL"),
            ("y1", "REAL"),
            ("model", "VARCHAR"),
            ("embedding", "FLOAT[]"),
        ],
    ),
}


def resolve_store_path(path: str | os.PathLike | None) -> Path:
    return Path(path or os.environ.get("ZSL_STORE") or DEFAULT_STORE).expanduser().resolve()


class Catalog:
    """An open store. ``Catalog(path)`` creates and migrates it; ``read_only=True`` never writes."""

    def __init__(self, path: str | os.PathLike | None = None, read_only: bool = False, create: bool = True):
        self.root = resolve_store_path(path)
        self.read_only = read_only
        db_file = self.root / CATALOG_FILE
        if not db_file.exists():
            if read_only or not create:
                raise StoreError(
                    f"No store at {self.root} (no {CATALOG_FILE}); create one with `pipeline build-attributes` "
                    "or `pipeline index-images`, or point --store / ZSL_STORE at an existing store."
                )
            self.root.mkdir(parents=True, exist_ok=True)
        elif not db_file.is_file():
            raise StoreError(f"{db_file} is not a file; --store must be a store directory.")
        self.unreadable_shards: list[Path] = []  # left out of the views (see refresh_views)
        self.recovery = None  # what opening for writing settled (stores.shards.Recovery)
        try:
            self.con = duckdb.connect(str(db_file), read_only=read_only)
        except duckdb.IOException as exc:
            msg = str(exc).splitlines()[0]
            if "lock" in msg.lower():
                raise StoreError(f"Cannot open {db_file}: {msg} (is another pipeline process writing it?)") from exc
            raise StoreError(f"Cannot open {db_file}: {msg}; the catalog is damaged: run `pipeline verify`.") from exc
        except duckdb.Error as exc:
            raise StoreError(f"Cannot open {db_file}: {str(exc).splitlines()[0]}; the catalog is damaged: "
                             "run `pipeline verify`.") from exc
        try:
            self._prepare(read_only)
        except duckdb.Error as exc:  # DuckDB opens lazily: a damaged file fails at the first read
            self.con.close()
            raise StoreError(f"Cannot read {db_file}: {' '.join(str(exc).split())[:200]}; the catalog is damaged: "
                             "run `pipeline verify`.") from exc

    def _prepare(self, read_only: bool) -> None:
        if read_only:
            if pending_migrations(self.con):
                self._check_newer()
                raise StoreVersionError(
                    f"Store {self.root} has an older schema; open it once for writing (e.g. `pipeline catalog migrate`)."
                )
            self._check_newer()
        else:
            self.refresh_views()  # views created by migrations may select from the shard views
            migrate(self.con)
            self.set_meta("schema_version", str(SCHEMA_VERSION))
            self._remove_orphan_shards()
        self.refresh_views()

    def _check_newer(self) -> None:
        # migrate() raises on unknown migrations; in read-only mode do the same check by hand.
        from .migrations import MIGRATIONS, applied_migrations

        known = {m.__name__ for m in MIGRATIONS}
        unknown = [n for n in applied_migrations(self.con) if n not in known]
        if unknown:
            raise StoreVersionError(
                f"This store was written by a newer version of the project (schema has {', '.join(unknown)}); upgrade to open it."
            )

    # ---- basics -------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def is_empty(self) -> bool:
        """Nothing a user would miss: no classes, no indexed images, no runs."""
        try:
            n = self.con.execute("SELECT (SELECT count(*) FROM classes) + (SELECT count(*) FROM runs)").fetchone()[0]
        except duckdb.Error:  # closed connection: decide from the files alone
            n = 0
        return n == 0 and not self.shard_files("images") and not self.shard_files("regions")

    def destroy(self) -> None:
        """Remove the whole store folder (for a store a failed command had just created)."""
        import shutil

        try:
            self.con.close()
        except duckdb.Error:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def query(self, sql: str, params: Iterable[Any] | None = None):
        return self.con.execute(sql, list(params) if params is not None else None)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def next_id(self, table: str, column: str) -> int:
        return int(self.con.execute(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}").fetchone()[0])

    # ---- model identity: one record per store (table store_model) -------------------------
    def model_record(self) -> dict | None:
        """The store's model: fingerprint, name, pretrained, embed_dim, image_size; None if unclaimed."""
        cur = self.con.execute(
            "SELECT fingerprint, name, pretrained, embed_dim, image_size FROM store_model LIMIT 1"
        )
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    @property
    def model(self) -> str | None:
        """The fingerprint every embedding in the store was made with (None: empty store)."""
        rec = self.model_record()
        return rec["fingerprint"] if rec else None

    def check_model(self, fingerprint: str) -> None:
        """Refuse to mix embeddings of two models in one store."""
        current = self.model
        if current is not None and current != fingerprint:
            raise ModelMismatchError(
                f"Store {self.root} holds embeddings of {current}, not {fingerprint}; "
                f"use the same --model/--pretrained, or another --store."
            )

    def claim_model(self, fingerprint: str, name: str, pretrained: str, embed_dim: int | None = None,
                    image_size: int | None = None) -> None:
        """Record the store's model on first write; refuse another model afterwards."""
        self.check_model(fingerprint)
        if self.model is None and not self.read_only:
            self.con.execute(
                "INSERT INTO store_model (fingerprint, name, pretrained, embed_dim, image_size, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [fingerprint, name, pretrained, embed_dim, image_size, now_utc()],
            )

    # ---- shards -------------------------------------------------------------------------
    def shard_dir(self, table: str) -> Path:
        return self.root / SHARD_TABLES[table][0]

    def shard_files(self, table: str) -> list[Path]:
        d = self.shard_dir(table)
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    def _remove_orphan_shards(self) -> None:
        """Settle what a killed writer left (stores.shards.recover); never touches a recorded shard."""
        from .shards import recover

        self.recovery = recover(self)

    def refresh_views(self) -> None:
        """(Re)point the shard views at this store's files (absolute paths, so the store may move)."""
        temp = "TEMP " if self.read_only else ""
        bad = set(self.unreadable_shards)
        for name, (_, cols) in SHARD_TABLES.items():
            files = [f for f in self.shard_files(name) if f not in bad]
            try:
                self.con.execute(f"CREATE OR REPLACE {temp}VIEW {name} AS {self._view_body(files, cols)}")
            except duckdb.Error as exc:
                # a damaged shard: leave it out so the rest stays usable; `pipeline verify` reports it
                from .parquet import parquet_problem

                unreadable = [f for f in files if parquet_problem(f) is not None]
                if not unreadable:
                    raise StoreError(f"Cannot read the {name} shards of {self.root}: {str(exc).splitlines()[0]}; "
                                     "run `pipeline verify`.") from exc
                self.unreadable_shards += unreadable
                files = [f for f in files if f not in unreadable]
                self.con.execute(f"CREATE OR REPLACE {temp}VIEW {name} AS {self._view_body(files, cols)}")

    @staticmethod
    def _view_body(files: list[Path], cols: list[tuple[str, str]]) -> str:
        if files:
            lst = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            return f"SELECT * FROM read_parquet([{lst}], union_by_name = true)"
        return "SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in cols) + " WHERE false"

    # ---- convenience --------------------------------------------------------------------
    def table_counts(self) -> dict[str, int]:
        names = [
            r[0]
            for r in self.con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema IN ('main','temp') "
                "AND table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY table_name"
            ).fetchall()
        ]
        return {n: int(self.con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in dict.fromkeys(names)}


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
