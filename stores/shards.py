"""Writing indexed images as Parquet shard pairs, keyed by content hash.

A batch of images becomes ``regions/part-R-S.parquet`` (one row per region embedding) and then
``images/part-R-S.parquet`` (one row per image), both written atomically; the images shard is
written last and is the batch's commit marker (``stores.catalog`` explains recovery). Ids come
from the image's content hash, so re-indexing the same bytes gives the same ids.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .catalog import Catalog
from .parquet import embedding_array, write_table_atomic
from .tables import IMAGE_SHARD_SCHEMA


def content_id(sha256_hex: str) -> int:
    """A stable int64 image id from the content hash (60 bits, positive)."""
    return int(sha256_hex[:15], 16)


def region_id(sha256_hex: str, index: int) -> int:
    """A stable int64 id of an image's ``index``-th region (0 = the full view)."""
    return int(hashlib.sha256(f"{sha256_hex}/{index}".encode()).hexdigest()[:15], 16)


@dataclass
class IndexedImage:
    """One image's row and its regions, ready to be written."""

    sha256: str
    path: str
    label: str | None
    width: int
    height: int
    kinds: list[str]  # "full" first
    boxes: np.ndarray  # (R, 4) pixels
    embeddings: np.ndarray  # (R, D) L2-normalised


class ShardWriter:
    """Buffers indexed images and writes them as shard pairs of ``shard_size`` images."""

    def __init__(self, cat: Catalog, index_run_id: int, model: str, dtype: str, shard_size: int = 256):
        self.cat, self.run_id, self.model, self.dtype, self.shard_size = cat, index_run_id, model, dtype, shard_size
        self.pending: list[IndexedImage] = []
        self.seq = 0

    def add(self, image: IndexedImage) -> None:
        self.pending.append(image)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"part-{self.run_id:06d}-{self.seq:05d}.parquet"
        regions, images = self._tables(self.pending)
        # regions first, images last: the images shard commits the batch
        write_table_atomic(regions, self.cat.shard_dir("regions") / name)
        write_table_atomic(images, self.cat.shard_dir("images") / name)
        self.pending = []
        self.seq += 1
        self.cat.commit_point()  # readers see the batch with the catalog rows written before it

    def _tables(self, batch: list[IndexedImage]) -> tuple[pa.Table, pa.Table]:
        n = [len(im.kinds) for im in batch]
        boxes = np.concatenate([im.boxes for im in batch]).astype(np.float32)
        ids = np.array([region_id(im.sha256, j) for im in batch for j in range(len(im.kinds))], np.int64)
        regions = pa.table({
            "region_id": ids,
            "image_id": np.repeat([content_id(im.sha256) for im in batch], n).astype(np.int64),
            "kind": pa.array([k for im in batch for k in im.kinds], pa.string()),
            "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "model": pa.array([self.model] * len(ids), pa.string()),
            "embedding": embedding_array(np.concatenate([im.embeddings for im in batch]), self.dtype),
        })
        images = pa.Table.from_pylist([
            dict(image_id=content_id(im.sha256), path=im.path, sha256=im.sha256, width=im.width, height=im.height,
                 label=im.label, index_run_id=self.run_id) for im in batch
        ], schema=IMAGE_SHARD_SCHEMA)
        return regions, images
