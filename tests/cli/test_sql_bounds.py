"""Issue 21, deliverable 4: `pipeline sql` stays outside the store and inside its bounds: `-o`
never writes into the store, the sandbox refuses a symlink out of the store, a store with a
missing shard is refused unless --allow-partial, every query has a time and a memory limit,
and the private spill folder goes on every exit path."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import RegionConfig
from pipeline.stages.index_images import index_images
from stores.catalog import CATALOG_FILE, Catalog
from tests.helpers import write_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, tiny_model) -> Path:
    for c in ("cat", "dog"):
        for i in range(3):
            write_image(tmp_path / "imgs" / c / f"{i}.png", seed=i + (10 if c == "dog" else 0))
    root = tmp_path / "s"
    with Catalog(root) as cat:
        index_images(cat, tiny_model, [str(tmp_path / "imgs")], RegionConfig(n_crops=2), workers=0, shard_size=2,
                     progress=False)
    return root


def sql(store: Path, *args):
    return CliRunner().invoke(cli, ["sql", *args, "--store", str(store), "--format", "csv"])


def one_line_error(res) -> str:
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    return res.output


@pytest.mark.parametrize("target", ["catalog.duckdb", "images/SHARD", "new.csv"])
def test_output_inside_the_store_is_refused(store, target):
    shard = sorted((store / "images").glob("part-*.parquet"))[0]
    path = store / target.replace("SHARD", shard.name)
    before = path.read_bytes() if path.exists() else None
    assert "inside the store" in one_line_error(sql(store, "select 1", "-o", str(path)))
    assert (path.read_bytes() if path.exists() else None) == before
    link = store.parent / "link-to-store"
    link.symlink_to(store)  # the same folder by another name
    assert "inside the store" in one_line_error(sql(store, "select 1", "-o", str(link / target.replace("SHARD", shard.name))))
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_symlink_out_of_the_store_is_not_readable(store, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY----- canary\n")
    (store / "images" / "evil.txt").symlink_to(secret)
    (store / "images" / "passwd.csv").symlink_to("/etc/passwd")
    for q in (f"select content from read_text('zslro://{store}/images/evil.txt')",
              f"select * from read_csv('zslro://{store}/images/passwd.csv')"):
        res = sql(store, q)
        assert "canary" not in res.output and "root:" not in res.output, res.output
        one_line_error(res)
    res = sql(store, f"select content from read_text('zslro://{store}/images/*.txt')")  # a glob finds no way out either
    assert "canary" not in res.output and res.output.strip() in ("content", "") or res.exit_code == 1, res.output
    # the control: a real file in the folder is readable the same way
    shard = sorted((store / "images").glob("part-*.parquet"))[0]
    res = sql(store, f"select count(*) from read_parquet('zslro://{shard}')")
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "2", res.output


def test_a_missing_shard_is_refused_unless_allow_partial(store):
    assert sql(store, "select count(*) from images").output.splitlines()[-1] == "6"
    sorted((store / "images").glob("part-*.parquet"))[0].unlink()
    msg = one_line_error(sql(store, "select count(*) from images"))
    assert "--allow-partial" in msg and "shard-missing" in msg
    res = sql(store, "select count(*) from images", "--allow-partial")
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "4", res.output
    msg = one_line_error(sql(store, "with x as (select * from regions) select count(*) from x"))  # through a CTE too
    assert "--allow-partial" in msg
    res = sql(store, "select count(*) from index_runs")  # a query that reads no shard is answered in full
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "1", res.output


def test_a_runaway_query_is_stopped_by_the_timeout(store):
    t0 = time.perf_counter()
    res = sql(store, "select count(*) from range(100000000000000)", "--timeout", "1")
    took = time.perf_counter() - t0
    assert "stopped after 1 s" in one_line_error(res)
    assert took < 15, took
    # the control: the same connection settings answer a cheap query
    res = sql(store, "select count(*) from range(1000)", "--timeout", "1")
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "1000"


def test_the_memory_limit_is_applied(store):
    res = sql(store, "select current_setting('memory_limit')", "--memory-limit", "300M")
    assert res.output.splitlines()[-1].startswith("300"), res.output
    res = sql(store, "select current_setting('memory_limit')")
    assert res.output.splitlines()[-1] == "2.0 GiB", res.output


def _spill_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("zsl-sql-*")}


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_the_spill_folder_is_removed_when_killed(store, how):
    before = _spill_dirs()
    proc = subprocess.Popen([sys.executable, "-c", "from pipeline.cli import main; main()", "sql",
                             "select count(*) from range(100000000000000)", "--store", str(store), "--timeout", "60"],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (_spill_dirs() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    new = _spill_dirs() - before
    assert new, "the query never started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    proc.wait(timeout=30)
    if how == "sigkill":  # nothing runs in a SIGKILLed process: the next `pipeline sql` removes its folder
        assert new <= _spill_dirs()
        assert sql(store, "select 1").exit_code == 0
    assert not (new & _spill_dirs()), new
    assert not (store / CATALOG_FILE).with_name("catalog.writing.duckdb").exists()
