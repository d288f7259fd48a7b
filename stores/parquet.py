"""Parquet shards and embedding columns (written through :mod:`stores.files`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StoreError
from .files import atomic_write

MAGIC = b"PAR1"


def embedding_array(emb: np.ndarray, dtype: str = "float32") -> pa.Array:
    """[N, D] numpy -> Arrow list<float> column (float16 halves the bytes on disk)."""
    emb = np.ascontiguousarray(emb, dtype=np.float16 if dtype == "float16" else np.float32)
    n, d = emb.shape
    values = pa.array(emb.reshape(-1), type=pa.float16() if dtype == "float16" else pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def embeddings_to_numpy(col: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """Arrow list<float> column -> float32 [N, D]."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1)


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write a zstd Parquet file atomically: readers never see a half-written shard."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # shard folders belong to the store
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def has_magic(path: str | os.PathLike) -> bool:
    """Cheap test for a whole Parquet file: ``PAR1`` at both ends (a truncated file loses its
    footer). Reads 8 bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            return head == MAGIC and f.read(4) == MAGIC
    except OSError:
        return False


def parquet_problem(path: str | os.PathLike) -> str | None:
    """Why a Parquet file cannot be read (its footer), or None when it can."""
    if not has_magic(path):
        return "not a whole Parquet file (no PAR1 magic at its start or end: truncated or overwritten)"
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def unreadable(path: str | os.PathLike, why: str) -> StoreError:
    return StoreError(f"{path}: unreadable Parquet shard ({why}); run `pipeline verify`.")


def read_tables(paths: list[Path], columns: list[str] | None = None, filters=None) -> pa.Table | None:
    """Read shards into one table; a damaged shard raises a one-line StoreError naming it."""
    if not paths:
        return None
    try:
        return pq.ParquetDataset([str(p) for p in paths], filters=filters).read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        for p in paths:
            why = parquet_problem(p)
            if why is not None:
                raise unreadable(p, why) from None
        where = paths[0] if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} shards)"
        raise unreadable(where, " ".join(str(exc).split())) from None
