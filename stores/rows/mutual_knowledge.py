"""Mutual knowledge and concepts."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from .common import fetch_dicts, insert_arrow
from .runs import RUN_COLUMNS, RunRecord, run_record

if TYPE_CHECKING:
    from ..catalog import Catalog


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
    rows = fetch_dicts(cat,
        "SELECT m.*, c.name AS class_name FROM mutual_knowledge m JOIN classes c USING (class_id) "
        "WHERE m.run_id = ? AND m.image_id = ?", [run_id, image_id])
    return rows[0] if rows else None


def concept_rows(cat: Catalog, run_id: int, image_id: int) -> list[dict]:
    """An explanation's concepts: side, concept, rank, score, shared, part, x0, y0, x1, y1 (vision first)."""
    return fetch_dicts(cat,
        "SELECT side, concept, rank, score, shared, part, x0, y0, x1, y1 FROM concepts WHERE run_id = ? AND image_id = ? "
        "ORDER BY side DESC, rank", [run_id, image_id])


def mutual_knowledge_images(cat: Catalog, run_id: int) -> list[dict]:
    """Every explained prediction of a run: image_id, label, class_id, predicted_norm, mi, deletion_auc,
    n_shared, deletion_curve."""
    return fetch_dicts(cat,
        "SELECT m.image_id, i.label, m.class_id, c.norm_name AS predicted_norm, m.mi, m.deletion_auc, m.n_shared, "
        "m.deletion_curve FROM mutual_knowledge m JOIN images i USING (image_id) JOIN classes c USING (class_id) "
        "WHERE m.run_id = ? ORDER BY m.image_id", [run_id])


def latest_run_with_mutual_knowledge(cat: Catalog) -> RunRecord | None:
    return run_record(cat.con.execute(
        f"SELECT {RUN_COLUMNS} FROM runs r WHERE EXISTS (SELECT 1 FROM mutual_knowledge m WHERE m.run_id = r.run_id) "
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
