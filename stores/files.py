"""The one way files are written: to a temporary name beside the target, flushed, then renamed.

Readers never see a half-written file, and a killed writer leaves at most a ``*.tmp`` file
that the next writer removes. Every file the project writes (Parquet shards, Faiss indexes
and their sidecars, reports, exports, overlays) goes through :func:`atomic_write`.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_SUFFIX = ".tmp"


def tmp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


@contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` in one rename.

    The parent folder must exist: creating folders is the caller's decision (a user's
    ``-o /typo/x.html`` must not create ``/typo``). On error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is not a folder")
    tmp = tmp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


# ---- two-phase writes: stage the bytes, commit elsewhere, then rename --------------------
class Staged:
    """A file written in full under its temporary name (flushed), not yet renamed.

    Used where the commit point is a catalog record rather than the rename itself (Parquet
    shards: :mod:`stores.shards`): stage the files, record them in one transaction, then
    :meth:`publish` them. ``size`` and ``sha256`` describe the bytes that were written.
    """

    def __init__(self, path: Path, tmp: Path, size: int, sha256: str):
        self.path, self.tmp, self.size, self.sha256 = path, tmp, size, sha256

    def publish(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def stage(path: str | os.PathLike, write: Callable[[Path], None]) -> Staged:
    """Call ``write(tmp)`` to write ``path``'s temporary file, flush it, and describe it.

    The parent folder must exist. On error the temporary file is removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is not a folder")
    tmp = tmp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        return Staged(path, tmp, tmp.stat().st_size, file_sha256(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
