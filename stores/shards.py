"""Writing indexed images as Parquet shard pairs, keyed by content hash, with a record of each.

A batch of images becomes ``regions/part-R-S.parquet`` (one row per region embedding) and
``images/part-R-S.parquet`` (one row per image). A pair is written in three steps:

1. both files are written in full under temporary names (``*.parquet.tmp``) and flushed;
2. their records (rows, bytes, sha256: table ``shards``, migration m009) are inserted in one
   transaction, together with anything else that must change with them: the commit point;
3. both files are renamed to their final names.

A writer killed before step 2 leaves temporary files without records (the next writer removes
them); killed after it, temporary files whose records exist (the next writer renames them:
:func:`recover`). So a final file without a record is never a write of this store in progress:
it is a shard of a store written before records existed (``pipeline verify --repair`` records
it) or a file something else put there; and a record without its file is damage, which
``pipeline verify`` reports and nothing "cleans up" by deleting the partner.

Ids come from the image's content hash, so re-indexing the same bytes gives the same ids.

A regions shard is written in row groups of ``IMAGES_PER_ROW_GROUP`` whole images, in the order
of its images partner, and says so in its metadata (``zsl.images_per_row_group``): a reader that
needs a few images finds their pair and rows in the images shards and reads only those row
groups (:func:`stores.tables.region_shard_plan`). Shards without the key are read whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import files, tables
from .errors import StoreError
from .parquet import embedding_array
from .tables import IMAGE_SHARD_SCHEMA, IMAGES_PER_ROW_GROUP_KEY

if TYPE_CHECKING:  # the type only: stores.catalog imports this module (to recover) at run time
    from .catalog import Catalog

PAIR_TABLES = ("regions", "images")  # staged and renamed in this order
IMAGES_PER_ROW_GROUP = 16  # ~1.5 MB a row group at 91 float16 regions of D = 512
NAME_RE = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def content_id(sha256_hex: str) -> int:
    """A stable int64 image id from the content hash (60 bits, positive)."""
    return int(sha256_hex[:15], 16)


def region_id(sha256_hex: str, index: int) -> int:
    """A stable int64 id of an image's ``index``-th region (0 = the full view)."""
    return int(hashlib.sha256(f"{sha256_hex}/{index}".encode()).hexdigest()[:15], 16)


def shard_name(index_run_id: int, seq: int) -> str:
    return f"part-{index_run_id:06d}-{seq:05d}.parquet"


def next_seq(cat: Catalog, index_run_id: int) -> int:
    """The first sequence number of ``index_run_id`` that no file and no record has used."""
    names = {n for (_, n) in tables.shard_records(cat, states=None)}
    for table in PAIR_TABLES:
        d = cat.shard_dir(table)
        if d.is_dir():
            names |= {p.name.removesuffix(files.TMP_SUFFIX) for p in d.iterdir()}
    used = [int(m.group(2)) for m in map(NAME_RE.match, names) if m and int(m.group(1)) == index_run_id]
    return max(used) + 1 if used else 0


@dataclass
class ShardPair:
    """The two tables of one shard pair, ready to be written under ``name``."""

    name: str
    index_run_id: int | None
    regions: pa.Table
    images: pa.Table


def write_pairs(cat: Catalog, pairs: list[ShardPair], *, in_transaction: Callable[[], None] | None = None) -> list[str]:
    """Stage every pair, record them (and run ``in_transaction``) in one transaction, then
    publish the files. Returns the names written. Nothing is visible if this fails before the
    commit; after it, a crash leaves staged files that :func:`recover` publishes."""
    staged: list[tuple[str, ShardPair, int, files.Staged]] = []
    committed = False
    try:
        for pair in pairs:
            for table in PAIR_TABLES:
                data: pa.Table = getattr(pair, table)
                path = cat.shard_dir(table) / pair.name
                path.parent.mkdir(parents=True, exist_ok=True)  # shard folders belong to the store
                if table == "regions":
                    write = partial(write_regions_table, data, images=pair.images)
                else:
                    write = partial(pq.write_table, data, compression="zstd")
                st = files.stage(path, write)
                staged.append((table, pair, data.num_rows, st))
        with cat.transaction():
            tables.insert_shard_records(cat, [
                dict(name=p.name, table_name=t, rows=n, bytes=st.size, sha256=st.sha256, index_run_id=p.index_run_id,
                     state="live") for t, p, n, st in staged])
            if in_transaction is not None:
                in_transaction()
        committed = True
    finally:
        if not committed:
            for *_, st in staged:
                st.discard()
    for *_, st in staged:
        st.publish()
    return [p.name for p in pairs]


def write_regions_table(regions: pa.Table, where, *, images: pa.Table | None = None,
                        images_per_row_group: int = IMAGES_PER_ROW_GROUP) -> None:
    """A regions table as Parquet (zstd) in row groups of ``images_per_row_group`` whole images.

    When ``images`` (the partner) lists the same images in the same order, the file's metadata
    records ``zsl.images_per_row_group``: image ``i`` of the images shard is then in row group
    ``i // images_per_row_group``. Otherwise (never, for the stages' writers) one row group and no key.

    The embedding column is written without dictionary encoding: its values are all distinct,
    and a dictionary that each row group restarts (and abandons at 1 MB) made float32 shards 20%
    bigger (2,327 against 1,905 bytes a region, D = 512; float16 1,000 against 951)."""
    opts = dict(compression="zstd", use_dictionary=[c for c in regions.column_names if c != "embedding"])
    img = regions["image_id"].to_numpy() if regions.num_rows else np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]]) if len(img) else np.zeros(0, np.int64)
    aligned = images is not None and np.array_equal(img[starts], images["image_id"].to_numpy())
    if not aligned or len(starts) <= images_per_row_group:
        meta = {IMAGES_PER_ROW_GROUP_KEY: str(images_per_row_group).encode()} if aligned else {}
        pq.write_table(regions.replace_schema_metadata({**(regions.schema.metadata or {}), **meta}), where,
                       row_group_size=max(1, regions.num_rows), **opts)
        return
    schema = regions.schema.with_metadata({**(regions.schema.metadata or {}),
                                           IMAGES_PER_ROW_GROUP_KEY: str(images_per_row_group).encode()})
    bounds = np.append(starts[::images_per_row_group], len(img))
    with pq.ParquetWriter(where, schema, **opts) as w:
        for a, b in zip(bounds[:-1], bounds[1:]):
            w.write_table(regions.slice(int(a), int(b - a)).replace_schema_metadata(schema.metadata),
                          row_group_size=int(b - a))


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
        self.seq = next_seq(cat, index_run_id)

    def add(self, image: IndexedImage) -> None:
        self.pending.append(image)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        regions, images = self._tables(self.pending)
        write_pairs(self.cat, [ShardPair(shard_name(self.run_id, self.seq), self.run_id, regions, images)])
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


# ---- recovery: what a killed writer left, settled by the next writer ----------------------
@dataclass
class Recovery:
    published: list[str] = field(default_factory=list)  # committed pairs whose rename a crash interrupted
    removed_tmp: list[str] = field(default_factory=list)  # uncommitted staged files
    removed_retired: list[str] = field(default_factory=list)  # superseded by a committed rewrite
    removed_orphans: list[str] = field(default_factory=list)  # pre-record interrupted writes (regions only)

    def __bool__(self) -> bool:
        return bool(self.published or self.removed_tmp or self.removed_retired or self.removed_orphans)


def recover(cat: Catalog) -> Recovery:
    """Settle interrupted writes; called when a store is opened for writing.

    * a staged ``*.tmp`` whose live record matches it (size and sha256) is renamed into place
      (the crash came after the commit); any other ``*.tmp`` is removed (before the commit);
    * a file whose record is ``retired`` (remove-images committed its rewrite) is removed;
    * a regions shard with neither an images partner nor any record is an interrupted write of
      a store written before shard records (regions were written first) and is removed;
    * when shards were published or removed, ``faiss/images.index`` is rebuilt.

    A recorded shard whose file is missing is never acted on here: ``pipeline verify`` reports it.
    """
    rec = tables.shard_records(cat, states=None)
    out = Recovery()
    for table in PAIR_TABLES:
        d = cat.shard_dir(table)
        if not d.is_dir():
            continue
        for tmp in sorted(d.glob("*" + files.TMP_SUFFIX)):
            final = tmp.with_name(tmp.name.removesuffix(files.TMP_SUFFIX))
            r = rec.get((table, final.name))
            if (r is not None and r["state"] == "live" and not final.exists() and tmp.stat().st_size == r["bytes"]
                    and files.file_sha256(tmp) == r["sha256"]):
                os.replace(tmp, final)
                out.published.append(f"{table}/{final.name}")
            else:
                tmp.unlink(missing_ok=True)
                out.removed_tmp.append(f"{table}/{tmp.name}")
    for (table, name), r in rec.items():
        p = cat.shard_dir(table) / name
        if r["state"] == "retired" and p.exists():
            p.unlink()
            out.removed_retired.append(f"{table}/{name}")
    committed = {p.name for p in cat.shard_files("images")}
    for p in cat.shard_files("regions"):
        if p.name not in committed and ("regions", p.name) not in rec and ("images", p.name) not in rec:
            p.unlink()
            out.removed_orphans.append(f"regions/{p.name}")
    if (out.published or out.removed_retired) and cat.model is not None:
        from .indexes import rebuild_image_index  # heavy: imported on use (faiss)

        try:
            rebuild_image_index(cat, cat.model)  # what the interrupted command would have done next
        except StoreError:
            pass  # a damaged shard: `pipeline verify` reports it and the stale index
    if cat.get_meta(LEGACY_KEY) is None:
        # first write-open since m009: the shards already here were written without records
        legacy = sorted(f"{t}/{p.name}" for t in PAIR_TABLES for p in cat.shard_files(t) if (t, p.name) not in rec)
        cat.set_meta(LEGACY_KEY, json.dumps(legacy))
    return out


LEGACY_KEY = "legacy_shards"  # meta: shards present when records began (written without one)


def legacy_shards(cat: Catalog) -> set[str]:
    """``table/name`` of the shards written before this store kept records (may lack one)."""
    raw = cat.get_meta(LEGACY_KEY)
    try:
        return set(json.loads(raw)) if raw else set()
    except ValueError:
        return set()


def describe_file(path: Path) -> dict:
    """rows, bytes and sha256 of an existing Parquet file (raises on an unreadable one)."""
    rows = pq.read_metadata(path).num_rows
    return dict(rows=int(rows), bytes=path.stat().st_size, sha256=files.file_sha256(path))


def run_id_of(name: str) -> int | None:
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None
