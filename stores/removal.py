"""Removing indexed images from a store (``pipeline remove-images``).

Shards are immutable, so removing images rewrites every shard pair that holds one: the pair's
remaining rows go to a new pair (new names), written as every pair is (:mod:`stores.shards`):
staged, then committed in one transaction that also inserts the new pair's records, marks the
old pair's records ``retired`` and deletes the removed images' result rows (predictions,
alignments, WCA draws, faithfulness rows); only then are the new files renamed into place and
the old pair's files removed. A crash before the commit changes nothing; after it, the next
writer finishes the renames and removals (:func:`stores.shards.recover`). ``faiss/images.index``
is rebuilt at the end (and by any re-run).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import indexes, tables
from .catalog import Catalog
from .errors import StoreError
from .parquet import parquet_problem, unreadable
from .shards import ShardPair, describe_file, next_seq, run_id_of, shard_name, write_pairs


@dataclass
class RemovalPlan:
    """The images a removal takes out, and which shard pairs hold them."""

    images: list[dict] = field(default_factory=list)  # image_id, path, label, index_run_id, shard
    shards: dict[str, int] = field(default_factory=dict)  # pair name -> images removed from it
    shard_images: dict[str, int] = field(default_factory=dict)  # pair name -> images it holds
    unmatched: list[str] = field(default_factory=list)  # criteria that matched no image
    results: dict[str, int] = field(default_factory=dict)  # result rows per table that go with them

    @property
    def image_ids(self) -> np.ndarray:
        return np.unique(np.array([r["image_id"] for r in self.images], np.int64))

    def __len__(self) -> int:
        return len(self.images)


def _path_matcher(paths: Sequence[str]):
    exact, prefixes = set(), []
    for raw in paths:
        exact.add(raw)
        p = Path(raw).expanduser()
        resolved = str(p.resolve())
        exact.add(resolved)
        if p.is_dir() or raw.endswith(("/", os.sep)):
            prefixes.append(resolved.rstrip(os.sep) + os.sep)
    return exact, prefixes


def plan_removal(cat: Catalog, *, paths: Sequence[str] = (), image_ids: Sequence[int] = (), labels: Sequence[str] = (),
                 index_runs: Sequence[int] = ()) -> RemovalPlan:
    """Every indexed image matching any criterion: a path (a folder: everything under it), an
    image_id, a label, or an index run."""
    if not (paths or image_ids or labels or index_runs):
        raise StoreError("remove-images needs at least one of --path, --image-id, --label, --index-run.")
    exact, prefixes = _path_matcher(paths)
    ids = {int(i) for i in image_ids}
    labs = set(labels)
    runs = {int(r) for r in index_runs}
    plan = RemovalPlan()
    hit = {"path": set(), "id": set(), "label": set(), "run": set()}
    for f in cat.shard_files("images"):
        try:
            t = pq.read_table(f, columns=["image_id", "path", "label", "index_run_id"])
        except Exception:  # noqa: BLE001
            raise unreadable(f, parquet_problem(f) or "cannot be read") from None
        plan.shard_images[f.name] = t.num_rows
        for row in t.to_pylist():
            why = []
            if row["path"] in exact or any(row["path"].startswith(pre) for pre in prefixes):
                why.append("path")
                hit["path"].add(row["path"])
                hit["path"] |= {pre for pre in prefixes if row["path"].startswith(pre)}
            if row["image_id"] in ids:
                why.append("id")
                hit["id"].add(row["image_id"])
            if row["label"] in labs:
                why.append("label")
                hit["label"].add(row["label"])
            if row["index_run_id"] in runs:
                why.append("run")
                hit["run"].add(row["index_run_id"])
            if why:
                plan.images.append({**row, "shard": f.name})
                plan.shards[f.name] = plan.shards.get(f.name, 0) + 1
    for raw in paths:
        p = Path(raw).expanduser()
        forms = {raw, str(p.resolve()), str(p.resolve()).rstrip(os.sep) + os.sep}
        if not forms & hit["path"]:
            plan.unmatched.append(f"--path {raw}")
    plan.unmatched += [f"--image-id {i}" for i in sorted(ids - hit["id"])]
    plan.unmatched += [f"--label {lab}" for lab in sorted(labs - hit["label"])]
    plan.unmatched += [f"--index-run {r}" for r in sorted(runs - hit["run"])]
    plan.results = tables.image_result_counts(cat, plan.image_ids) if plan.images else {}
    return plan


@dataclass
class RemovalReport:
    images: int = 0
    regions: int = 0
    pairs_rewritten: list[tuple[str, str | None]] = field(default_factory=list)  # (old name, new name or None)
    results: dict[str, int] = field(default_factory=dict)


def remove_images(cat: Catalog, plan: RemovalPlan) -> RemovalReport:
    """Take the planned images out of the store (see the module docstring for the protocol),
    then rebuild faiss/images.index. Idempotent: a re-run after a crash plans nothing new and
    still rebuilds the index."""
    report = RemovalReport()
    removed = plan.image_ids
    new_pairs: list[ShardPair] = []
    retire: list[str] = []
    seqs: dict[int, int] = {}
    for name in sorted(plan.shards):
        img_path, reg_path = cat.shard_dir("images") / name, cat.shard_dir("regions") / name
        if not reg_path.exists():
            raise StoreError(f"regions/{name} is missing; run `pipeline verify` before removing images.")
        img, reg = pq.read_table(img_path), pq.read_table(reg_path)
        keep_i = ~np.isin(img["image_id"].to_numpy(), removed)
        keep_r = ~np.isin(reg["image_id"].to_numpy(), removed)
        report.images += int((~keep_i).sum())
        report.regions += int((~keep_r).sum())
        retire.append(name)
        if keep_i.any():
            run = run_id_of(name)
            if run is None:
                run = int(img["index_run_id"][0].as_py() or 0)
            if run not in seqs:
                seqs[run] = next_seq(cat, run)
            new = shard_name(run, seqs[run])
            seqs[run] += 1
            new_pairs.append(ShardPair(new, run, reg.filter(pa.array(keep_r)), img.filter(pa.array(keep_i))))
            report.pairs_rewritten.append((name, new))
        else:
            report.pairs_rewritten.append((name, None))

    def commit() -> None:
        records = tables.shard_records(cat, None)
        for name in retire:
            for table in ("regions", "images"):
                if (table, name) in records:
                    tables.set_shard_state(cat, table, name, "retired", "rewritten by remove-images")
                else:  # a shard of a store written before records: record it as retired
                    tables.insert_shard_records(cat, [dict(name=name, table_name=table, index_run_id=run_id_of(name),
                                                           state="retired", note="rewritten by remove-images",
                                                           **describe_file(cat.shard_dir(table) / name))])
        report.results = tables.image_result_counts(cat, removed, delete=True)

    if retire:
        write_pairs(cat, new_pairs, in_transaction=commit)
        for name in retire:  # committed: the old pair goes (a crash here is finished by recover())
            for table in ("regions", "images"):
                (cat.shard_dir(table) / name).unlink(missing_ok=True)
    cat.refresh_views()
    if cat.model is not None:
        indexes.rebuild_image_index(cat, cat.model)
    return report
