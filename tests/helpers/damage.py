"""A small healthy store built by the stages, and the ways the damage corpus breaks copies of it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RegionConfig
from pipeline.stages.methods import MethodConfig
from pipeline.stages.attributes import import_attribute_file
from pipeline.stages.classify import classify
from pipeline.stages.index_images import index_images
from stores import files
from stores.catalog import Catalog
from tests.helpers import write_image

CLASSES = {"cat": ["pointy ears", "a long tail", "whiskers"], "dog": ["floppy ears", "has a wet nose"],
           "fox": ["a bushy tail", "orange fur", "a white chest"]}


def build_small_store(root: Path, model, *, per_class: int = 4, n_crops: int = 3, shard_size: int = 3) -> Path:
    """attributes of 3 classes, ``2 * per_class`` images (cat, dog) in pairs of ``shard_size``,
    one LaZSL run. Returns the store folder."""
    root.mkdir(parents=True, exist_ok=True)
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(per_class):
            write_image(root / "imgs" / c / f"{i}.png", size=(64 + 4 * i, 60), color=color, seed=i + (10 if c == "dog" else 0))
    (root / "attrs.json").write_text(json.dumps(CLASSES))
    with Catalog(root / "store") as cat:
        import_attribute_file(cat, model, root / "attrs.json", progress=False)
        index_images(cat, model, [str(root / "imgs")], RegionConfig(n_crops=n_crops, crop_min=0.5), progress=False,
                     shard_size=shard_size, workers=0)
        classify(cat, "lazsl", MethodConfig(top_k=2), progress=False)
    return root / "store"


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard(store: Path, table: str, k: int = 0) -> Path:
    return sorted((store / table).glob("part-*.parquet"))[k]


def rewrite_shard(store: Path, table: str, name: str, change, *, update_record: bool = True) -> None:
    """Rewrite one shard through ``change(pa.Table) -> pa.Table``; with ``update_record`` its
    record follows (so only what ``change`` did is wrong, not the checksum)."""
    path = store / table / name
    t = change(pq.read_table(path))
    pq.write_table(t, path, compression="zstd")
    if update_record:
        with Catalog(store) as cat:
            cat.query("UPDATE shards SET rows = ?, bytes = ?, sha256 = ? WHERE table_name = ? AND name = ?",
                      [t.num_rows, path.stat().st_size, files.file_sha256(path), table, name])


def set_embeddings(t: pa.Table, fn) -> pa.Table:
    """Apply ``fn`` to the (N, D) float32 embeddings of a regions table."""
    from stores.parquet import embedding_array, embeddings_to_numpy

    emb = fn(embeddings_to_numpy(t["embedding"]).copy())
    return t.set_column(t.schema.get_field_index("embedding"), "embedding", embedding_array(emb, "float32"))


def normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
