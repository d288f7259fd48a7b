"""Shard records (m009: what each Parquet shard held, written by stores.shards) and per-image result counts."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from ..values import now_utc
from .common import fetch_dicts, insert_arrow

if TYPE_CHECKING:
    from ..catalog import Catalog


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
    rows = fetch_dicts(cat, sql + (" WHERE list_contains(?, state)" if states else "") + " ORDER BY table_name, name",
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
