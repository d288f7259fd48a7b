"""``--engine ray`` on a local Ray cluster (``ray.init(num_cpus=2)``, one per module): the same
store as the local engine, row by row; a killed Ray run resumes without duplicates; classify on
Ray writes the rows the local engine writes. Skipped without the ``ray`` extra.

Kept small on purpose (6 images + 1 broken file, the tiny random model, one actor per pool):
most of the time is Ray starting actors, each importing torch and open_clip.
"""
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import RegionConfig
from pipeline.stages.methods import MethodConfig
from pipeline.stages.attributes import import_attribute_file
from pipeline.stages.classify import classify
from pipeline.stages.index_images import index_images
from stores import tables
from stores.catalog import Catalog
from stores.shards import ShardWriter
from stores.verify import verify

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray Data's own

CFG = RegionConfig(n_crops=5, crop_min=0.5)
MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0", "--device", "cpu"]
REGION_COLS = "region_id, image_id, kind, x0, y0, x1, y1, model, embedding"
IMAGE_COLS = "image_id, path, sha256, width, height, label"


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="ray not installed (pip install 'zsl-pipeline[ray]')")
    pytest.importorskip("ray.data")
    import ray

    from pipeline.engines.ray_engine import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.helpers import write_image

    root = tmp_path_factory.mktemp("ray") / "imgs"
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(3):
            write_image(root / c / f"{i}.png", size=(96 + 8 * i, 80), color=color, seed=i + (10 if c == "dog" else 0))
    (root / "broken.jpg").write_bytes(b"not a jpeg")  # an error row, first in input order
    return root


@pytest.fixture(scope="module")
def attrs(tmp_path_factory):
    import json

    p = tmp_path_factory.mktemp("attrs") / "attrs.json"
    p.write_text(json.dumps({"cat": ["pointy ears", "a long tail", "whiskers"], "dog": ["floppy ears", "a wet nose"]}))
    return p


def rows(cat, name, cols):
    key = "region_id" if name == "regions" else "image_id"
    return cat.query(f"select {cols} from {name} order by {key}").fetchall()


def assert_same_store(a: Catalog, b: Catalog):
    ra, rb = rows(a, "regions", REGION_COLS), rows(b, "regions", REGION_COLS)
    assert len(rb) == len({r[0] for r in rb}) == 36  # no duplicates
    assert ra == rb  # ids, kinds, boxes, embedding values (float32: the encoder's exact bits)
    assert rows(a, "images", IMAGE_COLS) == rows(b, "images", IMAGE_COLS)
    q = "select path, sha256, reason from image_errors order by path"
    assert a.query(q).fetchall() == b.query(q).fetchall()
    assert verify(a) == [] and verify(b) == []


@pytest.fixture(scope="module")
def stores(ray_cluster, tmp_path_factory, tiny_model, folder, attrs):
    """The same folder indexed by the local engine (in-process) and by the CLI with --engine ray."""
    root = tmp_path_factory.mktemp("stores")
    with Catalog(root / "local") as cat:
        import_attribute_file(cat, tiny_model, attrs, progress=False)
        index_images(cat, tiny_model, [str(folder)], CFG, progress=False, dtype="float32", shard_size=2)
    with Catalog(root / "ray") as cat:
        import_attribute_file(cat, tiny_model, attrs, progress=False)
    res = CliRunner().invoke(cli, ["-q", "index-images", str(folder), "--store", str(root / "ray"), *MODEL,
                                   "--n-crops", "5", "--crop-min", "0.5", "--dtype", "float32", "--shard-size", "2",
                                   "--engine", "ray", "--ray-concurrency", "1"], catch_exceptions=False)
    assert res.exit_code == 1, res.output  # the broken file: reported, exit status 1
    assert "6 images indexed (36 regions), 0 already in the store, 1 failed" in res.stdout
    return root / "local", root / "ray"


def test_ray_store_equals_local_store_row_by_row(stores):
    with Catalog(stores[0]) as a, Catalog(stores[1]) as b:
        assert_same_store(a, b)
        names = [p.name for p in a.shard_files("regions")]
        assert names == [p.name for p in b.shard_files("regions")] and len(names) == 3
        engine = tables.index_run_params(b)[-1]["engine"]
        assert (engine["name"], engine["concurrency"], engine["device"]) == ("ray", 1, "cpu")


def test_killed_ray_run_resumes_without_duplicates(ray_cluster, stores, tmp_path, tiny_model, folder, monkeypatch):
    """The driver dies after its first shard pair is committed (shard size 2); the next run
    skips those images and indexes the rest: each image once, the same store as the local engine."""
    from pipeline.engines.ray_engine import index_images_ray

    flush = ShardWriter.flush
    calls = []

    def dying_flush(self):
        if self.pending and calls:
            raise KeyboardInterrupt  # as a Ctrl-C or kill would stop the driver mid-run
        calls.append(1)
        flush(self)

    with Catalog(tmp_path / "s") as cat:
        monkeypatch.setattr(ShardWriter, "flush", dying_flush)
        with pytest.raises(KeyboardInterrupt):
            index_images_ray(cat, tiny_model, [str(folder)], CFG, concurrency=1, batch_images=2, shard_size=2,
                             dtype="float32")
        monkeypatch.undo()
    with Catalog(tmp_path / "s") as cat:  # reopened: what the killed run left is settled
        assert tables.image_count(cat) == 2 and len(cat.shard_files("images")) == 1  # one committed pair
        rest = index_images_ray(cat, tiny_model, [str(folder)], CFG, concurrency=1, batch_images=2, shard_size=2,
                                dtype="float32")
        assert (rest.indexed, rest.skipped, rest.failed) == (4, 2, 1)
        with Catalog(stores[0]) as local:
            assert_same_store(local, cat)


def test_sigkilled_ray_driver_resumes_without_duplicates(ray_cluster, tmp_path, tiny_model):
    """``pipeline index-images --engine ray --address ADDR`` (joining the module's cluster) is
    SIGKILLed once its first shard pair is on disk; the same command again finishes the store:
    every image once, the rows of the local engine, ``verify`` clean."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import write_image

    imgs = tmp_path / "imgs"
    for i in range(40):
        write_image(imgs / f"c{i % 2}" / f"{i:02d}.png", size=(72 + i, 64), color=(i * 6 % 255, 90, 160), seed=i)
    store, address = tmp_path / "s", ray_cluster.get_runtime_context().gcs_address
    args = ["index-images", str(imgs), "--store", str(store), *MODEL, "--n-crops", "5", "--crop-min", "0.5",
            "--shard-size", "1", "--engine", "ray", "--address", address, "--ray-concurrency", "1"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from pipeline.cli import cli; cli()", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not list((store / "images").glob("part-*.parquet")):
        time.sleep(0.02)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running, "the run finished before it could be killed"
    with Catalog(store) as cat:  # opened for writing: a pair committed but not yet renamed is finished first
        killed_at = tables.image_count(cat)
        shards = len(cat.committed_shard_files("images"))
    # killed mid-run: some images (at least the shard we waited for), not all; one image per shard
    assert 1 <= killed_at < 40, killed_at
    assert killed_at == shards
    res = CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"{40 - killed_at} images indexed" in res.stdout and f"{killed_at} already in the store" in res.stdout
    with Catalog(tmp_path / "local") as local, Catalog(store) as cat:
        index_images(local, tiny_model, [str(imgs)], CFG, progress=False, shard_size=1)
        assert cat.query("select count(*), count(distinct image_id) from images").fetchone() == (40, 40)
        assert rows(local, "regions", REGION_COLS) == rows(cat, "regions", REGION_COLS)  # float16, 240 rows
        assert verify(cat) == [] and not list(store.rglob("*.tmp"))


def test_ray_classify_writes_the_rows_local_classify_writes(stores, tiny_model):
    from pipeline.engines.ray_engine import classify_ray

    q = "select * exclude (run_id) from {} where run_id = ? order by all"
    with Catalog(stores[1]) as cat:
        some = [r[0] for r in cat.query("select image_id from images order by path limit 4").fetchall()]
        for method, cfg, ids in (("lazsl", MethodConfig(top_k=1), None), ("wca", MethodConfig(top_k=0), None),
                                 ("lazsl", MethodConfig(top_k=0), some)):
            local = classify(cat, method, cfg, model=tiny_model, image_ids=ids, progress=False)
            ray = classify_ray(cat, method, cfg, model=tiny_model, image_ids=ids, concurrency=1)
            assert ray.images == local.images == (6 if ids is None else 4)
            for t in ("predictions", "alignments", "sample_predictions"):
                a = cat.query(q.format(t), [local.run_id]).fetchall()
                assert a == cat.query(q.format(t), [ray.run_id]).fetchall(), (method, t)
                produces = {"predictions", "alignments" if method == "lazsl" else "sample_predictions"}
                assert (len(a) > 0) == (t in produces), (method, t)
            assert tables.get_run(cat, ray.run_id).params["engine"]["name"] == "ray"
        assert verify(cat) == []


def test_cli_classify_engine_ray(stores):
    res = CliRunner().invoke(cli, ["-q", "classify", "--method", "dclip", "--store", str(stores[1]), "--engine", "ray",
                                   "--format", "csv", "--limit", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with Catalog(stores[1], read_only=True) as cat:
        run = tables.latest_run(cat)
        assert run.method == "dclip" and run.params["engine"]["name"] == "ray"
        n = cat.query("select count(distinct image_id) from predictions where run_id = ?", [run.run_id]).fetchone()[0]
        assert n == 6
    assert len(res.stdout.splitlines()) == 1 + 6 * 2  # a header, then 2 ranked classes of each image
