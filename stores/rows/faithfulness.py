"""Faithfulness runs: curves, scores, pointing game and summaries."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..values import dumps, now_utc
from .common import insert_arrow, insert_columns

if TYPE_CHECKING:
    from ..catalog import Catalog


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
