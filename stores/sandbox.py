"""A DuckDB connection that can read the store and nothing else, and can write nothing.

``pipeline sql`` runs the user's SQL on the catalog opened read-only, with DuckDB's own sandbox
switched on and the configuration locked:

* ``enable_external_access = false``: no ``COPY``, ``EXPORT``, ``ATTACH`` of files, ``INSTALL``/
  ``LOAD``, file-reading table functions (``read_csv('/etc/passwd')``), persistent secrets;
* ``autoinstall_known_extensions = autoload_known_extensions = false``,
  ``allow_community_extensions = false``: nothing is fetched or loaded behind the user's back;
* ``lock_configuration = true``: no ``SET``/``RESET``/``PRAGMA`` can undo any of it.

DuckDB's ``allowed_directories``/``allowed_paths`` (the way a sandboxed connection may still read
some files) also allow *writing* those files, so the shard directories are never listed there by
their real paths. Instead the shards (and any file the user allows with ``--allow-read``) are
reached through :class:`ReadOnlyFS`, an fsspec file system registered under the private protocol
``zslro://`` that opens files for reading only, and only inside the directories and files it was
given. ``allowed_directories`` lists those under ``zslro://``, so DuckDB's own Parquet reader
(fast, streaming, with projection and filter pushdown) reads the shards, while a ``COPY ... TO``
any ``zslro://`` path fails in the file system. DuckDB's spill folder (``temp_directory``) is a
private temporary folder outside the store, removed when the connection closes.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Iterable

import duckdb
from fsspec import AbstractFileSystem

PROTOCOL = "zslro"
PREFIX = f"{PROTOCOL}://"

# settings fixed when the database starts (the rest are SET before the configuration is locked)
CONNECT_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
}

# statement types a read-only session may run (DuckDB's own classification of the parsed statement)
READ_STATEMENTS = ("SELECT", "EXPLAIN", "PRAGMA", "CALL")
ALLOWED_TEXT = "one SELECT (WITH, FROM, VALUES, PIVOT, SHOW, DESCRIBE, SUMMARIZE), EXPLAIN, PRAGMA or CALL statement per call"


class SqlRefused(Exception):
    """A statement ``pipeline sql`` will not run (the message is one line for the user)."""


def sandbox_path(path: str | os.PathLike) -> str:
    """The ``zslro://`` name of a local file or directory (absolute, normalised)."""
    return PREFIX + os.path.normpath(os.path.abspath(os.fspath(path)))


class ReadOnlyFS(AbstractFileSystem):
    """fsspec file system that opens files for reading only, and only below ``dirs`` or in ``files``.

    Every method that would change anything raises ``PermissionError``; DuckDB turns that into
    an error for the statement.
    """

    protocol = PROTOCOL
    root_marker = "/"
    cachable = False

    def __init__(self, dirs: Iterable[str | os.PathLike] = (), files: Iterable[str | os.PathLike] = ()):
        super().__init__()
        self.dirs = [os.path.normpath(os.path.abspath(os.fspath(d))) for d in dirs]
        self.files = {os.path.normpath(os.path.abspath(os.fspath(f))) for f in files}
        self.real_dirs = [os.path.realpath(d) for d in self.dirs]
        self.real_files = {os.path.realpath(f) for f in self.files}

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path)
        return path[len(PREFIX):] if path.startswith(PREFIX) else path

    def _checked(self, path) -> str:
        """The path, if it and its real path (symlinks resolved) are inside what may be read: a
        symlink in a shard folder that points out of the store is refused like any other path."""
        p = os.path.normpath(self._strip_protocol(path))
        real = os.path.realpath(p)
        if self._inside(p) and self._inside(real, real=True):
            return real
        raise PermissionError(f"{p} is not readable here")

    def _inside(self, p: str, real: bool = False) -> bool:
        files, dirs = (self.real_files, self.real_dirs) if real else (self.files, self.dirs)
        return p in files or any(p == d or p.startswith(d + os.sep) for d in dirs)

    def glob(self, path, **kwargs):
        """DuckDB globs every path it reads; a plain path that may not be read is an error here
        (fsspec's glob would turn it into "no such file", an empty answer)."""
        p = self._strip_protocol(path)
        if not any(c in p for c in "*?["):
            self._checked(p)
        return super().glob(path, **kwargs)

    def info(self, path, **kwargs):
        name = os.path.normpath(self._strip_protocol(path))
        p = self._checked(path)
        st = os.stat(p)
        return {"name": PREFIX + name, "size": st.st_size, "type": "directory" if os.path.isdir(p) else "file",
                "mtime": st.st_mtime, "created": st.st_ctime}

    def ls(self, path, detail=True, **kwargs):
        name = os.path.normpath(self._strip_protocol(path))
        p = self._checked(path)
        names = [os.path.join(name, n) for n in sorted(os.listdir(p))] if os.path.isdir(p) else [name]
        entries = [self.info(n) for n in names]
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path):
        return datetime.fromtimestamp(os.stat(self._checked(path)).st_mtime)

    def created(self, path):
        return datetime.fromtimestamp(os.stat(self._checked(path)).st_ctime)

    def _open(self, path, mode="rb", **kwargs):
        if mode != "rb":
            raise PermissionError("pipeline sql never writes files")
        return open(self._checked(path), "rb")

    def _refuse(self, *args, **kwargs):
        raise PermissionError("pipeline sql never writes files")

    mkdir = makedirs = rm = rm_file = _rm = rmdir = mv = cp_file = copy = put_file = put = touch = pipe_file = _refuse


class Sandbox:
    """Lock down ``con`` (a read-only connection): readable = ``dirs`` and ``files`` (via ``zslro://``).

    Call :meth:`lock` after creating the views that read through ``zslro://``; call
    :meth:`close` after closing the connection (removes the private spill folder).
    """

    def __init__(self, dirs: Iterable[Path] = (), files: Iterable[Path] = (), memory_limit: str | None = None):
        self.dirs = [Path(d) for d in dirs]
        self.files = [Path(f) for f in files]
        self.memory_limit = memory_limit
        self.tmp = tempfile.mkdtemp(prefix="zsl-sql-")
        (Path(self.tmp) / ".pid").write_text(str(os.getpid()))  # lets a later run remove it if this one is SIGKILLed
        _TEMP_DIRS.add(self.tmp)
        _install_cleanup()
        _remove_orphans()

    def connect_config(self) -> dict:
        config = dict(CONNECT_CONFIG, temp_directory=self.tmp)
        if self.memory_limit:
            config["memory_limit"] = self.memory_limit
        return config

    def prepare(self, con: duckdb.DuckDBPyConnection) -> None:
        con.register_filesystem(ReadOnlyFS(self.dirs, self.files))
        dirs = [sandbox_path(d) + "/" for d in self.dirs]
        files = [sandbox_path(f) for f in self.files]
        con.execute("SET allowed_directories = ?", [dirs])
        con.execute("SET allowed_paths = ?", [files])

    def lock(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        _TEMP_DIRS.discard(self.tmp)


# ---- the spill folders go on every exit path ----------------------------------------------------
_TEMP_DIRS: set[str] = set()
_CLEANUP_INSTALLED = False


def _remove_temp_dirs() -> None:
    for d in list(_TEMP_DIRS):
        shutil.rmtree(d, ignore_errors=True)
        _TEMP_DIRS.discard(d)


def _on_signal(signum, frame) -> None:
    _remove_temp_dirs()
    signal.signal(signum, signal.SIG_DFL)  # then die of the signal as if unhandled
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    """atexit and SIGTERM/SIGHUP handlers that remove the spill folders (try/finally covers the
    rest; only SIGKILL leaves one behind, and the next ``pipeline sql`` removes such orphans)."""
    global _CLEANUP_INSTALLED
    if _CLEANUP_INSTALLED:
        return
    _CLEANUP_INSTALLED = True
    atexit.register(_remove_temp_dirs)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # SIGINT raises KeyboardInterrupt: finally runs
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


def _remove_orphans() -> None:
    """Spill folders of ``pipeline sql`` processes that were SIGKILLed (their pid file names a dead pid)."""
    base = Path(tempfile.gettempdir())
    for d in base.glob("zsl-sql-*"):
        pid_file = d / ".pid"
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


# ---- statements ------------------------------------------------------------------------------
def read_statement(con: duckdb.DuckDBPyConnection, sql: str):
    """The one statement in ``sql`` if it only reads; else :class:`SqlRefused` with a one-line reason."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRefused(f"SQL error: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise SqlRefused(f"no SQL statement given; pipeline sql runs {ALLOWED_TEXT}.")
    if len(statements) > 1:
        raise SqlRefused(f"pipeline sql runs {ALLOWED_TEXT}; got {len(statements)} statements (run them one by one).")
    st = statements[0]
    kind = st.type.name
    if kind == "MULTI" and re.match(r"\s*(UN)?PIVOT\b", st.query or "", re.I):
        kind = "SELECT"  # DuckDB runs a PIVOT as several statements of its own making
    if kind not in READ_STATEMENTS:
        verb = re.match(r"\s*(\w+(?:\s+DATABASE)?)", st.query or "", re.I)
        what = verb.group(1).upper() if verb else kind
        raise SqlRefused(
            f"pipeline sql is read-only: {what} is not allowed; it runs {ALLOWED_TEXT} (stages write the store; "
            f"--allow-read FILE makes a file of yours readable)."
        )
    return st


def tables_read(con: duckdb.DuckDBPyConnection, sql: str, depth: int = 0) -> set[str] | None:
    """Lower-case names of the tables and views a statement reads, views followed to what they
    read (from DuckDB's own parse tree, ``json_serialize_sql``); None when that cannot be told."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()[0])
    except (duckdb.Error, TypeError, ValueError):
        return None
    if tree.get("error"):
        return None
    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                names.add(node["table_name"].lower())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree)
    views = {n.lower(): q for n, q in con.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall()}
    for name in list(names):
        body = views.get(name)
        if body and depth < 8 and name not in ("images", "regions"):
            inner = tables_read(con, body.split(" AS ", 1)[1] if " AS " in body else body, depth + 1)
            if inner is None:
                return None
            names |= inner
    return names


_FILE_DENIED = re.compile(r'Cannot access (?:file|directory) "([^"]*)"')


def explain_error(exc: duckdb.Error) -> str:
    """A one-line message for an error of a sandboxed statement, saying what is allowed."""
    text = str(exc)
    if "pipeline sql never writes files" in text or "is not readable here" in text:  # ReadOnlyFS said no
        return f"pipeline sql reads only the store and writes nothing; it runs {ALLOWED_TEXT}."
    first = " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
    m = _FILE_DENIED.search(first)
    if isinstance(exc, duckdb.PermissionException) or m:
        if "extension" in first.lower():
            return ("pipeline sql loads no extensions (parquet, json and icu are built in); "
                    f"it runs {ALLOWED_TEXT} on the store.")
        if m:
            target = m.group(1)
            name = target[len(PREFIX):] if target.startswith(PREFIX) else target
            return (f"pipeline sql reads only the store: cannot access {name!r}. To join a file of yours, pass "
                    f"--allow-read FILE and query it as a view named after the file (labels.csv -> labels).")
        return f"pipeline sql reads only the store and writes nothing: {first}"
    if "configuration has been locked" in first:
        opt = re.search(r'option "([^"]+)"', first)
        return (f"pipeline sql's settings are fixed{' (' + opt.group(1) + ')' if opt else ''}; "
                f"it runs {ALLOWED_TEXT}.")
    if "read-only" in first.lower() or "read only" in first.lower():
        return f"SQL error: {first} (pipeline sql is read-only; stages write the store)"
    return f"SQL error: {first}"


# ---- files the user allows ---------------------------------------------------------------------
_READERS = {
    ".csv": "read_csv", ".tsv": "read_csv", ".txt": "read_csv", ".csv.gz": "read_csv", ".tsv.gz": "read_csv",
    ".parquet": "read_parquet", ".pq": "read_parquet",
    ".json": "read_json", ".jsonl": "read_json", ".ndjson": "read_json", ".json.gz": "read_json",
    ".jsonl.gz": "read_json",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def reader_for(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(_READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return _READERS[suffix]
    return None


def view_name_for(path: Path) -> str:
    """labels.csv -> labels; 'my labels-2.csv.gz' -> my_labels_2 (an identifier)."""
    base = path.name
    for suffix in sorted(_READERS, key=len, reverse=True):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    name = re.sub(r"\W+", "_", base).strip("_") or "file"
    return name if _IDENT.fullmatch(name) else "f_" + name
