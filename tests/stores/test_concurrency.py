"""Readers are never blocked by a writer, one writer at a time, nothing committed is lost.

In-process tests check the mechanics (publish, throttle, adoption and recovery of an interrupted
writer's working copy); the tests marked slow run real concurrent `pipeline` processes: readers
during a running (stopped mid-run) `index-images`, a second writer that waits and gives up with
one line, and a long reader that does not disturb a writer.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from stores.catalog import CATALOG_FILE, WORKING_FILE, Catalog
from stores.errors import StoreError
from stores.locks import WriterLock
from tests.helpers import write_image

REPO = Path(__file__).resolve().parents[2]
PIPELINE = [sys.executable, "-c", "from pipeline.cli import main; main()"]
MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0"]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", OMP_NUM_THREADS="1")


def n_classes(cat: Catalog) -> int:
    return cat.query("SELECT count(*) FROM classes").fetchone()[0]


def add_class(cat: Catalog, i: int) -> None:
    cat.query("INSERT INTO classes (class_id, name, norm_name) VALUES (?, ?, ?)", [i, f"c{i}", f"c{i}"])


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env(),
                          timeout=timeout)


# ---- mechanics (one process) -----------------------------------------------------------------
def test_a_reader_sees_each_commit_once_published_and_never_a_half_done_transaction(tmp_path):
    root = tmp_path / "s"
    with Catalog(root) as w:
        assert (root / WORKING_FILE).is_file() and (root / CATALOG_FILE).is_file()
        with w.transaction():
            add_class(w, 1)
            add_class(w, 2)
            with Catalog(root, read_only=True) as r:
                assert n_classes(r) == 0  # inside the transaction: nothing yet
        with Catalog(root, read_only=True) as r:  # committed: published (a tiny catalog copies in ~1 ms)
            assert n_classes(r) == 2
        w._copy_seconds = 3600.0  # pretend copies are dear: the next commit is not published...
        with w.transaction():
            add_class(w, 3)
        with Catalog(root, read_only=True) as r:
            assert n_classes(r) == 2
    with Catalog(root, read_only=True) as r:  # ...until the writer closes (a rename, no copy)
        assert n_classes(r) == 3
    assert not (root / WORKING_FILE).exists()


def test_one_writer_per_store(tmp_path):
    root = tmp_path / "s"
    with Catalog(root):
        with pytest.raises(StoreError, match="already open for writing in this process"):
            Catalog(root)
        proc = run_python(f"""
            from stores.catalog import Catalog
            from stores.errors import StoreError
            try:
                Catalog({str(root)!r}, wait=0.5)
            except StoreError as exc:
                print(exc)
            """)
        assert "is being written by pid" in proc.stdout and "waited 0.5 s" in proc.stdout, proc.stderr
        assert f"pid {os.getpid()}" in proc.stdout
    Catalog(root).close()  # released


def test_other_programs_can_read_but_not_write_the_catalog_while_a_writer_runs(tmp_path):
    root = tmp_path / "s"
    with Catalog(root) as w:
        add_class(w, 1)
        w.publish()
        code = f"""
            import duckdb
            for ro in (True, False):
                try:
                    con = duckdb.connect({str(root / CATALOG_FILE)!r}, read_only=ro)
                    print(ro, con.execute("select count(*) from classes").fetchone()[0])
                    con.close()
                except duckdb.Error as exc:
                    print(ro, "refused", "lock" in str(exc).lower())
            """
        assert run_python(code).stdout.split("\n")[:2] == ["True 1", "False refused True"]


@pytest.mark.parametrize("who", ["reader", "writer"])
def test_an_interrupted_writers_committed_work_is_kept(tmp_path, who):
    """A writer killed after commits (not published: copies made dear) leaves its working copy; a
    reader reads what was published (it never publishes), the next writer adopts it. Nothing committed is lost, nothing half-done
    appears."""
    root = tmp_path / "s"
    Catalog(root).close()
    proc = run_python(f"""
        import os
        from stores.catalog import Catalog
        w = Catalog({str(root)!r})
        w._copy_seconds = 3600.0
        for i in range(1, 4):
            with w.transaction():
                w.query("INSERT INTO classes (class_id, name, norm_name) VALUES (?, ?, ?)", [i, f"c{{i}}", f"c{{i}}"])
        w.query("BEGIN TRANSACTION")
        w.query("INSERT INTO classes (class_id, name, norm_name) VALUES (99, 'half', 'half')")
        os.kill(os.getpid(), 9)
        """)
    assert proc.returncode == -9
    assert (root / WORKING_FILE).exists()
    with Catalog(root, read_only=True) as r0:
        pass
    if who == "reader":  # a reader never publishes (issue 21): it reads the last published state, the copy stays
        assert r0 is not None and (root / WORKING_FILE).exists()
        with Catalog(root, read_only=True) as r:
            assert n_classes(r) == 0
        with Catalog(root) as w:  # the next writer adopts it: nothing committed is lost
            assert sorted(x[0] for x in w.query("SELECT class_id FROM classes").fetchall()) == [1, 2, 3]
        with Catalog(root, read_only=True) as r:
            assert sorted(x[0] for x in r.query("SELECT class_id FROM classes").fetchall()) == [1, 2, 3]
    else:
        with Catalog(root) as w:
            assert sorted(x[0] for x in w.query("SELECT class_id FROM classes").fetchall()) == [1, 2, 3]
            add_class(w, 4)
        with Catalog(root, read_only=True) as r:
            assert n_classes(r) == 4


def test_a_catalog_written_in_place_by_duckdb_keeps_its_wal(tmp_path):
    """A catalog left with a WAL (DuckDB itself, an older version) is folded in before the copy."""
    root = tmp_path / "s"
    Catalog(root).close()
    run_python(f"""
        import duckdb, os
        con = duckdb.connect({str(root / CATALOG_FILE)!r})
        con.execute("SET wal_autocheckpoint = '1GB'")
        con.execute("INSERT INTO classes (class_id, name, norm_name) VALUES (7, 'seven', 'seven')")
        os.kill(os.getpid(), 9)
        """)
    assert (root / (CATALOG_FILE + ".wal")).exists()
    with Catalog(root) as w:
        assert n_classes(w) == 1
    with Catalog(root, read_only=True) as r:
        assert n_classes(r) == 1


def test_writer_lock_describes_its_holder(tmp_path):
    a = WriterLock(tmp_path)
    a.acquire(0)
    info = json.loads((tmp_path / ".writer.lock").read_text())
    assert info["pid"] == os.getpid()
    assert not a.is_free()
    a.release()
    assert a.is_free()


# ---- real processes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(240):
        c = ("cat", "dog")[i % 2]
        write_image(root / "imgs" / c / f"{i:03d}.png", size=(64, 64), color=(200, 40, 40) if c == "cat" else
                    (40, 40, 200), seed=i)
    attrs = root / "attrs.json"
    attrs.write_text(json.dumps({"cat": ["pointy ears", "whiskers"], "dog": ["floppy ears", "a wet nose"]}))
    return root


def committed_images(store: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (store / "images").glob("part-*.parquet"))


def cli_json(*args) -> list[dict]:
    res = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.slow
def test_readers_and_a_second_writer_during_a_running_index_images(tmp_path, many_images):
    store = tmp_path / "s"
    res = CliRunner().invoke(cli, ["build-attributes", "--from-json", str(many_images / "attrs.json"), *MODEL,
                                   "--store", str(store)])
    assert res.exit_code == 0, res.output
    writer = subprocess.Popen([*PIPELINE, "index-images", str(many_images / "imgs"), "--n-crops", "2",
                               "--workers", "0", "--shard-size", "2", "-q", "--store", str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 240
        while len(list((store / "images").glob("part-*.parquet"))) < 2:
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(writer.pid, signal.SIGSTOP)  # frozen mid-run, holding the store for writing
        n = committed_images(store)
        assert 0 < n < 240
        # readers: they see the committed batches, at once
        t0 = time.monotonic()
        assert cli_json("sql", "select count(*) as n from images", "--store", str(store)) == [{"n": n}]
        assert cli_json("sql", "select count(DISTINCT image_id) as n from regions", "--store", str(store)) == [{"n": n}]
        status = {r["table"]: r["rows"] for r in cli_json("catalog", "status", "--store", str(store))}
        assert status["images"] == n and status["attributes"] == 4
        res = CliRunner().invoke(cli, ["export-attributes", "--schema", "dclip", "-o", str(tmp_path / "d.json"),
                                       "--store", str(store)])
        assert res.exit_code == 0 and json.loads((tmp_path / "d.json").read_text()) == json.loads(
            (many_images / "attrs.json").read_text()), res.output
        assert time.monotonic() - t0 < 60
        # a second writer waits, then gives up with one line naming the writer
        res = CliRunner().invoke(cli, ["classify", "--wait", "1", "--store", str(store)])
        assert res.exit_code == 1
        lines = res.stderr.strip().splitlines()
        assert lines[0].startswith("note: waiting up to 1 s for pid") and "index-images" in lines[0]
        assert len(lines) == 2 and lines[1].startswith("Error: ") and "waited 1 s" in lines[1] and "--wait" in lines[1]
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    out, err = writer.communicate(timeout=600)
    assert writer.returncode == 0, err
    assert "240 images indexed" in out
    assert cli_json("sql", "select count(*) as n from images", "--store", str(store)) == [{"n": 240}]


@pytest.mark.slow
def test_a_long_reader_does_not_disturb_a_writer(tmp_path, many_images):
    store = tmp_path / "s"
    res = CliRunner().invoke(cli, ["build-attributes", "--from-json", str(many_images / "attrs.json"), *MODEL,
                                   "--store", str(store)])
    assert res.exit_code == 0, res.output
    # a reader holding the store open (a long `pipeline sql`), and DuckDB's own reader (a user's CLI)
    q = "select (select count(*) from attributes), (select count(*) from images)"
    holders = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, duckdb
        from stores.catalog import Catalog
        con = {opener}
        print(con.execute({q!r}).fetchone(), flush=True)
        sys.stdin.readline()
        print(con.execute({q!r}).fetchone(), flush=True)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
        for opener in (f"Catalog({str(store)!r}, sandbox=True).con",
                       f"duckdb.connect({str(store / CATALOG_FILE)!r}, read_only=True)")]
    for h in holders:
        assert h.stdout.readline().strip() == "(4, 0)", h.stderr.read()
    # the writer runs to the end while the reader holds the store
    res = CliRunner().invoke(cli, ["index-images", str(many_images / "imgs" / "cat"), "--n-crops", "2", "--workers", "0",
                                   "--wait", "0", "--store", str(store)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["build-attributes", "--from-json", str(many_images / "attrs.json"), "--wait", "0",
                                   "--store", str(store)])
    assert res.exit_code == 0, res.output
    # the reader still reads its consistent state; new readers see the writer's
    for h in holders:
        out, err = h.communicate("\n", timeout=300)
        assert h.returncode == 0 and out.strip() == "(4, 0)", err
    assert cli_json("sql", "select count(*) as n from images", "--store", str(store)) == [{"n": 120}]
