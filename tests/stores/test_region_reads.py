"""Readers of a few images open only the shards, and the row groups, that hold them.

Regions shards are written in row groups of whole images (``stores.shards.write_regions_table``)
and the images shards say which pair holds an image at which row (``tables.region_shard_plan``).
Every pruned read is compared with a read of every shard."""
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stores import tables
from stores.catalog import Catalog
from stores.shards import IMAGES_PER_ROW_GROUP, IndexedImage, ShardWriter, write_regions_table

DIM = 8


def _image(i: int, n_regions: int) -> IndexedImage:
    rng = np.random.default_rng(i)
    emb = rng.standard_normal((n_regions, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    boxes = rng.uniform(0, 50, (n_regions, 4)).astype(np.float32)
    sha = hashlib.sha256(str(i).encode()).hexdigest()
    return IndexedImage(sha, f"/img/{i}.png", "c", 64, 48, ["full"] + ["crop"] * (n_regions - 1), boxes, emb)


@pytest.fixture
def store(tmp_path):
    """70 images in shards of 40 (row groups of 16 images): 2 pairs, 3 + 2 row groups; two
    region counts (4 and 6), so batches group by count."""
    with Catalog(tmp_path / "s") as cat:
        cat.claim_model("m/x", "m", "x", DIM)
        w = ShardWriter(cat, 1, "m/x", "float32", shard_size=40)
        for i in range(70):
            w.add(_image(i, 4 if i % 3 else 6))
        w.flush()
        cat.refresh_views()
    return tmp_path / "s"


def _flatten(batches):
    out = {}
    for b in batches:
        for j, iid in enumerate(b.image_ids):
            out[int(iid)] = (b.region_ids[j].tolist(), b.embeddings[j].tobytes())
    return out


def test_row_groups_hold_whole_images_in_the_images_shard_order(store):
    with Catalog(store, read_only=True) as cat:
        for reg in cat.shard_files("regions"):
            pf = pq.ParquetFile(reg)
            assert pf.metadata.metadata[tables.IMAGES_PER_ROW_GROUP_KEY] == str(IMAGES_PER_ROW_GROUP).encode()
            img_ids = pq.read_table(cat.shard_dir("images") / reg.name)["image_id"].to_numpy()
            for g in range(pf.num_row_groups):
                ids = pf.read_row_group(g, columns=["image_id"])["image_id"].to_numpy()
                want = img_ids[g * IMAGES_PER_ROW_GROUP:(g + 1) * IMAGES_PER_ROW_GROUP]
                assert np.array_equal(np.unique(ids), np.sort(want))  # exactly those images, whole
            assert pf.num_row_groups == -(-len(img_ids) // IMAGES_PER_ROW_GROUP)


def test_pruned_reads_equal_full_reads_and_touch_only_what_holds_the_images(store, monkeypatch):
    with Catalog(store, read_only=True) as cat:
        everything = _flatten(tables.iter_region_batches(cat))
        assert len(everything) == 70
        where = {}  # image_id -> (shard name, row in its images shard), read straight from the files
        for f in cat.shard_files("images"):
            for row, iid in enumerate(pq.read_table(f)["image_id"].to_pylist()):
                where[iid] = (f.name, row)
        ids = sorted(everything)
        rng = np.random.default_rng(5)
        for want in ([ids[3]], [ids[3], ids[50]], [int(i) for i in rng.choice(ids, 12, replace=False)]):
            groups_read = []
            real = pq.ParquetFile.read_row_groups

            def spy(self, groups, columns=None, **kw):
                groups_read.append((self.metadata.num_rows, tuple(groups)))
                return real(self, groups, columns=columns, **kw)

            monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
            got = _flatten(tables.iter_region_batches(cat, want))
            monkeypatch.undo()
            assert got == {i: everything[i] for i in want}
            plan = {p.name: sorted(pos.tolist()) for p, pos in tables.region_shard_plan(cat, want)}
            expect = {}
            for i in want:
                expect.setdefault(where[i][0], []).append(where[i][1])
            assert plan == {k: sorted(v) for k, v in expect.items()}
            need = sum(len({r // IMAGES_PER_ROW_GROUP for r in rows}) for rows in expect.values())
            assert sum(len(g) for _, g in groups_read) == need  # of the store's 5 row groups
            if len(want) == 1:
                assert need == 1


def test_image_regions_reads_one_row_group_and_equals_the_view(store):
    with Catalog(store, read_only=True) as cat:
        for iid, n in cat.query("select image_id, count(*) from regions group by 1 order by 1 limit 5").fetchall():
            ids, kinds, boxes = tables.image_regions(cat, iid)
            ref = cat.query("select region_id, kind, x0, y0, x1, y1 from regions where image_id = ? and kind <> 'full' "
                            "order by region_id", [iid]).fetchall()
            assert ids.tolist() == [r[0] for r in ref] and kinds == [r[1] for r in ref] and len(ids) == n - 1
            assert np.array_equal(boxes, np.array([r[2:] for r in ref], np.float64).reshape(-1, 4))
        assert tables.image_regions(cat, 12345)[0].size == 0  # not in the store


def test_shards_without_row_group_metadata_are_read_whole(tmp_path):
    """A store written before row groups (one row group, no key) still answers the same."""
    with Catalog(tmp_path / "s") as cat:
        cat.claim_model("m/x", "m", "x", DIM)
        w = ShardWriter(cat, 1, "m/x", "float32", shard_size=40)
        for i in range(40):
            w.add(_image(i, 4))
        w.flush()
        reg = cat.shard_files("regions")[0]
        t = pq.read_table(reg)
        old = t.replace_schema_metadata({k: v for k, v in (t.schema.metadata or {}).items()
                                         if k != tables.IMAGES_PER_ROW_GROUP_KEY})
        pq.write_table(old, reg, compression="zstd")  # as the writer of m009 did (records not updated: reader only)
        cat.refresh_views()
        assert pq.ParquetFile(reg).num_row_groups == 1
        want = [int(r[0]) for r in cat.query("select image_id from images order by image_id limit 3").fetchall()]
        got = _flatten(tables.iter_region_batches(cat, want))
        assert sorted(got) == sorted(want) and all(len(v[0]) == 4 for v in got.values())


def test_unaligned_regions_tables_get_no_row_group_key(tmp_path):
    regions = pa.table({"image_id": pa.array([1, 1, 2, 2], pa.int64()), "region_id": pa.array([1, 2, 3, 4], pa.int64())})
    write_regions_table(regions, tmp_path / "a.parquet", images=pa.table({"image_id": pa.array([2, 1], pa.int64())}),
                        images_per_row_group=1)
    assert tables.IMAGES_PER_ROW_GROUP_KEY not in (pq.ParquetFile(tmp_path / "a.parquet").metadata.metadata or {})
    write_regions_table(regions, tmp_path / "b.parquet", images=pa.table({"image_id": pa.array([1, 2], pa.int64())}),
                        images_per_row_group=1)
    assert pq.ParquetFile(tmp_path / "b.parquet").num_row_groups == 2
