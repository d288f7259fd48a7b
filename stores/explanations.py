"""Reads the explanation commands need that ``stores.tables`` does not have (issue 19: no SQL
text outside ``stores/``)."""
from __future__ import annotations

from .catalog import Catalog


def latest_concept_run_id(cat: Catalog, image_id: int) -> int | None:
    """The latest run that stored mutual-knowledge concepts for the image, or None."""
    row = cat.con.execute("SELECT max(run_id) FROM mutual_knowledge WHERE image_id = ?", [image_id]).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def prediction_ranks(cat: Catalog, run_id: int, image_id: int) -> dict[int, int]:
    """{class_id: rank} of the run's candidates for the image."""
    return dict(cat.con.execute("SELECT class_id, rank FROM predictions WHERE run_id = ? AND image_id = ?",
                                [run_id, image_id]).fetchall())


def has_contrast_terms(cat: Catalog) -> bool:
    """The store has the ``contrast_terms`` table (migration m013); older read-only stores do not."""
    return cat.con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'contrast_terms'").fetchone()[0] > 0


def never_top_attributes(cat: Catalog, run_id: int, limit: int = 30) -> tuple[int, list[tuple[str, str]]]:
    """(how many, first ``limit`` (class, attribute)) of the run's descriptors that carried mass but
    never were the strongest attribute of a prediction (``attribute_usage.never_top``)."""
    where = "FROM attribute_usage WHERE run_id = ? AND never_top AND NOT never_used"
    n = cat.con.execute(f"SELECT count(*) {where}", [run_id]).fetchone()[0]
    rows = cat.con.execute(f"SELECT class_name, attribute {where} ORDER BY class_name, attribute LIMIT ?",
                           [run_id, limit]).fetchall()
    return int(n), rows
