"""Shard pairs and their records: what is written, and what a crash at each step leaves."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from stores import files, indexes, tables
from stores.catalog import Catalog
from stores.shards import IndexedImage, ShardWriter, content_id, recover
from stores.verify import quick_check, verify
from tests.helpers.damage import normalised


def _images(n: int, seed: int = 0, regions: int = 3, dim: int = 8) -> list[IndexedImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sha = hashlib.sha256(f"{seed}/{i}".encode()).hexdigest()
        boxes = np.array([[0, 0, 10, 10]] + [[1, 1, 5, 5]] * (regions - 1), np.float32)
        out.append(IndexedImage(sha, f"/imgs/{seed}/{i}.png", f"l{i % 2}", 10, 10, ["full"] + ["crop"] * (regions - 1), boxes,
                                normalised(rng, regions, dim)))
    return out


def _write(cat: Catalog, images: list[IndexedImage], run: int = 1, shard_size: int = 4) -> ShardWriter:
    cat.claim_model("m/x", "m", "x", 8, 10)
    tables.insert_index_run(cat, run, {}, "m/x")
    w = ShardWriter(cat, run, "m/x", "float16", shard_size)
    for im in images:
        w.add(im)
    w.flush()
    cat.refresh_views()
    indexes.rebuild_image_index(cat, "m/x")  # what index-images does after its shards
    return w


def test_records_describe_the_files_written(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        _write(cat, _images(10))
        recs = tables.shard_records(cat)
        assert sorted(recs) == [(t, f"part-000001-{k:05d}.parquet") for t in ("images", "regions") for k in range(3)]
        for (table, name), r in recs.items():
            path = cat.shard_dir(table) / name
            assert r["bytes"] == path.stat().st_size
            assert r["sha256"] == files.file_sha256(path)
            assert r["rows"] == pq.read_metadata(path).num_rows
            assert r["index_run_id"] == 1 and r["state"] == "live"
        assert sum(r["rows"] for (t, _), r in recs.items() if t == "images") == 10
        assert sum(r["rows"] for (t, _), r in recs.items() if t == "regions") == 30
        assert verify(cat) == []


def test_crash_before_commit_leaves_nothing(tmp_path, monkeypatch):
    with Catalog(tmp_path / "s") as cat:
        _write(cat, _images(4))
        before = sorted(p.name for p in cat.shard_files("images"))

        def boom(*a, **k):
            raise KeyboardInterrupt  # the process dies inside the commit transaction

        monkeypatch.setattr(tables, "insert_shard_records", boom)
        with pytest.raises(KeyboardInterrupt):
            _write(cat, _images(4, seed=1), run=2)
        monkeypatch.undo()
        assert sorted(p.name for p in cat.shard_files("images")) == before
        assert not list(cat.root.rglob("*.tmp"))  # an exception discards the staged files
        assert tables.image_count(cat) == 4


def test_crash_after_commit_is_finished_by_the_next_writer(tmp_path, monkeypatch):
    """Killed between the records' commit and the renames: the staged files are published."""
    store = tmp_path / "s"
    with Catalog(store) as cat:
        _write(cat, _images(4))
        monkeypatch.setattr(files.Staged, "publish", lambda self: None)  # died before any rename
        _write(cat, _images(3, seed=1), run=2)
        monkeypatch.undo()
        assert len(list(store.rglob("*.parquet.tmp"))) == 2
    with Catalog(store, read_only=True) as cat:
        found = {p.check for p in quick_check(cat)}
        assert found == {"shard-pending"}  # readers see it as pending, not as damage
    with Catalog(store) as cat:
        assert sorted(cat.recovery.published) == ["images/part-000002-00000.parquet", "regions/part-000002-00000.parquet"]
        assert tables.image_count(cat) == 7
        assert verify(cat) == []


def test_uncommitted_staged_files_are_removed(tmp_path):
    store = tmp_path / "s"
    with Catalog(store) as cat:
        _write(cat, _images(4))
    for t in ("images", "regions"):
        (store / t / "part-000009-00000.parquet.tmp").write_bytes(b"half a shard")
    with Catalog(store) as cat:
        assert sorted(cat.recovery.removed_tmp) == ["images/part-000009-00000.parquet.tmp",
                                                    "regions/part-000009-00000.parquet.tmp"]
        assert not list(store.rglob("*.tmp"))
        assert verify(cat) == []


def test_staged_file_not_matching_its_record_is_not_published(tmp_path, monkeypatch):
    store = tmp_path / "s"
    with Catalog(store) as cat:
        monkeypatch.setattr(files.Staged, "publish", lambda self: None)
        _write(cat, _images(2))
        monkeypatch.undo()
    tmp = store / "regions" / "part-000001-00000.parquet.tmp"
    tmp.write_bytes(tmp.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    with Catalog(store) as cat:
        assert cat.recovery.published == ["images/part-000001-00000.parquet"]
        problems = {(p.check, p.where) for p in verify(cat)}
    assert ("shard-missing", "regions/part-000001-00000.parquet") in problems


def test_writer_never_reuses_a_name(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        _write(cat, _images(4), shard_size=2)
        tables.set_shard_state(cat, "images", "part-000001-00001.parquet", "retired")
        w = ShardWriter(cat, 1, "m/x", "float16", 2)
        assert w.seq == 2


def test_recover_removes_retired_files_only(tmp_path):
    store = tmp_path / "s"
    with Catalog(store) as cat:
        _write(cat, _images(8), shard_size=4)
        for t in ("images", "regions"):
            tables.set_shard_state(cat, t, "part-000001-00000.parquet", "retired")
        rec = recover(cat)
        assert sorted(rec.removed_retired) == ["images/part-000001-00000.parquet", "regions/part-000001-00000.parquet"]
        assert [p.name for p in cat.shard_files("images")] == ["part-000001-00001.parquet"]
        cat.refresh_views()
        ids = {r[0] for r in cat.query("SELECT image_id FROM images").fetchall()}
    assert ids == {content_id(im.sha256) for im in _images(8)[4:]}
