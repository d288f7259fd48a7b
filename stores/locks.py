"""One writer per store, and cheap whole-file copies for publishing the catalog.

A store has at most one writing process at a time. It holds an exclusive ``flock`` on
``STORE/.writer.lock`` for as long as it is open for writing; the lock file also says who
holds it (pid, the command's name such as ``pipeline classify``, start time; never its
arguments, which may hold a key), so a second writer can tell the user what it is waiting for.
The lock file is opened without following a symlink and must be a regular file: a symlink or
folder in its place is refused in one line (it could point anywhere, and the lock truncates it). The lock is released by the kernel when the holder exits, however it exits
(a SIGKILL included), so a stale lock never needs cleaning up.

Readers never take this lock: they read the published ``catalog.duckdb`` (see
:mod:`stores.catalog`), which a writer only ever replaces by a rename.
"""
from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import click

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
        fd = open_regular(path, os.O_RDONLY)
        try:
            info = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
        finally:
            os.close(fd)
    except (OSError, ValueError, StoreError):
        info = {}
    if not isinstance(info, dict) or not info.get("pid"):
        return "another pipeline process"
    what = f"pid {int(info['pid'])}" if str(info["pid"]).isdigit() else "another pipeline process"
    command = info.get("command")
    if isinstance(command, str) and _COMMAND.fullmatch(command):  # only a name we could have written
        what += f" (`{command}`)"
    if isinstance(info.get("since"), str) and len(info["since"]) <= 32:
        what += f", since {info['since']}"
    return what


_COMMAND = re.compile(r"[A-Za-z0-9_.-]+(?: [a-z][a-z0-9-]{0,40}){0,2}")


def command_name() -> str:
    """What this process is, for other processes' messages: the program and its (sub)command
    names, e.g. ``pipeline classify``; never an option or its value (an argument may hold a key)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        path = ctx.command_path.split()
        names = [p for p in path[1:] if re.fullmatch(r"[a-z][a-z0-9-]{0,40}", p)][:2]
        return " ".join(["pipeline", *names])
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return prog if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", prog) else "python"


def open_regular(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symlink at ``path`` and only opens a regular file
    (O_NOFOLLOW; O_NONBLOCK so a FIFO cannot hang it). A symlink, folder or device there is a
    StoreError in one line; nothing is created or truncated through it."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if os.path.islink(path):
            raise StoreError(f"{path} is a symbolic link; the store's own files are never links. Remove it "
                             "(it may point at a file of yours) and retry.") from None
        if os.path.isdir(path):
            raise StoreError(f"{path} is a folder; it must be the store's own file. Move it away and retry.") from None
        raise exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file; it must be the store's own file. Move it away and retry.")
    return fd


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
        self.fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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
        info = {"pid": os.getpid(), "command": command_name(), "since": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now (no waiting, no message)."""
        key = str(self.root.resolve())
        if key in _HELD:
            return False
        try:
            self.fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except (OSError, StoreError):  # a store on read-only media: nobody can be writing it
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
            fd = open_regular(self.path, os.O_RDONLY)
        except (OSError, StoreError):
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
    """Copy ``src`` to ``dst`` (a new file; whatever was at ``dst`` is unlinked first) and fsync it; returns the bytes copied.

    Uses ``os.copy_file_range`` (an in-kernel copy, a reflink on file systems that have them),
    else a buffered copy.
    """
    Path(dst).unlink(missing_ok=True)  # a fresh file (O_EXCL, O_NOFOLLOW): never written through a link
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with open(src, "rb") as fi, os.fdopen(fd, "wb") as fo:
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
