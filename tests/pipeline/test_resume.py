"""kill -9 at random moments, then re-run: every image ends up in the store exactly once."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import write_image
from stores.catalog import Catalog


@pytest.mark.slow
def test_kill9_then_resume_indexes_each_image_once(tmp_path):
    n_images, n_crops = 120, 6
    for i in range(n_images):
        write_image(tmp_path / "imgs" / f"c{i % 3}" / f"{i:03d}.png", size=(64 + i, 64), color=(i * 5 % 255, 90, 160), seed=i)
    store = tmp_path / "store"
    cmd = [sys.executable, "-c", "from pipeline.cli import cli; cli()", "index-images", str(tmp_path / "imgs"),
           "--store", str(store), "--model", "zsl-tiny", "--pretrained", "random:0", "--n-crops", str(n_crops),
           "--shard-size", "4", "--batch-size", "16", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    rng = random.Random(0)
    kills = 0
    for attempt in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # wait until this attempt has committed a new shard, then kill at a random moment after it
        before = len(list((store / "images").glob("part-*.parquet")))
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and len(list((store / "images").glob("part-*.parquet"))) <= before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 2
    with Catalog(store) as cat:
        per_image = cat.query("select count(*), count(distinct image_id) from images").fetchone()
        assert per_image == (n_images, n_images)
        regions = cat.query("select count(*), count(distinct region_id) from regions").fetchone()
        assert regions == (n_images * (n_crops + 1),) * 2
        orphans = cat.query("select count(*) from regions r anti join images i using (image_id)").fetchone()[0]
        assert orphans == 0
        assert not list(store.rglob("*.tmp"))
