"""Images and regions (Parquet shards behind the views): lookups, region batches read shard by shard, image errors, index runs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from ..errors import StoreError
from ..parquet import embeddings_to_numpy, parquet_problem, read_tables, unreadable
from ..values import dumps, now_utc
from .common import fetch_dicts, insert_columns

if TYPE_CHECKING:
    from ..catalog import Catalog


def known_image_hashes(cat: Catalog) -> set[str]:
    return {r[0] for r in cat.con.execute("SELECT sha256 FROM images").fetchall()}


def labels_by_hash(cat: Catalog, hashes: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """sha256 -> (path, label) of the indexed image with that content (the first by path)."""
    wanted = pa.table({"sha256": pa.array(sorted(set(hashes)), pa.string())})  # noqa: F841 (scanned by name)
    rows = cat.con.execute("SELECT sha256, min_by(path, path), min_by(label, path) FROM images "
                           "WHERE sha256 IN (SELECT sha256 FROM wanted) GROUP BY sha256").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def image_count(cat: Catalog) -> int:
    return int(cat.con.execute("SELECT count(*) FROM images").fetchone()[0])


_IMAGE_COLS = "image_id, path, width, height, label"


def find_images(cat: Catalog, *, image_id: int | None = None, paths: Sequence[str] = (), sha256: str | None = None,
                path_suffix: str | None = None) -> list[dict]:
    """Indexed images matching one criterion: id, one of several paths, content hash, or path suffix."""
    if image_id is not None:
        return fetch_dicts(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE image_id = ?", [image_id])
    if paths:
        return fetch_dicts(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE list_contains(?, path)", [list(paths)])
    if sha256 is not None:
        return fetch_dicts(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE sha256 = ?", [sha256])
    if path_suffix is not None:
        return fetch_dicts(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE ends_with(path, ?)", [path_suffix])
    raise ValueError("find_images needs one criterion")


@dataclass
class RegionBatch:
    """Images with the same region layout (the same kinds in the same order, a mirrored AWT
    view counting as a view): row 0 of each is the full view."""

    image_ids: np.ndarray  # (B,)
    region_ids: np.ndarray  # (B, R)
    embeddings: np.ndarray  # (B, R, D) float32
    kinds: np.ndarray | None = None  # (B, R) str: full, crop, grid, patch, part, view, view-flip
    boxes: np.ndarray | None = None  # (B, R, 4) float32, pixels of the original image

    @property
    def full(self) -> np.ndarray:
        return self.embeddings[:, 0]

    @property
    def regions(self) -> np.ndarray:
        return self.embeddings[:, 1:]

    def columns(self, kinds: Sequence[str]) -> np.ndarray:
        """Region columns (the full view excluded) whose kind is one of ``kinds``; the layout is
        shared by the batch, so the first image's kinds decide (``view-flip`` counts as ``view``)."""
        if self.kinds is None:
            return np.arange(1, self.embeddings.shape[1])
        layout = np.where(self.kinds[0] == "view-flip", "view", self.kinds[0])
        want = ["view" if k == "view-flip" else k for k in kinds]
        return np.flatnonzero(np.isin(layout, want) & (np.arange(len(layout)) > 0))


def image_regions(cat: Catalog, image_id: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(region_ids, kinds, boxes (R, 4)) of an image's regions other than the full view.

    Reads only the row group of the one regions shard that holds the image
    (:func:`region_shard_plan`), not the ``regions`` view over every shard."""
    parts = [t for path, pos in region_shard_plan(cat, [image_id])
             if (t := read_region_rows(path, [image_id], pos, ["region_id", "image_id", "kind", "x0", "y0", "x1", "y1"]))
             is not None]
    if not parts:
        return np.zeros(0, np.int64), [], np.zeros((0, 4), np.float64)
    t = pa.concat_tables(parts)
    t = t.filter(pa.compute.not_equal(t["kind"], "full")).sort_by("region_id")
    boxes = np.stack([t[c].to_numpy().astype(np.float64) for c in ("x0", "y0", "x1", "y1")], axis=1).reshape(-1, 4)
    return t["region_id"].to_numpy().astype(np.int64), t["kind"].to_pylist(), boxes


def region_count(cat: Catalog, *, exclude_kind: str | None = None) -> int:
    """Rows of the ``regions`` view (from the Parquet footers); ``exclude_kind="full"``: every
    region but the full views (one per image)."""
    n = int(cat.con.execute("SELECT count(*) FROM regions").fetchone()[0])
    if exclude_kind == "full":
        n -= image_count(cat)
    return n


IMAGES_PER_ROW_GROUP_KEY = b"zsl.images_per_row_group"  # regions shard metadata (stores.shards.write_pairs)


def region_shard_plan(cat: Catalog, image_ids: Sequence[int] | None = None) -> list[tuple[Path, np.ndarray | None]]:
    """Which regions shards a reader of ``image_ids`` must open, and where the images sit in them.

    ``image_ids`` None: every committed regions shard (positions None: read it whole). Else the
    images shards (one small row per image: ``image_id`` is all that is read) say which pair holds
    each image and at which row; returns ``(regions shard, rows of the wanted images in its images
    partner)`` for those pairs only, in shard order, so :func:`read_region_rows` can read just
    their row groups."""
    bad = set(cat.unreadable_shards)
    regions = [p for p in cat.committed_shard_files("regions") if p not in bad]
    if image_ids is None:
        return [(p, None) for p in regions]
    by_name = {p.name: p for p in regions}
    images = [p for p in cat.committed_shard_files("images") if p not in bad and p.name in by_name]
    wanted_ids = pa.table({"image_id": pa.array(sorted({int(i) for i in image_ids}), pa.int64())})  # noqa: F841
    if not images or wanted_ids.num_rows == 0:
        return []
    lst = ", ".join("'" + str(f).replace("'", "''") + "'" for f in images)
    rows = cat.con.execute(
        f"SELECT filename, file_row_number FROM read_parquet([{lst}], filename = true, file_row_number = true) "
        "WHERE image_id IN (SELECT image_id FROM wanted_ids) ORDER BY filename, file_row_number").fetchall()
    plan: dict[str, list[int]] = {}
    for filename, row in rows:
        plan.setdefault(Path(filename).name, []).append(int(row))
    return [(by_name[name], np.asarray(pos, np.int64)) for name, pos in sorted(plan.items())]


def read_region_rows(path: Path, image_ids: Sequence[int] | None, positions: np.ndarray | None,
                     columns: list[str]) -> pa.Table | None:
    """The rows of ``image_ids`` (None: all) in one regions shard, reading only the row groups
    that hold them when the shard records how many images each row group holds and ``positions``
    (the images' rows in the images partner) are known; else the whole shard. A damaged shard is
    a one-line StoreError naming it. ``columns`` must include ``image_id`` when filtering."""
    try:
        pf = pq.ParquetFile(path)
        per = (pf.metadata.metadata or {}).get(IMAGES_PER_ROW_GROUP_KEY)
        if positions is not None and per is not None and pf.num_row_groups > 1:
            groups = sorted({int(p) // int(per) for p in positions if int(p) // int(per) < pf.num_row_groups})
            t = pf.read_row_groups(groups, columns=columns)
        else:
            t = pf.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise unreadable(path, parquet_problem(path) or " ".join(str(exc).split())) from None
    if image_ids is not None:
        keep = np.isin(t["image_id"].to_numpy(), np.asarray(list(image_ids), np.int64))
        if not keep.any():
            return None
        if not keep.all():
            t = t.filter(pa.array(keep))
    return t


def region_batches_of(t: pa.Table) -> Iterator[RegionBatch]:
    """A shard's rows (:data:`REGION_BATCH_COLUMNS`; each image's rows contiguous, full view
    first) -> :class:`RegionBatch` es grouped by region layout (the kinds in order, a mirrored AWT
    view counting as a view), in order of first appearance. The one grouping rule of every reader
    (both engines of classify)."""
    img = t["image_id"].to_numpy()
    emb = embeddings_to_numpy(t["embedding"])
    rid = t["region_id"].to_numpy()
    kinds = np.array(t["kind"].to_pylist(), dtype=object)
    boxes = np.stack([t[c].to_numpy() for c in ("x0", "y0", "x1", "y1")], 1).astype(np.float32)
    starts = np.flatnonzero(kinds == "full")  # each image's rows are contiguous, full first
    sizes = np.append(starts[1:], len(img)) - starts
    layout = np.where(kinds == "view-flip", "view", kinds)
    groups: dict = {}
    for i, (s, n) in enumerate(zip(starts, sizes)):
        groups.setdefault((int(n), tuple(layout[s : s + n])), []).append(i)
    for (r, _), members in groups.items():
        sel = np.asarray(members)
        rows = starts[sel, None] + np.arange(r)[None, :]
        yield RegionBatch(img[starts[sel]], rid[rows], emb[rows], kinds[rows], boxes[rows])


REGION_BATCH_COLUMNS = ["region_id", "image_id", "kind", "x0", "y0", "x1", "y1", "embedding"]


def iter_region_batches(cat: Catalog, image_ids: Sequence[int] | None = None) -> Iterator[RegionBatch]:
    """Region embeddings shard by shard, grouped by region layout (one shard in memory at a time).

    With ``image_ids`` only the shards that hold them are opened, and of those only the row
    groups that hold them (:func:`region_shard_plan`)."""
    if not cat.shard_files("regions"):
        raise StoreError(f"No indexed images in {cat.root}; run `pipeline index-images PATH` first.")
    for path, positions in region_shard_plan(cat, image_ids):
        t = read_region_rows(path, image_ids, positions, REGION_BATCH_COLUMNS)
        if t is not None and t.num_rows:
            yield from region_batches_of(t)


def full_view_embeddings(cat: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, full-view embeddings) of every indexed image."""
    table = read_tables(cat.shard_files("regions"), columns=["image_id", "kind", "embedding"],
                        filters=[("kind", "=", "full")])
    if table is None or table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return table["image_id"].to_numpy(), embeddings_to_numpy(table["embedding"])


IMAGE_SHARD_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("path", pa.string()), ("sha256", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("label", pa.string()), ("index_run_id", pa.int64()),
])


def insert_image_error(cat: Catalog, path: str, sha256: str | None, reason: str, index_run_id: int) -> None:
    """Record a failed image; the same (path, content, reason) again only moves its run and time
    (one row per key: the unique index ``image_errors_key``)."""
    updated = cat.con.execute(
        "UPDATE image_errors SET index_run_id = ?, created_at = ? "
        "WHERE path = ? AND sha256 IS NOT DISTINCT FROM ? AND reason = ? RETURNING 1",
        [index_run_id, now_utc(), path, sha256, reason],
    ).fetchall()
    if updated:
        return
    insert_columns(cat, "image_errors", {
        "path": pa.array([path], pa.string()), "sha256": pa.array([sha256], pa.string()),
        "reason": pa.array([reason], pa.string()), "index_run_id": pa.array([index_run_id], pa.int64()),
        "created_at": pa.array([now_utc()], pa.timestamp("us")),
    })


def clear_image_errors(cat: Catalog, paths: Sequence[str]) -> int:
    """Forget the failures of files that are now indexed (or found in the store by content)."""
    if not paths:
        return 0
    return len(cat.con.execute("DELETE FROM image_errors WHERE path IN (SELECT unnest(?)) RETURNING 1",
                               [list(paths)]).fetchall())


def next_index_run_id(cat: Catalog) -> int:
    return cat.next_id("index_runs", "index_run_id")


def insert_index_run(cat: Catalog, index_run_id: int, params: dict, model: str) -> None:
    insert_columns(cat, "index_runs", {
        "index_run_id": pa.array([index_run_id], pa.int64()), "params": pa.array([dumps(params)], pa.string()),
        "model": pa.array([model], pa.string()), "created_at": pa.array([now_utc()], pa.timestamp("us")),
    })


def index_run_params(cat: Catalog) -> list[dict]:
    """The resolved settings of every index run, oldest first."""
    return [json.loads(r[0]) for r in cat.con.execute("SELECT params FROM index_runs ORDER BY index_run_id").fetchall()]
