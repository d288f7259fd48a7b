"""One writer per store, and cheap whole-file copies for publishing the catalog.

A store has at most one writing process at a time. It holds an exclusive ``flock`` on
``STORE/.writer.lock`` for as long as it is open for writing; the lock file also says who
holds it (pid, command line, start time), so a second writer can tell the user what it is
waiting for. The lock is released by the kernel when the holder exits, however it exits
(a SIGKILL included), so a stale lock never needs cleaning up.

Readers never take this lock: they read the published ``catalog.duckdb`` (see
:mod:`stores.catalog`), which a writer only ever replaces by a rename.
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from .errors import StoreError

try:  # POSIX; on other systems a store has no writer lock (one writer at a time is then the user's job)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".writer.lock"
DEFAULT_WAIT = 10.0  # seconds a second writer waits before giving up (``--wait``)

# stores this process holds the writer lock of (a second Catalog on one of them fails at once)
_HELD: set[str] = set()


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another pipeline process"
    cmd = " ".join(info.get("argv") or [])
    what = f"pid {info['pid']}" + (f", `{cmd}`" if cmd else "")
    return what + (f", since {info['since']}" if info.get("since") else "")


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return [a if len(a) < 80 else a[:77] + "..." for a in argv][:12]


class WriterLock:
    """The store's writer lock. ``acquire(wait)`` waits up to ``wait`` seconds (0: try once).

    ``on_wait`` is called once with a one-line message when the lock is busy (the CLI prints it),
    so a user sees at once what the command waits for.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _try(self) -> bool:
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def acquire(self, wait: float = DEFAULT_WAIT, on_wait: Callable[[str], None] | None = None) -> None:
        key = str(self.root.resolve())
        if key in _HELD:
            raise StoreError(f"{self.root} is already open for writing in this process; close it first.")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while not self._try():
            holder = _describe_holder(self.path)
            if time.monotonic() >= deadline:
                os.close(self.fd)
                self.fd = None
                raise StoreError(
                    f"{self.root} is being written by {holder}; waited {wait:g} s. One process writes a store at a "
                    f"time: run this when it finishes, or pass --wait SECONDS to wait longer (readers such as "
                    f"`pipeline sql` work meanwhile)."
                )
            if not told and on_wait is not None:
                on_wait(f"waiting up to {wait:g} s for {holder} to finish writing {self.root} (--wait SECONDS to change)")
                told = True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        _HELD.add(key)
        info = {"pid": os.getpid(), "argv": _command_line(), "since": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now (no waiting, no message)."""
        key = str(self.root.resolve())
        if key in _HELD:
            return False
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a store on read-only media: nobody can be writing it
            self.fd = None
            return False
        if self._try():
            _HELD.add(key)
            return True
        os.close(self.fd)
        self.fd = None
        return False

    def is_free(self) -> bool:
        """True if no process (this one included) holds the lock now."""
        if str(self.root.resolve()) in _HELD:
            return False
        if fcntl is None or not self.path.exists():  # pragma: no cover
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.discard(str(self.root.resolve()))
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None


# ---- copies --------------------------------------------------------------------------------
def copy_file(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` (created or truncated) and fsync it; returns the bytes copied.

    Uses ``os.copy_file_range`` (an in-kernel copy, a reflink on file systems that have them),
    else a buffered copy.
    """
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < size:
                    n = os.copy_file_range(fi.fileno(), fo.fileno(), size - done)
                    if n == 0:
                        break
                    done += n
            except OSError:  # cross-device or unsupported: fall back below
                fi.seek(done)
                fo.seek(done)
        while True:
            chunk = fi.read(1 << 22)
            if not chunk:
                break
            fo.write(chunk)
            done += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return done


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
