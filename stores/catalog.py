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

Readers and writers (``docs/store.md``, "Readers, writers and the published catalog")::

    STORE/
      catalog.duckdb          the published catalog: the last committed state, always complete;
                              readers open it read-only and are never blocked by a writer
      catalog.writing.duckdb  the one writer's working copy (exists while a writer runs)
      .writer.lock            flock held by the one writing process (``--wait`` for a second one)

A writer copies ``catalog.duckdb`` to its working copy, writes there, and publishes: at commit
points (checkpoint, copy, atomic rename over ``catalog.duckdb``; at most as often as keeps the
copies under ~5% of its time) and when it closes (a rename, no copy). A writer killed mid-run
leaves its working copy, with all it committed; the next writer adopts it after checking it
(:meth:`Catalog._working_copy_problem`: it opens, its schema is this store's or newer, it records
this store's id -- ``meta.store_id`` -- and none of the tables that only grow has fewer rows than
the published catalog), so no committed work is lost. A working copy that fails the check (a
truncated file, another store's catalog) is set aside as ``catalog.writing.duckdb.set-aside-TIME``
with a one-line note, and ``pipeline verify`` reports it. Readers never publish anything: they
read what the last writer published. A symlink or folder in the place of the working copy or
the lock file is refused in one line (:func:`stores.locks.open_regular`). While it
runs a writer holds a shared lock on ``catalog.duckdb``, so other programs (the DuckDB CLI) can
read it but not write it. ``sandbox=True`` (``pipeline sql``) opens the published catalog with
DuckDB's external access off and its configuration locked (:mod:`stores.sandbox`).
"""
from __future__ import annotations

import os
import shutil
import re
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import duckdb

from . import sandbox as sb
from .catalog_check import scan_catalog
from .descriptions import apply_comments
from .errors import ModelMismatchError, StoreError, StoreVersionError
from .locks import DEFAULT_WAIT, WriterLock, copy_file, file_signature, fsync_dir, open_regular
from .migrations import MIGRATIONS, SCHEMA_VERSION, applied_migrations, migrate, pending_migrations
from .values import dumps, now_utc  # noqa: F401  (re-exported: stores.catalog.now_utc, dumps)

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

DEFAULT_STORE = "./zsl-store"
CATALOG_FILE = "catalog.duckdb"
WORKING_FILE = "catalog.writing.duckdb"
SET_ASIDE = ".set-aside-"  # catalog.writing.duckdb.set-aside-20260101T120000: a working copy not adopted
# tables that only ever grow: a working copy with fewer rows in one is not this store's latest state
GROWING_TABLES = ("_migrations", "runs", "index_runs", "shards")
# a commit publishes if the last copy was cheap (a catalog up to tens of MB), or if it took at
# most this share of the time since the previous one (copies stay under ~5% of a writer's time)
PUBLISH_ALWAYS_BELOW_S = 0.05
PUBLISH_COST_SHARE = 0.05

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
    """An open store. ``Catalog(path)`` creates and migrates it; ``read_only=True`` never writes.

    A writer (``read_only=False``) holds the store's writer lock and writes a working copy of the
    catalog that it publishes as ``catalog.duckdb`` (module docstring); a second writer waits up to
    ``wait`` seconds (``on_wait`` receives a one-line message when it starts waiting), then fails
    with one line. A reader opens the published catalog and never waits for a writer.
    ``sandbox=True`` (implies read-only) locks the connection down for user SQL; ``allow_read``
    ((view name, file) pairs) makes files of the user's readable there as views.
    """

    def __init__(self, path: str | os.PathLike | None = None, read_only: bool = False, create: bool = True, *,
                 wait: float = DEFAULT_WAIT, on_wait: Callable[[str], None] | None = None, sandbox: bool = False,
                 allow_read: Sequence[tuple[str, Path]] = (), memory_limit: str | None = None):
        self.root = resolve_store_path(path)
        self.read_only = read_only or sandbox
        self.con = None
        self.sandbox: sb.Sandbox | None = None
        self._lock: WriterLock | None = None
        self._hold: int | None = None  # fd with a shared lock on catalog.duckdb while writing
        self._work_sig = None  # the working copy as it was at the last publish
        self._last_publish = 0.0
        self._copy_seconds = 0.0
        self._in_transaction = False
        self.publish_count = 0
        self.unreadable_shards: list[Path] = []  # left out of the views (see refresh_views)
        self.recovery = None  # what opening for writing settled (stores.shards.Recovery)
        self._memory_limit = memory_limit  # DuckDB's memory_limit for a sandbox (``pipeline sql --memory-limit``)
        if self.read_only:
            self._open_reader(wait, on_wait, sandbox, allow_read)
        else:
            self._open_writer(wait, on_wait, create)

    @property
    def db_file(self) -> Path:
        return self.root / CATALOG_FILE

    @property
    def work_file(self) -> Path:
        return self.root / WORKING_FILE

    def _no_store(self) -> StoreError:
        return StoreError(
            f"No store at {self.root} (no {CATALOG_FILE}); create one with `pipeline build-attributes` "
            "or `pipeline index-images`, or point --store / ZSL_STORE at an existing store."
        )

    # ---- opening --------------------------------------------------------------------------
    def _connect(self, file: Path, *, read_only: bool, config: dict | None = None, wait: float = DEFAULT_WAIT,
                 on_wait: Callable[[str], None] | None = None):
        """duckdb.connect, retrying while another program holds a conflicting lock on ``file``."""
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                return duckdb.connect(str(file), read_only=read_only, config=config or {})
            except duckdb.IOException as exc:
                msg = str(exc).splitlines()[0]
                locked = is_lock_conflict(msg)
                if not locked or time.monotonic() >= deadline:
                    hint = (" (another program has it open for writing; close it, or open it read-only: "
                            "duckdb -readonly)") if locked else ""
                    hint = hint or "; the catalog is damaged: run `pipeline verify`"
                    raise StoreError(f"Cannot open {file}: {msg}{hint}") from exc
                if not told and on_wait is not None:
                    on_wait(f"waiting up to {wait:g} s: {file.name} is locked by another program")
                    told = True
                time.sleep(0.1)

    def _open_writer(self, wait, on_wait, create: bool) -> None:
        main, work = self.db_file, self.work_file
        if main.exists() and not main.is_file():
            raise StoreError(f"{main} is not a file; --store must be a store directory.")
        if not main.exists() and not work.exists():
            if not create:
                raise self._no_store()
            self.root.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.root)
        self._lock.acquire(wait, on_wait)
        adopted = False
        try:
            changed = self._prepare_working_copy(wait, on_wait)
            adopted = changed and main.exists()
            self.con = self._connect(work, read_only=False, wait=wait, on_wait=on_wait)
            self.refresh_views()  # views created by migrations may select from the shard views
            applied = migrate(self.con)
            self.set_meta("schema_version", str(SCHEMA_VERSION))
            if self.get_meta("store_id") is None:  # who this catalog belongs to: working copies are checked against it
                self.set_meta("store_id", uuid.uuid4().hex)
                changed = True
            self._remove_orphan_shards()
            self.refresh_views()
            if changed or applied or not main.exists():
                self.publish()
            else:
                self.con.execute("CHECKPOINT")
                self._work_sig = file_signature(work)
                self._last_publish = time.monotonic()
        except BaseException as exc:
            self._abandon()
            if not adopted and main.exists():
                work.unlink(missing_ok=True)  # only a copy of catalog.duckdb: the error is about that file
            if isinstance(exc, duckdb.Error):
                name = work if adopted else main
                what = " (an interrupted writer's working copy)" if adopted else ""
                raise StoreError(f"Cannot read {name}{what}: {' '.join(str(exc).splitlines()[0].split())[:200]}; "
                                 "the catalog is damaged: run `pipeline verify`.") from exc
            raise

    def _prepare_working_copy(self, wait, on_wait) -> bool:
        """Make ``catalog.writing.duckdb`` hold the last committed state. True if it differs from
        ``catalog.duckdb`` (an interrupted writer's work adopted, or a new store)."""
        main, work = self.db_file, self.work_file
        for stale in (main.with_name(main.name + ".tmp"), work.with_name(work.name + ".tmp")):
            stale.unlink(missing_ok=True)
        if os.path.lexists(work):
            # a writer was interrupted: its working copy holds everything it committed (DuckDB
            # replays its WAL); adopt it if it is this store's, hold catalog.duckdb and publish it
            # once migrated; else set it aside and start from catalog.duckdb
            os.close(open_regular(work, os.O_RDONLY))  # a symlink or folder there: refused, one line
            problem = self._working_copy_problem()
            if problem is None:
                if main.exists():
                    self._hold_main(wait, on_wait)
                return True
            aside = self.set_aside_working_copy()
            if on_wait is not None:
                on_wait(f"{WORKING_FILE} was not adopted ({problem}); set aside as {aside.name} "
                        "(`pipeline verify` lists it)")
            if not main.exists():
                return True
        if not main.exists():
            return True
        wal = main.with_name(main.name + ".wal")
        if wal.exists():  # written in place (an older version, or DuckDB itself): fold its WAL in first
            con = self._connect(main, read_only=False, wait=wait, on_wait=on_wait)
            con.execute("CHECKPOINT")
            con.close()
        self._hold_main(wait, on_wait)
        tmp = work.with_name(work.name + ".tmp")
        t0 = time.perf_counter()
        copy_file(main, tmp)
        os.replace(tmp, work)
        self._copy_seconds = time.perf_counter() - t0  # what a publish will cost: paces commit_point
        return False

    def _working_copy_problem(self) -> str | None:
        """Why the working copy left by an interrupted writer must not be adopted (None: adopt it).
        It must open (DuckDB replays its WAL), be readable in every block, have the schema records, record this store's id
        (``meta.store_id``) and hold no fewer rows in the tables that only grow than the
        published catalog."""
        work, main = self.work_file, self.db_file
        mine = self._catalog_facts(main, read_only=True) if main.exists() else None
        if isinstance(mine, str):
            mine = None  # the published catalog is itself damaged: judge the working copy alone
        theirs = self._catalog_facts(work, read_only=False, scan=True)
        if isinstance(theirs, str):
            return theirs
        if theirs["store_id"] is None and theirs["migrations"] == 0:
            return "it is no catalog of this project"
        if mine is None:
            return None
        if mine["store_id"] is not None and theirs["store_id"] != mine["store_id"]:
            return "it belongs to another store"
        for table, n in mine["counts"].items():
            if theirs["counts"].get(table, 0) < n:
                return f"it has fewer {table} rows ({theirs['counts'].get(table, 0)}) than the published catalog ({n})"
        return None

    @staticmethod
    def _catalog_facts(file: Path, *, read_only: bool, scan: bool = False) -> dict | str:
        """store id, applied migrations and the growing tables' row counts of a catalog file, or
        a one-line reason why it cannot be read."""
        try:
            con = duckdb.connect(str(file), read_only=read_only)
        except duckdb.Error as exc:
            msg = " ".join(str(exc).splitlines()[0].split())[:160] if str(exc) else type(exc).__name__
            if is_lock_conflict(msg):
                raise StoreError(f"Cannot open {file}: another program has it open; close it and retry.") from None
            return f"it cannot be opened: {msg}"
        try:
            names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "_migrations" not in names or "meta" not in names:
                return {"store_id": None, "migrations": 0, "counts": {}}
            row = con.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            counts = {t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])
                      for t in GROWING_TABLES if t in names}
            if scan:  # every block read once: a copy cut short or with a bad block is not adopted
                bad = scan_catalog(con)
                if bad:
                    return f"its table {bad[0][0]} cannot be read: {bad[0][1]}"
            return {"store_id": row[0] if row else None, "migrations": counts.get("_migrations", 0), "counts": counts}
        except duckdb.Error as exc:
            return f"it cannot be read: {' '.join(str(exc).splitlines()[0].split())[:160]}"
        finally:
            con.close()

    def set_aside_working_copy(self) -> Path:
        """Rename the working copy (and its WAL) out of the way; never deletes it."""
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        aside = self.root / f"{WORKING_FILE}{SET_ASIDE}{stamp}"
        n = 1
        while os.path.lexists(aside):
            n += 1
            aside = self.root / f"{WORKING_FILE}{SET_ASIDE}{stamp}-{n}"
        os.replace(self.work_file, aside)
        wal = self.work_file.with_name(WORKING_FILE + ".wal")
        if os.path.lexists(wal):
            os.replace(wal, aside.with_name(aside.name + ".wal"))
        fsync_dir(self.root)
        return aside

    def set_aside_files(self) -> list[Path]:
        """Working copies set aside by earlier writers (verify reports them)."""
        return sorted(p for p in self.root.glob(WORKING_FILE + SET_ASIDE + "*") if not p.name.endswith(".wal"))

    def _hold_main(self, wait, on_wait) -> None:
        """A shared lock on catalog.duckdb, the kind DuckDB's readers take: other programs may read
        it but not open it for writing while this writer runs (their writes would be lost)."""
        self._release_main()
        if fcntl is None:  # pragma: no cover
            return
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        fd = os.open(self.db_file, os.O_RDONLY)
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreError(f"Cannot write {self.root}: {CATALOG_FILE} is open for writing in another "
                                     f"program; close it (or open it read-only: duckdb -readonly) and retry.") from None
                if not told and on_wait is not None:
                    on_wait(f"waiting up to {wait:g} s: {CATALOG_FILE} is open for writing in another program")
                    told = True
                time.sleep(0.1)
        self._hold = fd

    def _release_main(self) -> None:
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None

    def _open_reader(self, wait, on_wait, sandbox: bool, allow_read: Sequence[tuple[str, Path]]) -> None:
        main = self.db_file
        if not main.exists():
            raise self._no_store()
        if not main.is_file():
            raise StoreError(f"{main} is not a file; --store must be a store directory.")
        config = None
        if sandbox:
            self.sandbox = sb.Sandbox([self.shard_dir(t) for t in SHARD_TABLES], [f for _, f in allow_read],
                                      memory_limit=self._memory_limit)
            config = self.sandbox.connect_config()
        try:
            self.con = self._connect(main, read_only=True, config=config, wait=wait, on_wait=on_wait)
            self._check_complete(main)
            if pending_migrations(self.con):
                self._check_newer()
                raise StoreVersionError(
                    f"Store {self.root} has an older schema; open it once for writing (e.g. `pipeline catalog migrate`)."
                )
            self._check_newer()
            if self.sandbox is not None:
                self.sandbox.prepare(self.con)
            self.refresh_views()
            if self.sandbox is not None:
                self._allow_read_views(allow_read)
                self.sandbox.lock(self.con)
        except BaseException as exc:
            self._abandon()
            if isinstance(exc, duckdb.Error):
                raise StoreError(f"Cannot read {main}: {' '.join(str(exc).splitlines()[0].split())[:200]}; "
                                 "the catalog is damaged: run `pipeline verify`.") from exc
            raise

    def _check_complete(self, file: Path) -> None:
        """A truncated catalog can still answer a reader from the blocks it has left: a file smaller
        than the blocks DuckDB says are in use (3 header pages + used blocks; free trailing blocks
        may legitimately be cut off) is refused early."""
        row = self.con.execute(
            "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = current_database()"
        ).fetchone()
        if row and row[0] and file.stat().st_size < int(row[0]) * int(row[1]) + 3 * 4096:
            raise StoreError(f"Cannot read {file}: the file is shorter than its header says (truncated); "
                             "the catalog is damaged: run `pipeline verify`.")

    def _allow_read_views(self, allow_read: Sequence[tuple[str, Path]]) -> None:
        taken = {r[0].lower() for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        for name, path in allow_read:
            if name.lower() in taken:
                raise StoreError(f"--allow-read {path}: the store already has a table or view named {name!r}; "
                                 f"pass NAME=FILE to name the view otherwise.")
            reader = sb.reader_for(Path(path)) or "read_csv"
            literal = "'" + sb.sandbox_path(path).replace("'", "''") + "'"
            try:
                quoted = '"' + name.replace('"', '""') + '"'
                self.con.execute(f"CREATE TEMP VIEW {quoted} AS SELECT * FROM {reader}({literal})")
            except duckdb.Error as exc:
                raise StoreError(f"--allow-read {path}: cannot read it: {str(exc).splitlines()[0]}") from None
            taken.add(name.lower())

    def _abandon(self) -> None:
        """Undo a half-done open: close what was opened, release the locks (publish nothing)."""
        if self.con is not None:
            try:
                self.con.close()
            except duckdb.Error:
                pass
            self.con = None
        if self.sandbox is not None:
            self.sandbox.close()
        self._release_main()
        if self._lock is not None:
            self._lock.release()

    # ---- publishing -------------------------------------------------------------------------
    def publish(self, *, if_changed: bool = False) -> bool:
        """Make everything committed so far visible to readers: checkpoint the working copy and
        copy it over ``catalog.duckdb`` in one rename. Returns whether it published."""
        if self.read_only or self.con is None or self._in_transaction:
            return False
        self.con.execute("CHECKPOINT")
        work, main = self.work_file, self.db_file
        sig = file_signature(work)
        if if_changed and sig == self._work_sig:
            self._last_publish = time.monotonic()
            return False
        t0 = time.perf_counter()
        tmp = main.with_name(main.name + ".tmp")
        copy_file(work, tmp)
        os.replace(tmp, main)
        fsync_dir(self.root)
        self._copy_seconds = time.perf_counter() - t0
        self._last_publish = time.monotonic()
        self._work_sig = sig
        self.publish_count += 1
        try:
            self._hold_main(0, None)
        except StoreError:  # another program opened the new file for writing in the instant since
            pass
        return True

    def commit_point(self) -> bool:
        """Called around commits (``transaction()`` calls it before and after; so do shard writers):
        publish if anything changed, unless copying is dear and the last copy was recent (copies stay
        under ~5% of the writer's time; what waits is published at the next commit point or when the
        catalog closes)."""
        if self.read_only or self.con is None or self._in_transaction:
            return False
        if (self._copy_seconds > PUBLISH_ALWAYS_BELOW_S
                and time.monotonic() - self._last_publish < self._copy_seconds / PUBLISH_COST_SHARE):
            return False
        return self.publish(if_changed=True)

    def _check_newer(self) -> None:
        # migrate() raises on unknown migrations; in read-only mode do the same check by hand.
        known = {m.__name__ for m in MIGRATIONS}
        unknown = [n for n in applied_migrations(self.con) if n not in known]
        if unknown:
            raise StoreVersionError(
                f"This store was written by a newer version of the project (schema has {', '.join(unknown)}); upgrade to open it."
            )

    # ---- basics -------------------------------------------------------------------------
    def close(self) -> None:
        """Close; a writer's working copy becomes ``catalog.duckdb`` (a rename, no copy)."""
        if self.con is None:
            return
        if self.read_only:
            self.con.close()
            self.con = None
            if self.sandbox is not None:
                self.sandbox.close()
            return
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error:
            pass
        self.con.close()
        self.con = None
        work = self.work_file
        try:
            if work.exists() and not work.with_name(work.name + ".wal").exists():
                os.replace(work, self.db_file)
                fsync_dir(self.root)
            # else: the working copy still has a WAL; the next writer (or reader) publishes it
        finally:
            self._release_main()
            if self._lock is not None:
                self._lock.release()

    def is_empty(self) -> bool:
        """Nothing a user would miss: no classes, no indexed images, no runs."""
        try:
            n = self.con.execute("SELECT (SELECT count(*) FROM classes) + (SELECT count(*) FROM runs)").fetchone()[0]
        except duckdb.Error:  # closed connection: decide from the files alone
            n = 0
        return n == 0 and not self.shard_files("images") and not self.shard_files("regions")

    def destroy(self) -> None:
        """Remove the whole store folder (for a store a failed command had just created)."""
        self._abandon()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        """One atomic commit; afterwards readers see it as soon as it is published (commit_point)."""
        if not self.read_only:
            self.commit_point()  # what earlier autocommitted statements wrote
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield self.con
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False
        self.commit_point()

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
        from .shards import recover  # heavy: imported on use (pyarrow; only a writer recovers)

        self.recovery = recover(self)

    def committed_shard_files(self, table: str) -> list[Path]:
        """Shards of committed batches: those with a live record in ``shards`` (the commit point,
        :mod:`stores.shards`), and for shards written before records existed, every images shard and
        the regions shards whose images shard exists (then the commit marker); never one whose
        record is not live. A recorded regions
        shard whose images partner is lost stays in: that is damage ``pipeline verify`` reports."""
        files = self.shard_files(table)
        try:
            states = {name: state for (name, state) in self.con.execute(
                "SELECT name, state FROM shards WHERE table_name = ?", [table]).fetchall()}
        except duckdb.Error:  # a store older than the shard records
            states = {}
        live = {name for name, state in states.items() if state == "live"}
        # a retired (rewritten by remove-images), quarantined or lost shard never counts, even while
        # its file is still there (a killed remove-images: the next writer deletes it)
        files = [p for p in files if states.get(p.name, "live") == "live"]
        if table == "regions":
            committed = {p.name for p in self.shard_files("images")}
            files = [p for p in files if p.name in live or p.name in committed]
        return files

    def refresh_views(self) -> None:
        """(Re)point the shard views at this store's committed shards (absolute paths, so the store
        may move; ``zslro://`` paths in a sandbox, :mod:`stores.sandbox`). A damaged shard is left
        out, so the rest stays usable and ``pipeline verify`` reports it."""
        bad = set(self.unreadable_shards)
        made = []
        for name, (_, cols) in SHARD_TABLES.items():
            files = [f for f in self.committed_shard_files(name) if f not in bad]
            if self.read_only and self._stored_view_current(name, files):
                continue  # no TEMP shadow: the name would be listed twice (SHOW TABLES)
            temp = "TEMP " if self.read_only else ""
            made.append(name)
            try:
                self.con.execute(f"CREATE OR REPLACE {temp}VIEW {name} AS {self._view_body(files, cols)}")
            except duckdb.Error as exc:
                from .parquet import parquet_problem  # heavy: imported on use (pyarrow)

                unreadable = [f for f in files if parquet_problem(f) is not None]
                if not unreadable:
                    raise StoreError(f"Cannot read the {name} shards of {self.root}: {str(exc).splitlines()[0]}; "
                                     "run `pipeline verify`.") from exc
                self.unreadable_shards += unreadable
                files = [f for f in files if f not in unreadable]
                self.con.execute(f"CREATE OR REPLACE {temp}VIEW {name} AS {self._view_body(files, cols)}")
        if made:  # a replaced view loses its comments (stores/descriptions.py)
            apply_comments(self.con, names=tuple(made))

    def _stored_view_current(self, name: str, files: list[Path]) -> bool:
        """A reader can use the stored view as it is: no sandbox, it reads exactly ``files``, and
        they open (a damaged shard must be left out by a TEMP view instead)."""
        if self.sandbox is not None:
            return False
        row = self.con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ? AND NOT temporary", [name]).fetchone()
        if row is None or sorted(re.findall(r"'([^']*\.parquet)'", row[0] or "")) != sorted(str(f) for f in files):
            return False
        try:
            self.con.execute(f"SELECT * FROM {name} LIMIT 0").fetchall()
        except duckdb.Error:
            return False
        return True

    def _view_body(self, files: list[Path], cols: list[tuple[str, str]]) -> str:
        if files:
            names = [sb.sandbox_path(f) if self.sandbox is not None else str(f) for f in files]
            lst = ", ".join("'" + f.replace("'", "''") + "'" for f in names)
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


def is_lock_conflict(message: str) -> bool:
    """Is a DuckDB open error about another process holding the file ("Could not set lock", "Conflicting
    lock")? Not merely a message with "block" in it (a damaged file)."""
    return re.search(r"\b(set|conflicting) lock\b|\block on file\b", message, re.I) is not None
