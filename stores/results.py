"""Typed writers of a run's results: predictions, alignments, object bindings, WCA's draws.

Scoring (``pipeline/stages/classify.py``, a Ray actor, the compositional stage) fills a
:class:`ResultRows` through its typed methods, from arrays: it never names a table or a
column. :func:`write_results` inserts what was collected (the caller holds the transaction).
``ResultRows`` travels between processes as Arrow IPC (:meth:`ResultRows.to_bytes`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from stores import tables
from stores.catalog import Catalog

__all__ = ["ResultRows", "text_ids", "write_results"]


def text_ids(ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The stored id of each plan column from row indices into the scored texts (-1 where the
    column is padding or not a stored attribute, e.g. AWT's class prompt: index < 0)."""
    index = np.asarray(index)
    return np.where(index >= 0, np.asarray(ids)[np.clip(index, 0, None)], -1)


@dataclass
class ResultRows:
    """Rows of one or more scored batches, as columns per table, ready for :func:`write_results`."""

    parts: dict[str, list[dict]] = field(default_factory=dict)
    images: int = 0

    def _add(self, table: str, columns: dict) -> None:
        self.parts.setdefault(table, []).append(columns)

    # ---- the typed writers -------------------------------------------------------------
    def predictions(self, run_id: int, image_ids, class_ids, scores, global_scores=None, local_scores=None) -> None:
        """Ranked classes: ``class_ids`` and ``scores`` (B, K), optional score parts (B, K);
        each image's rows are ranked by score (stable for ties)."""
        class_ids, scores = np.asarray(class_ids), np.asarray(scores)
        b, k = class_ids.shape
        order = np.argsort(-scores, axis=1, kind="stable")

        def ranked(values):
            if values is None:
                return pa.nulls(b * k, pa.float64())
            return np.take_along_axis(np.asarray(values), order, 1).reshape(-1).astype(np.float64)

        self._add("predictions", {
            "run_id": np.full(b * k, run_id, np.int64),
            "image_id": np.repeat(np.asarray(image_ids), k).astype(np.int64),
            "class_id": np.take_along_axis(class_ids, order, 1).reshape(-1).astype(np.int64),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b),
            "score": ranked(scores),
            "global_score": ranked(global_scores),
            "local_score": ranked(local_scores),
        })

    def alignments(self, run_id: int, image_ids, class_ids, region_ids, plan, similarity, attr_ids, scores,
                   top: int = 0) -> None:
        """The non-zero transport plan entries on stored attributes, with what they were paid for.

        plan, similarity (B, K, M, N); region_ids (B, M) of the plan's rows; attr_ids (B, K, N)
        of its columns (-1: not stored); class_ids, scores (B, K); ``top`` > 0 keeps the plans
        of the ``top`` best-ranked classes only."""
        plan, image_ids, class_ids = np.asarray(plan), np.asarray(image_ids), np.asarray(class_ids)
        attr_ids = np.broadcast_to(np.asarray(attr_ids), plan.shape[:2] + plan.shape[3:])
        if top > 0:
            rank = np.argsort(np.argsort(-np.asarray(scores), axis=1, kind="stable"), axis=1)
            plan = plan * (rank < top)[:, :, None, None]
        b, k, m, n = np.nonzero((plan > 0) & (attr_ids >= 0)[:, :, None, :])
        if len(b) == 0:
            return
        self._add("alignments", {
            "run_id": np.full(len(b), run_id, np.int64),
            "image_id": image_ids[b].astype(np.int64),
            "class_id": class_ids[b, k].astype(np.int64),
            "region_id": np.asarray(region_ids)[b, m].astype(np.int64),
            "attr_id": attr_ids[b, k, n].astype(np.int64),
            "mass": plan[b, k, m, n].astype(np.float64),
            "similarity": np.asarray(similarity)[b, k, m, n].astype(np.float64),
        })

    def object_bindings(self, run_id: int, image_ids, class_ids, region_ids, n_parts, scores) -> None:
        """The object that carried each (image, class): class_ids, region_ids, n_parts, scores (B, K)."""
        class_ids = np.asarray(class_ids)
        b, _ = np.indices(class_ids.shape)
        self._add("object_bindings", {
            "run_id": np.full(class_ids.size, run_id, np.int64),
            "image_id": np.asarray(image_ids)[b].reshape(-1).astype(np.int64),
            "class_id": class_ids.reshape(-1).astype(np.int64),
            "region_id": np.asarray(region_ids).reshape(-1).astype(np.int64),
            "n_parts": np.asarray(n_parts).reshape(-1).astype(np.int32),
            "score": np.asarray(scores).reshape(-1).astype(np.float64),
        })

    def sample_predictions(self, run_id: int, image_ids, top1_class_ids) -> None:
        """Each random draw's best class (WCA): top1_class_ids (B, draws)."""
        top1 = np.asarray(top1_class_ids)
        b, r = top1.shape
        self._add("sample_predictions", {
            "run_id": np.full(b * r, run_id, np.int64), "image_id": np.repeat(np.asarray(image_ids), r).astype(np.int64),
            "sample": np.tile(np.arange(r, dtype=np.int32), b), "class_id": top1.reshape(-1).astype(np.int64),
        })

    # ---- collecting and shipping -------------------------------------------------------
    def extend(self, other: "ResultRows") -> None:
        for table, cols in other.parts.items():
            self.parts.setdefault(table, []).extend(cols)
        self.images += other.images

    def tables(self) -> dict[str, pa.Table]:
        return {t: pa.concat_tables([pa.table(c) for c in cols]) for t, cols in self.parts.items() if cols}

    def to_bytes(self) -> bytes:
        """Arrow IPC (one stream per table, named in the schema metadata): how a Ray actor ships rows."""
        buf = io.BytesIO()
        for name, t in self.tables().items():
            t = t.replace_schema_metadata({b"table": name.encode(), b"images": str(self.images).encode()})
            with pa.ipc.new_stream(buf, t.schema) as w:
                w.write_table(t)
        return buf.getvalue() or b"images=" + str(self.images).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ResultRows":
        out = cls()
        if data.startswith(b"images="):
            out.images = int(data[7:])
            return out
        reader = pa.BufferReader(data)
        while reader.tell() < reader.size():
            t = pa.ipc.open_stream(reader).read_all()
            meta = t.schema.metadata
            out.parts.setdefault(meta[b"table"].decode(), []).append({c: t[c] for c in t.column_names})
            out.images = int(meta[b"images"])
        return out


_INSERT = {"predictions": tables.insert_predictions, "alignments": tables.insert_alignments,
           "sample_predictions": tables.insert_sample_predictions, "object_bindings": tables.insert_object_bindings}


def write_results(cat: Catalog, rows: ResultRows) -> None:
    """Insert the collected rows (the caller holds the transaction)."""
    for table, t in rows.tables().items():
        _INSERT[table](cat, {c: t[c] for c in t.column_names})
