"""The index stage's pure batch function and the one writer, without Ray.

Row by row: the batch function, fed paths in any batching, gives the region ids, image ids,
kinds, boxes and embedding bytes that ``index_images`` stores (float16 and float32), the same
error rows, and through ``store_rows`` the same shards. Ray itself: tests/pipeline/test_ray_engine.py.
"""
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import RegionConfig
from pipeline.stages.region_batches import MIN_ROWS, RegionBatchFn, encode_views, records_from_rows
from pipeline.imaging import discover_images
from pipeline.stages.index_images import index_images, store_rows
from stores import tables
from stores.catalog import Catalog

CFG = RegionConfig(n_crops=5, crop_min=0.5)
REGION_COLS = "region_id, image_id, kind, x0, y0, x1, y1, model, embedding"
IMAGE_COLS = "image_id, path, sha256, width, height, label"


@pytest.fixture
def folder(image_folder):
    (image_folder / "broken.jpg").write_bytes(b"not a jpeg")  # an error row
    return image_folder


def local_store(path, model, folder, dtype="float16", **kw):
    cat = Catalog(path)
    index_images(cat, model, [str(folder)], CFG, progress=False, dtype=dtype, **kw)
    return cat


def table(cat, name, cols):
    key = "region_id" if name == "regions" else "image_id"
    return cat.query(f"select {cols} from {name} order by {key}").fetchall()


def inputs(folder):
    return [{"path": it.path, "label": it.label or ""} for it in discover_images([str(folder)])]


def run_batches(fn, rows, batch_images):
    """The batch function in-process, on pyarrow batches of ``batch_images`` paths (as Ray feeds it)."""
    for i in range(0, len(rows), batch_images):
        yield fn(pa.Table.from_pylist(rows[i : i + batch_images]))


def concat(batches):
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_batch_function_rows_equal_index_images(tmp_path, tiny_model, folder, dtype):
    with local_store(tmp_path / "local", tiny_model, folder, dtype) as cat:
        regions = table(cat, "regions", REGION_COLS)
        errors = cat.query("select path, reason from image_errors").fetchall()
    fn = RegionBatchFn(tiny_model, CFG.to_dict(), dtype=dtype)
    rows = concat(run_batches(fn, inputs(folder), batch_images=2))
    ok = rows["status"] == "ok"
    assert ok.sum() == len(regions) == 36
    order = np.argsort(rows["region_id"][ok])
    got = {k: v[ok][order] for k, v in rows.items()}
    np_dtype = np.float16 if dtype == "float16" else np.float32
    for i, (rid, iid, kind, x0, y0, x1, y1, _model, emb) in enumerate(regions):
        assert (got["region_id"][i], got["image_id"][i], got["kind"][i]) == (rid, iid, kind)
        assert [got[k][i] for k in ("x0", "y0", "x1", "y1")] == [x0, y0, x1, y1]
        assert got["embedding"][i].tobytes() == np.asarray(emb, np_dtype).tobytes()  # byte-identical
    err = rows["status"] == "error"
    assert [(p, e) for p, e in zip(rows["path"][err], rows["error"][err])] == errors
    # a second pass that knows the store's hashes skips every good image
    known = set(rows["sha256"][ok])
    again = concat(run_batches(RegionBatchFn(tiny_model, CFG, dtype=dtype, known_sha=known), inputs(folder), 3))
    assert list(again["status"]).count("skip") == 6 and list(again["status"]).count("error") == 1


def test_store_rows_builds_the_same_store_whatever_the_batching(tmp_path, tiny_model, folder):
    """The local engine (DataLoader + encode in region batches of 7) and the batch function fed 4
    paths at a time, through the one writer: same rows, same shard names, same errors."""
    with local_store(tmp_path / "local", tiny_model, folder, batch_size=7, shard_size=2) as a, \
            Catalog(tmp_path / "batched") as b:
        b.claim_model(tiny_model.fingerprint, tiny_model.name, tiny_model.pretrained, tiny_model.embed_dim)
        tables.insert_index_run(b, 1, {}, tiny_model.fingerprint)
        rep = store_rows(b, 1, tiny_model.fingerprint, run_batches(RegionBatchFn(tiny_model, CFG), inputs(folder), 4),
                         shard_size=2)
        b.refresh_views()
        assert (rep.indexed, rep.failed, rep.regions) == (6, 1, 36)
        assert table(a, "regions", REGION_COLS) == table(b, "regions", REGION_COLS)
        assert table(a, "images", IMAGE_COLS) == table(b, "images", IMAGE_COLS)
        assert [p.name for p in a.shard_files("regions")] == [p.name for p in b.shard_files("regions")]
        assert a.query("select path, sha256, reason from image_errors").fetchall() == \
            b.query("select path, sha256, reason from image_errors").fetchall()


def test_duplicate_files_in_one_batch_are_stored_once(tmp_path, tiny_model, folder):
    first = next(r for r in inputs(folder) if r["label"])  # a good image
    rows = RegionBatchFn(tiny_model, CFG)(pa.Table.from_pylist([first, first]))
    recs = list(records_from_rows(rows))
    assert len(recs) == 2 and [len(r["kinds"]) for r in recs] == [6, 6]
    assert recs[0]["emb"].tobytes() == recs[1]["emb"].tobytes()
    with Catalog(tmp_path / "s") as cat:
        rep = store_rows(cat, 1, tiny_model.fingerprint, [rows])
        assert (rep.indexed, rep.skipped, rep.regions) == (1, 1, 6)


def test_encoder_padding_makes_rows_independent_of_the_chunking(tiny_model):
    import torch

    torch.manual_seed(0)
    px = torch.randn(13, 3, tiny_model.image_size, tiny_model.image_size)
    whole = encode_views(tiny_model, px, batch_size=256)
    for bs in (1, 2, 3, 5):  # tails of 1-3 rows get padded to MIN_ROWS
        assert encode_views(tiny_model, px, batch_size=bs).tobytes() == whole.tobytes(), bs
    unpadded = encode_views(tiny_model, px, batch_size=1, min_rows=1)
    assert np.abs(unpadded - whole).max() < 1e-5  # close, but (on this CPU) not always the same bits
    assert MIN_ROWS >= 4


def test_without_ray_the_engine_says_how_to_install(monkeypatch):
    from pipeline.engines import ray_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ray_engine.RayNotInstalled) as e:
        ray_engine.require_ray()
    assert "pip install 'zsl-pipeline[ray]'" in str(e.value) and "\n" not in str(e.value)


def test_actor_plan_uses_gpus_when_present():
    from pipeline.engines.ray_engine import plan_actors

    assert plan_actors({"CPU": 16, "GPU": 2}) == {"concurrency": 2, "num_gpus": 1.0, "num_cpus": 1.0, "device": "cuda"}
    p = plan_actors({"CPU": 16, "GPU": 2}, actors_per_gpu=4)
    assert (p["concurrency"], p["num_gpus"]) == (8, 0.25)
    assert plan_actors({"CPU": 2}) == {"concurrency": 1, "num_gpus": 0, "num_cpus": 1.0, "device": "cpu"}
    assert plan_actors({"CPU": 8}) ["concurrency"] == 7
    assert plan_actors({"CPU": 2, "GPU": 1}, num_gpus=0, concurrency=2)["device"] == "cpu"


def test_score_region_batch_rows_round_trip_and_equal_the_stage(tmp_path, tiny_model, image_folder, attr_file):
    """classify's per-batch function: its rows survive the bytes an actor ships, and scoring the
    shards one by one (what actors do) writes exactly what classify writes."""
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.classify import ScoredRows, classify, prepare_run, score_shard, write_scored

    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, tiny_model, attr_file, progress=False)
        index_images(cat, tiny_model, [str(image_folder)], CFG, progress=False, shard_size=2)
        for method in ("lazsl", "wca"):
            ref = classify(cat, method, MethodConfig(top_k=0), model=tiny_model, progress=False)
            run = prepare_run(cat, method, MethodConfig(top_k=0), engine={"name": "test"})
            with cat.transaction():
                tables.insert_run(cat, tables.RunRecord(run.report.run_id, method, run.report.params, cat.model))
                for path, pos in tables.region_shard_plan(cat):
                    write_scored(cat, ScoredRows.from_bytes(score_shard(run.context, path, None, pos).to_bytes()))
            for t in ("predictions", "alignments", "sample_predictions"):
                q = f"select * exclude (run_id) from {t} where run_id = ? order by all"
                a, b = cat.query(q, [ref.run_id]).fetchall(), cat.query(q, [run.report.run_id]).fetchall()
                assert a == b, (method, t)
                produces = {"predictions", "alignments" if method == "lazsl" else "sample_predictions"}
                assert (len(a) > 0) == (t in produces), (method, t)


def test_shard_scorer_reads_only_the_row_groups_of_its_images(tmp_path, tiny_model, attr_file, monkeypatch):
    """The Ray actor of classify, called as Ray Data calls it (a pyarrow batch of shard rows with
    the images' positions), on a shard of 2 row groups: the rows of classify on those images."""
    import pyarrow.parquet as pq

    from pipeline.stages.methods import MethodConfig
    from pipeline.engines.ray_engine import ShardScorer
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.classify import ScoredRows, classify, prepare_run, write_scored
    from tests.helpers import write_image

    for i in range(20):
        write_image(tmp_path / "imgs" / f"c{i % 2}" / f"{i:02d}.png", size=(64 + i, 60), color=(i * 9, 80, 140), seed=i)
    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, tiny_model, attr_file, progress=False)
        index_images(cat, tiny_model, [str(tmp_path / "imgs")], RegionConfig(n_crops=3), progress=False, shard_size=20)
        assert pq.ParquetFile(cat.shard_files("regions")[0]).num_row_groups == 2
        last = [r[0] for r in cat.query("select image_id from images order by image_id desc limit 2").fetchall()]
        ref = classify(cat, "lazsl", MethodConfig(top_k=0), image_ids=last, progress=False)
        run = prepare_run(cat, "lazsl", MethodConfig(top_k=0), image_ids=last)
        plan = tables.region_shard_plan(cat, last)
        batch = pa.Table.from_pylist([{"path": str(p), "seq": i, "positions": [int(x) for x in pos]}
                                      for i, (p, pos) in enumerate(plan)])
        groups = []
        real = pq.ParquetFile.read_row_groups
        monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                            lambda self, g, **kw: groups.append(list(g)) or real(self, g, **kw))
        out = ShardScorer(run.context.to_dict(), image_ids=last)(batch)
        monkeypatch.undo()
        want_groups = sorted({int(x) // 16 for _, pos in plan for x in pos})
        assert groups == [want_groups] and out["images"].tolist() == [2]
        with cat.transaction():
            tables.insert_run(cat, tables.RunRecord(run.report.run_id, "lazsl", run.report.params, cat.model))
            write_scored(cat, ScoredRows.from_bytes(out["rows"][0]))
        for t in ("predictions", "alignments"):
            q = f"select * exclude (run_id) from {t} where run_id = ? order by all"
            a = cat.query(q, [ref.run_id]).fetchall()
            assert a == cat.query(q, [run.report.run_id]).fetchall() and len(a) > 0
