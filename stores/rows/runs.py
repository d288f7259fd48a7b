"""Classification runs and their results: predictions, alignments, object bindings, contrastive reasons, rankings."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from ..values import dumps, now_utc
from .common import fetch_dicts, insert_columns

if TYPE_CHECKING:
    from ..catalog import Catalog


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


def run_record(row) -> RunRecord | None:
    if row is None:
        return None
    try:
        params = json.loads(row[2])
    except ValueError:
        params = {}
    return RunRecord(int(row[0]), row[1], params, row[3], row[4])


RUN_COLUMNS = "r.run_id, r.method, r.params, r.model, r.created_at"


def get_run(cat: Catalog, run_id: int) -> RunRecord | None:
    return run_record(cat.con.execute(f"SELECT {RUN_COLUMNS} FROM runs r WHERE run_id = ?", [run_id]).fetchone())


def latest_run(cat: Catalog, *, with_alignments: bool = False) -> RunRecord | None:
    where = " WHERE EXISTS (SELECT 1 FROM alignments a WHERE a.run_id = r.run_id)" if with_alignments else ""
    return run_record(cat.con.execute(f"SELECT {RUN_COLUMNS} FROM runs r{where} ORDER BY r.run_id DESC LIMIT 1").fetchone())


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


def object_binding(cat: Catalog, run_id: int, image_id: int, class_id: int) -> dict | None:
    """The object that carried a class (object-bound runs): region_id, kind, n_parts, score and
    its box (x0, y0, x1, y1); None for other runs."""
    rows = fetch_dicts(cat,
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
    return fetch_dicts(cat,
        "SELECT p.class_id, c.name, p.rank, p.score, p.global_score, p.local_score FROM predictions p "
        "JOIN classes c USING (class_id) WHERE p.run_id = ? AND p.image_id = ? ORDER BY p.rank",
        [run_id, image_id])


def top1_images(cat: Catalog, run_id: int) -> list[dict]:
    """Every image of a run with its top-1 class: image_id, path, width, height, label,
    class_id, predicted_norm."""
    return fetch_dicts(cat,
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
