"""Every read and write the stages make, by name: the only module besides ``catalog.py`` and
``migrations.py`` that knows table and column names.

Writers insert by **column name** (``INSERT INTO t (a, b) SELECT a, b FROM arrow``), so a
migration that adds a column never shifts a write. Readers return plain Python values or
numpy arrays shaped for what the stages do with them. Each section is one table (or a
family of tables); ``docs/architecture.md`` lists which stage calls which writer.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from .catalog import Catalog, dumps, now_utc
from .errors import StoreError
from .parquet import embedding_array, embeddings_to_numpy, read_tables

def insert_arrow(cat: Catalog, table: str, data: pa.Table, *, replace: bool = False) -> int:
    """Insert an Arrow table into ``table`` by column name. Returns the number of rows."""
    if data.num_rows == 0:
        return 0
    cols = ", ".join(f'"{c}"' for c in data.column_names)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    arrow_rows = data  # noqa: F841  (DuckDB's replacement scan reads this local by name)
    cat.con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM arrow_rows")
    return data.num_rows


def insert_columns(cat: Catalog, table: str, columns: dict[str, Any], *, replace: bool = False) -> int:
    """Insert parallel columns (lists, numpy arrays or Arrow arrays) by name."""
    return insert_arrow(cat, table, pa.table(columns), replace=replace)


def _rows(cat: Catalog, sql: str, args: Sequence | None = None) -> list[dict]:
    cur = cat.con.execute(sql, list(args) if args is not None else None)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# ---- classes ----------------------------------------------------------------------------
def class_names(cat: Catalog) -> dict[int, str]:
    """class_id -> display name."""
    return dict(cat.con.execute("SELECT class_id, name FROM classes ORDER BY class_id").fetchall())


def class_ids_by_norm(cat: Catalog) -> dict[str, int]:
    """Normalised name (the identity of a class) -> class_id."""
    return dict(cat.con.execute("SELECT norm_name, class_id FROM classes").fetchall())


def class_count(cat: Catalog) -> int:
    return int(cat.con.execute("SELECT count(*) FROM classes").fetchone()[0])


def insert_classes(cat: Catalog, class_ids: Sequence[int], names: Sequence[str], norm_names: Sequence[str]) -> int:
    return insert_columns(cat, "classes", {
        "class_id": pa.array(class_ids, pa.int64()), "name": pa.array(names, pa.string()),
        "norm_name": pa.array(norm_names, pa.string()),
    })


# ---- attributes and their embeddings ----------------------------------------------------
@dataclass(frozen=True)
class TextMatrix:
    """Encoded texts of one kind: ``ids`` (attr_id or prompt_id), their ``class_ids`` and
    ``embeddings`` (N, D), ordered by id."""

    ids: np.ndarray
    class_ids: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _text_matrix(rows: list[tuple]) -> TextMatrix:
    if not rows:
        return TextMatrix(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    return TextMatrix(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                      np.array([r[2] for r in rows], np.float32))


def attribute_keys(cat: Catalog, style: str) -> set[tuple[int, str]]:
    """(class_id, text) of the stored attributes of a style (to skip what is already there)."""
    return set(cat.con.execute("SELECT class_id, text FROM attributes WHERE style = ?", [style]).fetchall())


def attribute_key_counts(cat: Catalog, style: str) -> Counter:
    """(class_id, text) -> how many rows of a style hold it (a text repeated in its class's list
    is one row per occurrence)."""
    return Counter({(c, t): n for c, t, n in cat.con.execute(
        "SELECT class_id, text, count(*) FROM attributes WHERE style = ? GROUP BY ALL", [style]).fetchall()})


def insert_attributes(cat: Catalog, rows: list[dict]) -> int:
    """rows: attr_id, class_id, text, prompt, source, style, prompt_version."""
    if not rows:
        return 0
    return insert_arrow(cat, "attributes", pa.Table.from_pylist(rows, schema=pa.schema([
        ("attr_id", pa.int64()), ("class_id", pa.int64()), ("text", pa.string()), ("prompt", pa.string()),
        ("source", pa.string()), ("style", pa.string()), ("prompt_version", pa.string()),
    ])))


def attributes_without_embedding(cat: Catalog, model: str) -> list[tuple[int, str]]:
    """(attr_id, prompt) of every attribute not yet encoded by ``model``."""
    return cat.con.execute(
        "SELECT a.attr_id, a.prompt FROM attributes a LEFT JOIN attribute_embeddings e "
        "ON a.attr_id = e.attr_id AND e.model = ? WHERE e.attr_id IS NULL ORDER BY a.attr_id",
        [model],
    ).fetchall()


def insert_attribute_embeddings(cat: Catalog, attr_ids: Sequence[int], model: str, embeddings: np.ndarray) -> int:
    return insert_columns(cat, "attribute_embeddings", {
        "attr_id": pa.array(attr_ids, pa.int64()), "model": pa.array([model] * len(attr_ids), pa.string()),
        "embedding": embedding_array(embeddings, "float32"),
    })


def attribute_matrix(cat: Catalog, model: str, style: str | None = None) -> TextMatrix:
    """Encoded attributes (of one style, or all) for ``model``, ordered by attr_id."""
    sql = ("SELECT a.attr_id, a.class_id, e.embedding FROM attributes a JOIN attribute_embeddings e USING (attr_id) "
           "WHERE e.model = ?" + (" AND a.style = ?" if style else "") + " ORDER BY a.attr_id")
    return _text_matrix(cat.con.execute(sql, [model, style] if style else [model]).fetchall())


def attribute_styles(cat: Catalog) -> list[str]:
    return [r[0] for r in cat.con.execute("SELECT DISTINCT style FROM attributes ORDER BY style").fetchall()]


def attribute_texts(cat: Catalog, attr_ids) -> dict[int, str]:
    ids = [int(a) for a in attr_ids]
    if not ids:
        return {}
    return dict(cat.con.execute("SELECT attr_id, text FROM attributes WHERE list_contains(?, attr_id)", [ids]).fetchall())


def attributes_by_class(cat: Catalog, style: str) -> dict[str, list[tuple[str, str]]]:
    """Class name -> [(text, prompt)] of one style, classes and attributes in id order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, text, prompt in cat.con.execute(
        "SELECT c.name, a.text, a.prompt FROM attributes a JOIN classes c USING (class_id) WHERE a.style = ? "
        "ORDER BY c.class_id, a.attr_id", [style]
    ).fetchall():
        out.setdefault(name, []).append((text, prompt))
    return out


def find_attribute(cat: Catalog, class_id: int, text: str) -> int | None:
    """attr_id of a class's attribute by its text (case and surrounding blanks ignored)."""
    row = cat.con.execute(
        "SELECT attr_id FROM attributes WHERE class_id = ? AND lower(trim(text)) = ? ORDER BY attr_id LIMIT 1",
        [class_id, text.strip().lower()],
    ).fetchone()
    return int(row[0]) if row else None


def attribute_embedding_counts(cat: Catalog, model: str) -> tuple[int, int]:
    """(attributes, attributes encoded by ``model``)."""
    row = cat.con.execute(
        "SELECT count(*), count(e.attr_id) FROM attributes a LEFT JOIN attribute_embeddings e "
        "ON a.attr_id = e.attr_id AND e.model = ?", [model]
    ).fetchone()
    return int(row[0]), int(row[1])


# ---- class prompts (CLIP templates, apart from user attributes) --------------------------
def class_prompt_keys(cat: Catalog, template_set: str) -> set[tuple[int, str]]:
    return set(cat.con.execute(
        "SELECT class_id, prompt FROM class_prompts WHERE template_set = ?", [template_set]).fetchall())


def insert_class_prompts(cat: Catalog, rows: list[dict]) -> int:
    """rows: prompt_id, class_id, template_set, template, prompt."""
    if not rows:
        return 0
    return insert_arrow(cat, "class_prompts", pa.Table.from_pylist(rows, schema=pa.schema([
        ("prompt_id", pa.int64()), ("class_id", pa.int64()), ("template_set", pa.string()),
        ("template", pa.string()), ("prompt", pa.string()),
    ])))


def class_prompts_without_embedding(cat: Catalog, model: str) -> list[tuple[int, str]]:
    return cat.con.execute(
        "SELECT p.prompt_id, p.prompt FROM class_prompts p LEFT JOIN class_prompt_embeddings e "
        "ON p.prompt_id = e.prompt_id AND e.model = ? WHERE e.prompt_id IS NULL ORDER BY p.prompt_id",
        [model],
    ).fetchall()


def insert_class_prompt_embeddings(cat: Catalog, prompt_ids: Sequence[int], model: str, embeddings: np.ndarray) -> int:
    return insert_columns(cat, "class_prompt_embeddings", {
        "prompt_id": pa.array(prompt_ids, pa.int64()), "model": pa.array([model] * len(prompt_ids), pa.string()),
        "embedding": embedding_array(embeddings, "float32"),
    })


def class_prompt_matrix(cat: Catalog, model: str, template_set: str) -> TextMatrix:
    return _text_matrix(cat.con.execute(
        "SELECT p.prompt_id, p.class_id, e.embedding FROM class_prompts p JOIN class_prompt_embeddings e "
        "USING (prompt_id) WHERE e.model = ? AND p.template_set = ? ORDER BY p.prompt_id",
        [model, template_set],
    ).fetchall())


def class_prompt_texts(cat: Catalog, template_set: str) -> dict[str, list[str]]:
    """Class name -> the prompts of one template set (the exact strings encoded)."""
    out: dict[str, list[str]] = {}
    for name, prompt in cat.con.execute(
        "SELECT c.name, p.prompt FROM class_prompts p JOIN classes c USING (class_id) WHERE p.template_set = ? "
        "ORDER BY c.class_id, p.prompt_id", [template_set]
    ).fetchall():
        out.setdefault(name, []).append(prompt)
    return out


def texts_by_ids(cat: Catalog, attr_ids: Sequence[int]) -> dict[str, list[str]]:
    """Class name -> encoded prompts of the given attributes (what a run scored against)."""
    out: dict[str, list[str]] = {}
    ids = [int(a) for a in attr_ids]
    for name, prompt in cat.con.execute(
        "SELECT c.name, a.prompt FROM attributes a JOIN classes c USING (class_id) WHERE list_contains(?, a.attr_id) "
        "ORDER BY c.class_id, a.attr_id", [ids]
    ).fetchall():
        out.setdefault(name, []).append(prompt)
    return out


# ---- images and regions (Parquet shards behind the views) -------------------------------
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
        return _rows(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE image_id = ?", [image_id])
    if paths:
        return _rows(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE list_contains(?, path)", [list(paths)])
    if sha256 is not None:
        return _rows(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE sha256 = ?", [sha256])
    if path_suffix is not None:
        return _rows(cat, f"SELECT {_IMAGE_COLS} FROM images WHERE ends_with(path, ?)", [path_suffix])
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


# ---- reading regions by image: only the shards (and row groups) that hold them ------------
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
    import pyarrow.parquet as pq

    from .parquet import parquet_problem, unreadable

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


# ---- index runs -------------------------------------------------------------------------
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


# ---- runs and their results -------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    run_id: int
    method: str
    params: dict  # the resolved configuration and provenance the run used
    model: str
    created_at: datetime | None = None


def next_run_id(cat: Catalog) -> int:
    return cat.next_id("runs", "run_id")


def insert_run(cat: Catalog, run: RunRecord) -> None:
    insert_columns(cat, "runs", {
        "run_id": pa.array([run.run_id], pa.int64()), "method": pa.array([run.method], pa.string()),
        "params": pa.array([dumps(run.params)], pa.string()), "model": pa.array([run.model], pa.string()),
        "created_at": pa.array([run.created_at or now_utc()], pa.timestamp("us")),
    })


def _run(row) -> RunRecord | None:
    if row is None:
        return None
    try:
        params = json.loads(row[2])
    except ValueError:
        params = {}
    return RunRecord(int(row[0]), row[1], params, row[3], row[4])


_RUN_COLS = "r.run_id, r.method, r.params, r.model, r.created_at"


def get_run(cat: Catalog, run_id: int) -> RunRecord | None:
    return _run(cat.con.execute(f"SELECT {_RUN_COLS} FROM runs r WHERE run_id = ?", [run_id]).fetchone())


def latest_run(cat: Catalog, *, with_alignments: bool = False) -> RunRecord | None:
    where = " WHERE EXISTS (SELECT 1 FROM alignments a WHERE a.run_id = r.run_id)" if with_alignments else ""
    return _run(cat.con.execute(f"SELECT {_RUN_COLS} FROM runs r{where} ORDER BY r.run_id DESC LIMIT 1").fetchone())


def latest_runs_by_method(cat: Catalog) -> dict[str, int]:
    """method -> its latest run_id, in the order the methods were first run."""
    return dict(cat.con.execute("SELECT method, max(run_id) FROM runs GROUP BY method ORDER BY min(run_id)").fetchall())


def run_has_alignments(cat: Catalog, run_id: int) -> bool:
    return cat.con.execute("SELECT count(*) FROM alignments WHERE run_id = ?", [run_id]).fetchone()[0] > 0


def insert_predictions(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, rank, score, global_score, local_score."""
    return insert_columns(cat, "predictions", columns)


def insert_alignments(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, region_id, attr_id, mass, similarity."""
    return insert_columns(cat, "alignments", columns)


def insert_object_bindings(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, region_id, n_parts, score."""
    return insert_columns(cat, "object_bindings", columns)


# ---- contrastive reasons (m013) -----------------------------------------------------------
def insert_contrast_terms(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, other_class_id, runner_up, true_class, attr_id,
    other_attr_id, shared, term, reason_rank, gap."""
    return insert_columns(cat, "contrast_terms", columns)


def run_image_ids(cat: Catalog, run_id: int) -> list[int]:
    """The images a run stored predictions for, ascending."""
    return [r[0] for r in cat.con.execute(
        "SELECT DISTINCT image_id FROM predictions WHERE run_id = ? ORDER BY image_id", [run_id]).fetchall()]


def top_two_with_labels(cat: Catalog, run_id: int, image_ids: Sequence[int] | None = None) -> list[tuple]:
    """(image_id, label, [class_id by rank, at most 2], [score by rank]) of each image of a run."""
    where = ""
    if image_ids is not None:
        wanted_ids = pa.table({"image_id": pa.array([int(i) for i in image_ids], pa.int64())})  # noqa: F841 (by name)
        where = " AND p.image_id IN (SELECT image_id FROM wanted_ids)"
    return cat.con.execute(
        "SELECT p.image_id, any_value(i.label), list(p.class_id ORDER BY p.rank), list(p.score ORDER BY p.rank) "
        "FROM predictions p JOIN images i USING (image_id) WHERE p.run_id = ? AND p.rank <= 2" + where +
        " GROUP BY p.image_id ORDER BY p.image_id", [run_id]).fetchall()


def class_contributions(cat: Catalog, run_id: int, image_ids: Sequence[int], class_ids: Sequence[int]) -> list[tuple]:
    """(image_id, class_id, attr_id, Σ mass·similarity, Σ mass) of the stored plan rows of each
    (image_ids[i], class_ids[i]) pair, ordered by image, class, attr_id."""
    wanted = pa.table({"image_id": pa.array([int(i) for i in image_ids], pa.int64()),  # noqa: F841 (scanned by name)
                       "class_id": pa.array([int(c) for c in class_ids], pa.int64())})
    return cat.con.execute(
        "SELECT al.image_id, al.class_id, al.attr_id, sum(al.mass * al.similarity), sum(al.mass) FROM alignments al "
        "SEMI JOIN wanted w ON w.image_id = al.image_id AND w.class_id = al.class_id "
        "WHERE al.run_id = ? GROUP BY ALL ORDER BY 1, 2, 3", [run_id]).fetchall()


def attribute_text_embeddings(cat: Catalog, attr_ids: Sequence[int], model: str) -> dict[int, tuple[str, np.ndarray | None]]:
    """attr_id -> (attributes.text, its embedding by ``model`` or None)."""
    ids = [int(a) for a in attr_ids]
    if not ids:
        return {}
    rows = cat.con.execute(
        "SELECT a.attr_id, a.text, e.embedding FROM attributes a LEFT JOIN attribute_embeddings e "
        "ON e.attr_id = a.attr_id AND e.model = ? WHERE list_contains(?, a.attr_id)", [model, ids]).fetchall()
    return {int(r[0]): (r[1], None if r[2] is None else np.asarray(r[2], np.float32)) for r in rows}


def contrast_rows(cat: Catalog, run_id: int, image_id: int) -> list[dict]:
    """The ``contrasts`` view's rows of one image of a run (the prompt row first, then by
    other class, reason_rank, shared rows last)."""
    cur = cat.con.execute(
        "SELECT * FROM contrasts WHERE run_id = ? AND image_id = ? "
        "ORDER BY other_class_id, attr_id IS NULL AND other_attr_id IS NULL DESC, reason_rank NULLS LAST, "
        "attr_id NULLS LAST, other_attr_id", [run_id, image_id])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def run_has_contrasts(cat: Catalog, run_id: int) -> bool:
    return cat.con.execute("SELECT count(*) FROM contrast_terms WHERE run_id = ?", [run_id]).fetchone()[0] > 0


def object_binding(cat: Catalog, run_id: int, image_id: int, class_id: int) -> dict | None:
    """The object that carried a class (object-bound runs): region_id, kind, n_parts, score and
    its box (x0, y0, x1, y1); None for other runs."""
    rows = _rows(cat,
        "SELECT b.region_id, r.kind, b.n_parts, b.score, r.x0, r.y0, r.x1, r.y1 FROM object_bindings b "
        "JOIN regions r ON r.region_id = b.region_id AND r.image_id = b.image_id "
        "WHERE b.run_id = ? AND b.image_id = ? AND b.class_id = ?", [run_id, image_id, class_id])
    if not rows:
        return None
    r = rows[0]
    return dict(region_id=int(r["region_id"]), kind=r["kind"], n_parts=int(r["n_parts"]), score=float(r["score"]),
                box=(float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])))


def insert_sample_predictions(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, sample, class_id."""
    return insert_columns(cat, "sample_predictions", columns)


def ranked_classes(cat: Catalog, run_id: int) -> list[tuple[int, str | None, list[int]]]:
    """(image_id, label, every stored class_id by rank) per image of a run."""
    return cat.con.execute(
        "SELECT p.image_id, i.label, list(p.class_id ORDER BY p.rank) FROM predictions p JOIN images i USING (image_id) "
        "WHERE p.run_id = ? GROUP BY ALL ORDER BY p.image_id",
        [run_id],
    ).fetchall()


def sample_top1(cat: Catalog, run_id: int) -> dict[int, list[int]]:
    """image_id -> the top-1 class_id of each random draw (sample order); empty for most methods."""
    rows = cat.con.execute(
        "SELECT image_id, list(class_id ORDER BY sample) FROM sample_predictions WHERE run_id = ? GROUP BY image_id",
        [run_id]).fetchall()
    return {int(i): c for i, c in rows}


def image_predictions(cat: Catalog, run_id: int, image_id: int) -> list[dict]:
    """A run's ranked classes for one image: class_id, name, rank, score, global_score, local_score."""
    return _rows(cat,
        "SELECT p.class_id, c.name, p.rank, p.score, p.global_score, p.local_score FROM predictions p "
        "JOIN classes c USING (class_id) WHERE p.run_id = ? AND p.image_id = ? ORDER BY p.rank",
        [run_id, image_id])


def top1_images(cat: Catalog, run_id: int) -> list[dict]:
    """Every image of a run with its top-1 class: image_id, path, width, height, label,
    class_id, predicted_norm."""
    return _rows(cat,
        "SELECT i.image_id, i.path, i.width, i.height, i.label, p.class_id, c.norm_name AS predicted_norm "
        "FROM predictions p JOIN images i USING (image_id) JOIN classes c USING (class_id) "
        "WHERE p.run_id = ? AND p.rank = 1 ORDER BY i.path", [run_id])


def top1_with_alignments(cat: Catalog, run_id: int, limit: int | None = None) -> list[tuple[int, int]]:
    """(image_id, predicted class_id) of a run's images whose prediction has alignments."""
    rows = cat.con.execute(
        "SELECT p.image_id, p.class_id FROM predictions p WHERE p.run_id = ? AND p.rank = 1 AND EXISTS "
        "(SELECT 1 FROM alignments a WHERE a.run_id = p.run_id AND a.image_id = p.image_id AND a.class_id = p.class_id) "
        "ORDER BY p.image_id" + (" LIMIT ?" if limit else ""),
        [run_id, limit] if limit else [run_id],
    ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def alignment_rows(cat: Catalog, run_id: int, image_id: int, class_id: int) -> list[tuple]:
    """(region_id, attr_id, mass, similarity) of one class's plan on one image."""
    return cat.con.execute(
        "SELECT region_id, attr_id, mass, similarity FROM alignments WHERE run_id = ? AND image_id = ? AND class_id = ?",
        [run_id, image_id, class_id],
    ).fetchall()


def top_attributes(cat: Catalog, run_id: int, n_classes: int = 3, n_attrs: int = 3) -> list[dict]:
    """Each image's top classes with their strongest attributes (by Σ mass·similarity)."""
    rows = cat.con.execute(
        """
        SELECT i.path, p.image_id, p.rank, c.name, p.score,
               list(ta.attribute ORDER BY ta.attr_rank) FILTER (WHERE ta.attribute IS NOT NULL) AS attrs, i.label
        FROM predictions p JOIN classes c USING (class_id) JOIN images i USING (image_id)
        LEFT JOIN top_attributes ta
               ON ta.run_id = p.run_id AND ta.image_id = p.image_id AND ta.class_id = p.class_id AND ta.attr_rank <= ?
        WHERE p.run_id = ? AND p.rank <= ?
        GROUP BY ALL ORDER BY i.path, p.rank
        """,
        [n_attrs, run_id, n_classes],
    ).fetchall()
    return [dict(path=r[0], image_id=r[1], rank=r[2], name=r[3], score=r[4], attributes=r[5] or [], label=r[6])
            for r in rows]


def never_used_attributes(cat: Catalog, run_id: int, limit: int = 30) -> tuple[int, list[tuple[str, str]]]:
    """(how many, first ``limit`` (class, attribute)) of descriptors that carried no mass in a run."""
    n = cat.con.execute("SELECT count(*) FROM attribute_usage WHERE run_id = ? AND never_used", [run_id]).fetchone()[0]
    rows = cat.con.execute(
        "SELECT class_name, attribute FROM attribute_usage WHERE run_id = ? AND never_used "
        "ORDER BY class_name, attribute LIMIT ?", [run_id, limit],
    ).fetchall()
    return int(n), rows


# ---- LLM calls and cache ----------------------------------------------------------------
LLM_CALL_SCHEMA = pa.schema([
    ("id", pa.string()), ("batch_id", pa.string()), ("created_at", pa.timestamp("us")), ("model", pa.string()),
    ("base_url", pa.string()), ("prompt_version", pa.string()), ("style", pa.string()), ("class_name", pa.string()),
    ("sample_index", pa.int32()), ("attempt", pa.int32()), ("response_format", pa.string()), ("request", pa.string()),
    ("response", pa.string()), ("status", pa.string()), ("error", pa.string()), ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()), ("latency_ms", pa.float64()), ("retries", pa.int32()),
])
LLM_CACHE_SCHEMA = pa.schema([
    ("model", pa.string()), ("base_url", pa.string()), ("prompt_version", pa.string()), ("style", pa.string()),
    ("norm_name", pa.string()), ("sample_index", pa.int32()), ("class_name", pa.string()), ("status", pa.string()),
    ("items", pa.string()), ("call_id", pa.string()), ("created_at", pa.timestamp("us")),
])

_LLM_KEY = "model = ? AND base_url = ? AND prompt_version = ? AND style = ?"


def llm_cache_status(cat: Catalog, key: Sequence[str]) -> dict[tuple[str, int], str]:
    """(norm_name, sample_index) -> ok | short | failed, for one (model, server, prompt version, style)."""
    rows = cat.con.execute(f"SELECT norm_name, sample_index, status FROM llm_cache WHERE {_LLM_KEY}", list(key)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def llm_cache_items(cat: Catalog, key: Sequence[str]) -> list[tuple[str, int, str, list[str]]]:
    """(norm_name, sample_index, status, items) of one key, by class and sample."""
    rows = cat.con.execute(
        f"SELECT norm_name, sample_index, status, items FROM llm_cache WHERE {_LLM_KEY} ORDER BY norm_name, sample_index",
        list(key)).fetchall()
    return [(n, i, s, json.loads(items)) for n, i, s, items in rows]


def llm_failure_reasons(cat: Catalog, key: Sequence[str]) -> dict[str, str]:
    """norm_name -> the error of the call that decided a cached failure."""
    return dict(cat.con.execute(
        "SELECT k.norm_name, c.error FROM llm_cache k JOIN llm_calls c ON c.id = k.call_id WHERE k.status = 'failed' "
        "AND k.model = ? AND k.base_url = ? AND k.prompt_version = ? AND k.style = ?", list(key)).fetchall())


def write_llm_jobs(cat: Catalog, calls: list[dict], cache: list[dict]) -> None:
    """One transaction for a batch of finished LLM jobs: their calls and cache rows."""
    with cat.transaction():
        if calls:
            insert_arrow(cat, "llm_calls", pa.Table.from_pylist(calls, schema=LLM_CALL_SCHEMA))
        if cache:
            insert_arrow(cat, "llm_cache", pa.Table.from_pylist(cache, schema=LLM_CACHE_SCHEMA), replace=True)


# ---- faithfulness -----------------------------------------------------------------------
@dataclass
class FaithfulnessRows:
    """What one faithfulness run writes (rows as dicts keyed by column name)."""

    faith_run_id: int
    run_id: int
    params: dict
    model: str | None
    curves: list[dict] = field(default_factory=list)  # image_id, class_id, kind, step, fraction, score
    scores: list[dict] = field(default_factory=list)  # image_id, class_id, kind, auc
    pointing: list[dict] = field(default_factory=list)  # image_id, class_id, attr_id, attribute, hit, ...
    summary: list[dict] = field(default_factory=list)  # map_kind, metric, images, value, ... (faithfulness --compare)


def next_faithfulness_run_id(cat: Catalog) -> int:
    return cat.next_id("faithfulness_runs", "faith_run_id")


def insert_faithfulness(cat: Catalog, rows: FaithfulnessRows) -> None:
    ids = {"faith_run_id": rows.faith_run_id, "run_id": rows.run_id}
    with cat.transaction():
        insert_columns(cat, "faithfulness_runs", {
            **{k: pa.array([v], pa.int64()) for k, v in ids.items()},
            "params": pa.array([dumps(rows.params)], pa.string()), "model": pa.array([rows.model], pa.string()),
            "created_at": pa.array([now_utc()], pa.timestamp("us")),
        })
        for table, data in (("faithfulness_curves", rows.curves), ("faithfulness_scores", rows.scores),
                            ("pointing_game", rows.pointing), ("faithfulness_summary", rows.summary)):
            if data:
                insert_arrow(cat, table, pa.Table.from_pylist([{**ids, **r} for r in data]))


def map_kind_summary(cat: Catalog, run_id: int, map_kind: str, *, this_run: bool = False) -> dict | None:
    """How ``map_kind`` scored in the latest ``faithfulness --compare`` that measured it: of this
    run if there is one, else (unless ``this_run``) of any run in the store.
    {faith_run_id, run_id, metrics: {metric: row}}."""
    for where, args in (("run_id = ? AND ", [run_id]), ("", []))[: 1 if this_run else 2]:
        row = cat.con.execute(f"SELECT max(faith_run_id) FROM faithfulness_summary WHERE {where}map_kind = ?",
                              [*args, map_kind]).fetchone()
        if row and row[0] is not None:
            fid = int(row[0])
            cols = ["metric", "images", "value", "random_value", "chance", "diff", "diff_low", "diff_high", "better", "run_id"]
            rows = cat.con.execute(f"SELECT {', '.join(cols)} FROM faithfulness_summary WHERE faith_run_id = ? AND map_kind = ? "
                                   "ORDER BY metric", [fid, map_kind]).fetchall()
            metrics = {r[0]: dict(zip(cols, r)) for r in rows}
            return dict(faith_run_id=fid, run_id=int(rows[0][-1]), metrics=metrics)
    return None


def faithfulness_summary_rows(cat: Catalog, faith_run_id: int) -> list[dict]:
    cols = ["map_kind", "metric", "images", "value", "random_value", "chance", "diff", "diff_low", "diff_high", "better"]
    return [dict(zip(cols, r)) for r in cat.con.execute(
        f"SELECT {', '.join(cols)} FROM faithfulness_summary WHERE faith_run_id = ? ORDER BY map_kind, metric",
        [faith_run_id]).fetchall()]


def latest_faithfulness(cat: Catalog, run_id: int) -> dict | None:
    """The latest faithfulness run of a classify run: params, mean curves, mean AUCs, pointing."""
    row = cat.con.execute("SELECT max(faith_run_id) FROM faithfulness_runs WHERE run_id = ? AND faith_run_id NOT IN "
                          "(SELECT faith_run_id FROM faithfulness_summary)", [run_id]).fetchone()  # not --compare runs
    if row is None or row[0] is None:
        return None
    fid = row[0]
    params = json.loads(cat.con.execute("SELECT params FROM faithfulness_runs WHERE faith_run_id = ?", [fid]).fetchone()[0])
    curves = {
        kind: (np.array(frac), np.array(score))
        for kind, frac, score in cat.con.execute(
            "SELECT kind, list(fraction ORDER BY step), list(score ORDER BY step) FROM "
            "(SELECT kind, step, avg(fraction) AS fraction, avg(score) AS score FROM faithfulness_curves "
            " WHERE faith_run_id = ? GROUP BY kind, step) GROUP BY kind ORDER BY kind", [fid]).fetchall()
    }
    aucs = dict(cat.con.execute(
        "SELECT kind, avg(auc) FROM faithfulness_scores WHERE faith_run_id = ? GROUP BY kind ORDER BY kind", [fid]).fetchall())
    n = cat.con.execute("SELECT count(DISTINCT image_id) FROM faithfulness_scores WHERE faith_run_id = ?", [fid]).fetchone()[0]
    pg = cat.con.execute(
        "SELECT count(*), avg(hit::DOUBLE), avg(energy_inside) FROM pointing_game WHERE faith_run_id = ?", [fid]).fetchone()
    return dict(faith_run_id=fid, params=params, curves=curves, aucs=aucs, images=int(n),
                pointing=dict(n=pg[0], accuracy=pg[1], energy=pg[2]) if pg[0] else None)


# ---- ids --------------------------------------------------------------------------------
def next_class_id(cat: Catalog) -> int:
    return cat.next_id("classes", "class_id")


def next_attr_id(cat: Catalog) -> int:
    return cat.next_id("attributes", "attr_id")


def next_prompt_id(cat: Catalog) -> int:
    return cat.next_id("class_prompts", "prompt_id")


# ---- shard records (m009: what each Parquet shard held, written by stores.shards) ---------
SHARD_RECORD_SCHEMA = pa.schema([
    ("name", pa.string()), ("table_name", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64()),
    ("sha256", pa.string()), ("index_run_id", pa.int64()), ("created_at", pa.timestamp("us")), ("state", pa.string()),
    ("note", pa.string()),
])


def insert_shard_records(cat: Catalog, rows: list[dict]) -> int:
    """rows: name, table_name, rows, bytes, sha256, index_run_id, state[, note]; created_at is now."""
    if not rows:
        return 0
    now = now_utc()
    return insert_arrow(cat, "shards", pa.Table.from_pylist(
        [{"note": None, "created_at": now, **r} for r in rows], schema=SHARD_RECORD_SCHEMA))


def shard_records(cat: Catalog, states: Sequence[str] | None = ("live",)) -> dict[tuple[str, str], dict]:
    """(table_name, name) -> record, for records in ``states`` (None: every record)."""
    sql = "SELECT name, table_name, rows, bytes, sha256, index_run_id, state, note FROM shards"
    rows = _rows(cat, sql + (" WHERE list_contains(?, state)" if states else "") + " ORDER BY table_name, name",
                 [list(states)] if states else None)
    return {(r["table_name"], r["name"]): r for r in rows}


def set_shard_state(cat: Catalog, table_name: str, name: str, state: str, note: str | None = None) -> None:
    cat.con.execute("UPDATE shards SET state = ?, note = ? WHERE table_name = ? AND name = ?",
                    [state, note, table_name, name])


IMAGE_RESULT_TABLES = ("predictions", "alignments", "sample_predictions", "faithfulness_curves", "faithfulness_scores",
                       "pointing_game", "contrast_terms")


def image_result_counts(cat: Catalog, image_ids: Sequence[int], *, delete: bool = False) -> dict[str, int]:
    """Rows per table of every per-image result of these images (predictions, alignments, WCA
    draws, faithfulness curves/scores, pointing game); ``delete=True`` also deletes them (the
    caller holds the transaction)."""
    removed_ids = pa.table({"image_id": pa.array([int(i) for i in image_ids], pa.int64())})  # noqa: F841 (scanned by name)
    out = {}
    for table in IMAGE_RESULT_TABLES:
        n = cat.con.execute(f"SELECT count(*) FROM {table} WHERE image_id IN (SELECT image_id FROM removed_ids)").fetchone()[0]
        if n and delete:
            cat.con.execute(f"DELETE FROM {table} WHERE image_id IN (SELECT image_id FROM removed_ids)")
        out[table] = int(n)
    return out
# ---- compositional pairs (state, object) ------------------------------------------------
# A pair is a row of ``classes``; these tables say which state and object it joins, whether
# it is seen / open-world-only, the state and object texts, and what a czsl-* run stored.
def czsl_vocab_ids(cat: Catalog) -> dict[tuple[str, str], int]:
    """(kind, norm_name) -> vocab_id of every stored state and object."""
    return {(k, n): int(i) for i, k, n in cat.con.execute("SELECT vocab_id, kind, norm_name FROM czsl_vocab").fetchall()}


def czsl_vocab(cat: Catalog, kind: str) -> list[tuple[int, str]]:
    """(vocab_id, name) of the states or the objects, in id order."""
    return [(int(i), n) for i, n in cat.con.execute(
        "SELECT vocab_id, name FROM czsl_vocab WHERE kind = ? ORDER BY vocab_id", [kind]).fetchall()]


def insert_czsl_vocab(cat: Catalog, rows: list[dict]) -> int:
    """rows: vocab_id, kind, name, norm_name."""
    if not rows:
        return 0
    return insert_arrow(cat, "czsl_vocab", pa.Table.from_pylist(rows, schema=pa.schema([
        ("vocab_id", pa.int64()), ("kind", pa.string()), ("name", pa.string()), ("norm_name", pa.string())])))


def next_vocab_id(cat: Catalog) -> int:
    return cat.next_id("czsl_vocab", "vocab_id")


def upsert_czsl_pairs(cat: Catalog, rows: list[dict]) -> int:
    """rows: class_id, state_id, object_id, seen (bool or None), open_only; a pair stored before
    takes the new flags."""
    if not rows:
        return 0
    return insert_arrow(cat, "czsl_pairs", pa.Table.from_pylist(rows, schema=pa.schema([
        ("class_id", pa.int64()), ("state_id", pa.int64()), ("object_id", pa.int64()), ("seen", pa.bool_()),
        ("open_only", pa.bool_())])), replace=True)


def czsl_pair_rows(cat: Catalog) -> list[dict]:
    """Every stored pair: class_id, name, norm_name, state_id, object_id, state, object, seen, open_only."""
    return _rows(cat,
        "SELECT p.class_id, c.name, c.norm_name, p.state_id, p.object_id, s.name AS state, o.name AS object, p.seen, "
        "p.open_only FROM czsl_pairs p JOIN classes c USING (class_id) JOIN czsl_vocab s ON s.vocab_id = p.state_id "
        "JOIN czsl_vocab o ON o.vocab_id = p.object_id ORDER BY p.class_id")


def czsl_pair(cat: Catalog, class_id: int) -> dict | None:
    rows = _rows(cat,
        "SELECT p.class_id, s.name AS state, o.name AS object, p.seen, p.open_only FROM czsl_pairs p "
        "JOIN czsl_vocab s ON s.vocab_id = p.state_id JOIN czsl_vocab o ON o.vocab_id = p.object_id "
        "WHERE p.class_id = ?", [class_id])
    return rows[0] if rows else None


def czsl_text_keys(cat: Catalog) -> set[tuple[int, str, str]]:
    """(vocab_id, style, text) of the stored state and object texts."""
    return {(int(v), s, t) for v, s, t in cat.con.execute("SELECT vocab_id, style, text FROM czsl_texts").fetchall()}


def insert_czsl_texts(cat: Catalog, rows: list[dict]) -> int:
    """rows: text_id, vocab_id, style, text, prompt, source."""
    if not rows:
        return 0
    return insert_arrow(cat, "czsl_texts", pa.Table.from_pylist(rows, schema=pa.schema([
        ("text_id", pa.int64()), ("vocab_id", pa.int64()), ("style", pa.string()), ("text", pa.string()),
        ("prompt", pa.string()), ("source", pa.string())])))


def next_czsl_text_id(cat: Catalog) -> int:
    return cat.next_id("czsl_texts", "text_id")


def czsl_texts_without_embedding(cat: Catalog, model: str) -> list[tuple[int, str]]:
    return cat.con.execute(
        "SELECT t.text_id, t.prompt FROM czsl_texts t LEFT JOIN czsl_text_embeddings e "
        "ON t.text_id = e.text_id AND e.model = ? WHERE e.text_id IS NULL ORDER BY t.text_id", [model]).fetchall()


def insert_czsl_text_embeddings(cat: Catalog, text_ids: Sequence[int], model: str, embeddings: np.ndarray) -> int:
    return insert_columns(cat, "czsl_text_embeddings", {
        "text_id": pa.array(text_ids, pa.int64()), "model": pa.array([model] * len(text_ids), pa.string()),
        "embedding": embedding_array(embeddings, "float32"),
    })


def czsl_text_matrix(cat: Catalog, model: str, kind: str, style: str) -> TextMatrix:
    """Encoded texts of the states or objects of one style: ids = text_id, class_ids = vocab_id."""
    return _text_matrix(cat.con.execute(
        "SELECT t.text_id, t.vocab_id, e.embedding FROM czsl_texts t JOIN czsl_vocab v USING (vocab_id) "
        "JOIN czsl_text_embeddings e USING (text_id) WHERE e.model = ? AND v.kind = ? AND t.style = ? ORDER BY t.text_id",
        [model, kind, style]).fetchall())


def czsl_text_counts(cat: Catalog) -> dict[tuple[str, str], int]:
    """(kind, style) -> how many state / object texts are stored."""
    return {(k, s): int(n) for k, s, n in cat.con.execute(
        "SELECT v.kind, t.style, count(*) FROM czsl_texts t JOIN czsl_vocab v USING (vocab_id) GROUP BY ALL").fetchall()}


def insert_attribute_roles(cat: Catalog, attr_ids: Sequence[int], roles: Sequence[str]) -> int:
    """What part of its pair each attribute describes (state | object | pair)."""
    return insert_columns(cat, "attribute_roles", {
        "attr_id": pa.array(attr_ids, pa.int64()), "role": pa.array(roles, pa.string())}, replace=True)


def attribute_roles(cat: Catalog) -> dict[int, str]:
    return {int(a): r for a, r in cat.con.execute("SELECT attr_id, role FROM attribute_roles").fetchall()}


def class_attributes(cat: Catalog, class_ids: Sequence[int], style: str = "descriptors") -> list[tuple[int, int, str]]:
    """(attr_id, class_id, text) of the given classes' attributes of a style."""
    return [(int(a), int(c), t) for a, c, t in cat.con.execute(
        "SELECT attr_id, class_id, text FROM attributes WHERE style = ? AND list_contains(?, class_id) ORDER BY attr_id",
        [style, [int(c) for c in class_ids]]).fetchall()]


def insert_pair_scores(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, pair_score, state_score, object_score, state_prob, object_prob."""
    return insert_columns(cat, "pair_scores", columns)


def insert_pair_regions(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, region_id, state_weight, object_weight."""
    return insert_columns(cat, "pair_regions", columns)


def insert_pair_feasibility(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, class_id, score, state_sim, object_sim, removed."""
    return insert_columns(cat, "pair_feasibility", columns)


def pair_score(cat: Catalog, run_id: int, image_id: int, class_id: int) -> dict | None:
    rows = _rows(cat,
        "SELECT pair_score, state_score, object_score, state_prob, object_prob FROM pair_scores "
        "WHERE run_id = ? AND image_id = ? AND class_id = ?", [run_id, image_id, class_id])
    return rows[0] if rows else None


def pair_region_weights(cat: Catalog, run_id: int, image_id: int) -> tuple[int | None, np.ndarray, np.ndarray, np.ndarray]:
    """(explained class_id, region_ids, state weights, object weights) of one image in a run."""
    rows = cat.con.execute(
        "SELECT class_id, region_id, state_weight, object_weight FROM pair_regions WHERE run_id = ? AND image_id = ? "
        "ORDER BY region_id", [run_id, image_id]).fetchall()
    if not rows:
        return None, np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return (int(rows[0][0]), np.array([r[1] for r in rows], np.int64), np.array([r[2] for r in rows], np.float64),
            np.array([r[3] for r in rows], np.float64))


def pair_feasibility_rows(cat: Catalog, run_id: int) -> list[dict]:
    return _rows(cat,
        "SELECT f.class_id, c.name, f.score, f.state_sim, f.object_sim, f.removed FROM pair_feasibility f "
        "JOIN classes c USING (class_id) WHERE f.run_id = ? ORDER BY f.score, f.class_id", [run_id])


def score_matrix(cat: Catalog, run_id: int) -> tuple[np.ndarray, list, np.ndarray, np.ndarray]:
    """Every stored score of a run as a matrix: (image_ids (N,), labels, class_ids (C,), scores (N, C));
    a class not stored for an image is NaN."""
    rows = cat.con.execute(
        "SELECT p.image_id, i.label, p.class_id, p.score FROM predictions p JOIN images i USING (image_id) "
        "WHERE p.run_id = ? ORDER BY p.image_id, p.class_id", [run_id]).fetchall()
    if not rows:
        return np.zeros(0, np.int64), [], np.zeros(0, np.int64), np.zeros((0, 0))
    img = np.array([r[0] for r in rows], np.int64)
    cls = np.array([r[2] for r in rows], np.int64)
    image_ids, ri = np.unique(img, return_inverse=True)
    class_ids, ci = np.unique(cls, return_inverse=True)
    scores = np.full((len(image_ids), len(class_ids)), np.nan)
    scores[ri, ci] = [r[3] for r in rows]
    labels: list = [None] * len(image_ids)
    for k, r in zip(ri, rows):
        labels[k] = r[1]
    return image_ids, labels, class_ids, scores


# ---- mutual knowledge -------------------------------------------------------------------
def replace_mutual_knowledge(cat: Catalog, mk_rows: list[dict], concept_rows: list[dict]) -> None:
    """Store explanations of (run_id, image_id) predictions, replacing earlier ones of the same images.

    mk_rows: the ``mutual_knowledge`` columns; concept_rows: the ``concepts`` columns."""
    if not mk_rows:
        return
    keys = pa.table({"run_id": pa.array([r["run_id"] for r in mk_rows], pa.int64()),
                     "image_id": pa.array([r["image_id"] for r in mk_rows], pa.int64())})  # noqa: F841
    with cat.transaction():
        for table in ("mutual_knowledge", "concepts"):
            cat.con.execute(f"DELETE FROM {table} t WHERE EXISTS "
                            "(SELECT 1 FROM keys k WHERE k.run_id = t.run_id AND k.image_id = t.image_id)")
        insert_arrow(cat, "mutual_knowledge", pa.Table.from_pylist(mk_rows, schema=pa.schema([
            ("run_id", pa.int64()), ("image_id", pa.int64()), ("class_id", pa.int64()), ("n_vision", pa.int32()),
            ("n_language", pa.int32()), ("n_shared", pa.int32()), ("mi", pa.float64()), ("deletion_auc", pa.float64()),
            ("deletion_curve", pa.list_(pa.float64())), ("n_parts", pa.int32()), ("part_topk", pa.int32()),
            ("language_topk", pa.int32()), ("clustering", pa.string()), ("foreground", pa.bool_()),
            ("part_embedding", pa.string()), ("class_text", pa.string()), ("model", pa.string()),
            ("created_at", pa.timestamp("us"))])))
        if concept_rows:
            insert_arrow(cat, "concepts", pa.Table.from_pylist(concept_rows, schema=pa.schema([
                ("run_id", pa.int64()), ("image_id", pa.int64()), ("class_id", pa.int64()), ("side", pa.string()),
                ("concept", pa.string()), ("rank", pa.int32()), ("score", pa.float64()), ("shared", pa.bool_()),
                ("part", pa.int32()), ("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()),
                ("y1", pa.float64())])))


def mutual_knowledge_row(cat: Catalog, run_id: int, image_id: int) -> dict | None:
    rows = _rows(cat,
        "SELECT m.*, c.name AS class_name FROM mutual_knowledge m JOIN classes c USING (class_id) "
        "WHERE m.run_id = ? AND m.image_id = ?", [run_id, image_id])
    return rows[0] if rows else None


def concept_rows(cat: Catalog, run_id: int, image_id: int) -> list[dict]:
    """An explanation's concepts: side, concept, rank, score, shared, part, x0, y0, x1, y1 (vision first)."""
    return _rows(cat,
        "SELECT side, concept, rank, score, shared, part, x0, y0, x1, y1 FROM concepts WHERE run_id = ? AND image_id = ? "
        "ORDER BY side DESC, rank", [run_id, image_id])


def mutual_knowledge_images(cat: Catalog, run_id: int) -> list[dict]:
    """Every explained prediction of a run: image_id, label, class_id, predicted_norm, mi, deletion_auc,
    n_shared, deletion_curve."""
    return _rows(cat,
        "SELECT m.image_id, i.label, m.class_id, c.norm_name AS predicted_norm, m.mi, m.deletion_auc, m.n_shared, "
        "m.deletion_curve FROM mutual_knowledge m JOIN images i USING (image_id) JOIN classes c USING (class_id) "
        "WHERE m.run_id = ? ORDER BY m.image_id", [run_id])


def latest_run_with_mutual_knowledge(cat: Catalog) -> RunRecord | None:
    return _run(cat.con.execute(
        f"SELECT {_RUN_COLS} FROM runs r WHERE EXISTS (SELECT 1 FROM mutual_knowledge m WHERE m.run_id = r.run_id) "
        "ORDER BY r.run_id DESC LIMIT 1").fetchone())


def distinct_attribute_texts(cat: Catalog, style: str) -> list[str]:
    """The distinct non-empty texts of the attributes of a style (no class names), in id order,
    then the state and object descriptors of a store with pairs."""
    rows = cat.con.execute(
        "SELECT text FROM (SELECT text, min(attr_id) AS first FROM attributes WHERE style = ? AND trim(text) <> '' "
        "GROUP BY text) ORDER BY first", [style]).fetchall()
    extra = cat.con.execute(
        "SELECT text FROM (SELECT text, min(text_id) AS first FROM czsl_texts WHERE style = 'descriptors' "
        "AND trim(text) <> '' GROUP BY text) ORDER BY first").fetchall() if style == "descriptors" else []
    return list(dict.fromkeys(r[0] for r in rows + extra))
