"""`pipeline sql` is really read-only: every hostile statement of issue 11 fails with one line and
leaves every byte of the store as it was; everything in the store stays queryable; a file of the
user's is readable only when named with --allow-read, and never writable."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import RegionConfig
from pipeline.stages.methods import MethodConfig
from pipeline.stages.attributes import import_attribute_file
from pipeline.stages.classify import classify
from pipeline.stages.index_images import index_images
from stores.catalog import Catalog
from tests.helpers import write_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model) -> Path:
    base = tmp_path_factory.mktemp("sqlro")
    for c, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(3):
            write_image(base / "imgs" / c / f"{i}.png", color=colour, seed=i + (10 if c == "dog" else 0))
    attrs = base / "attrs.json"
    attrs.write_text(json.dumps({"cat": ["pointy ears", "whiskers"], "dog": ["floppy ears", "a wet nose"]}))
    root = base / "s"
    with Catalog(root) as cat:
        import_attribute_file(cat, tiny_model, attrs, progress=False)
        index_images(cat, tiny_model, [str(base / "imgs")], RegionConfig(n_crops=4), workers=0, shard_size=2,
                     progress=False)
        classify(cat, "lazsl", MethodConfig(top_k=0), progress=False)
    return root


def store_bytes(root: Path) -> dict[str, str]:
    """Every file of the store (names and contents)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sql(store: Path, *args: str):
    return CliRunner().invoke(cli, ["sql", *args, "--store", str(store)])


def assert_one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in res.output, res.output
    return err


def hostile_statements(store: Path, tmp: Path) -> list[str]:
    shard = sorted((store / "regions").glob("part-*.parquet"))[0].name
    link = tmp / "link.duckdb"
    if not link.exists():
        os.link(store / "catalog.duckdb", link)
    return [
        f"COPY (SELECT * FROM images) TO '{store}/images/part-999999-00000.parquet' (FORMAT parquet)",
        f"COPY (SELECT * FROM regions LIMIT 0) TO '{store}/regions/{shard}' (FORMAT parquet)",
        f"COPY (SELECT 1) TO '{store}/faiss/class_prototypes.index'",
        f"COPY (SELECT * FROM classes) TO '{tmp}/new.csv'",
        f"COPY classes TO '{tmp}/new2.parquet' (FORMAT parquet)",
        f"ATTACH '{link}' AS x (READ_ONLY false)",
        f"ATTACH '{link}' AS x (READ_ONLY false); DELETE FROM x.runs",
        "DELETE FROM runs",
        f"ATTACH '{tmp}/brand-new.duckdb' AS n",
        f"EXPORT DATABASE '{tmp}/exported'",
        f"EXPORT DATABASE '{store}/images'",
        f"IMPORT DATABASE '{tmp}'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        f"SELECT * FROM read_parquet('{store}/images/../catalog.duckdb')",
        "SELECT * FROM glob('/etc/*')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET threads = 1",
        "RESET lock_configuration",
        "PRAGMA enable_profiling",
        "CALL enable_logging()",
        f"SELECT 1; COPY (SELECT 1) TO '{tmp}/multi.csv'",
        "CREATE TEMP TABLE t AS SELECT 1",
        "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "CHECKPOINT; DROP TABLE runs",
    ]


def test_every_hostile_statement_fails_in_one_line_and_changes_no_byte(store, tmp_path):
    statements = hostile_statements(store, tmp_path)
    before = store_bytes(store)
    outside = set(os.listdir(tmp_path))
    messages = {}
    for q in statements:
        messages[q] = assert_one_line_error(sql(store, q))
        assert store_bytes(store) == before, q
        assert set(os.listdir(tmp_path)) == outside, q  # nothing written outside the store either
    # the messages say what is allowed
    assert "read-only: COPY is not allowed" in messages[statements[0]] and "SELECT" in messages[statements[0]]
    assert "one by one" in messages[statements[6]]
    assert "ATTACH is not allowed" in messages[statements[5]]
    assert "EXPORT DATABASE is not allowed" in messages[statements[9]]
    assert "--allow-read" in messages["SELECT * FROM read_csv('/etc/passwd')"]
    assert "settings are fixed" in messages["PRAGMA enable_profiling"]
    # and the store still works: the images count is the shards' row count
    n_images = sum(pq.read_metadata(p).num_rows for p in (store / "images").glob("part-*.parquet"))
    res = sql(store, "select count(*) as n from images", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout) == [{"n": n_images}]


def test_a_real_pipeline_process_refuses_copy_over_a_shard(store):
    """The same through a real `pipeline sql` process: exit 1, one line on stderr, shard bytes kept."""
    shard = sorted((store / "regions").glob("part-*.parquet"))[0]
    before = store_bytes(store)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "sql",
         f"COPY (SELECT * FROM regions LIMIT 0) TO '{shard}' (FORMAT parquet)", "--store", str(store)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: pipeline sql is read-only: COPY")
    assert store_bytes(store) == before


def test_everything_in_the_store_stays_queryable(store):
    with Catalog(store, read_only=True) as cat:
        names = sorted({r[0] for r in cat.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema IN ('main', 'temp')").fetchall()})
        expected = {n: cat.query(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    assert {"images", "regions", "alignments", "top_attributes", "class_confusions"} <= set(names)
    res = sql(store, " UNION ALL ".join(f"SELECT '{n}' AS name, count(*) AS n FROM \"{n}\"" for n in names),
              "--format", "json")
    assert res.exit_code == 0, res.output
    assert {r["name"]: r["n"] for r in json.loads(res.stdout)} == expected
    n_regions = sum(pq.read_metadata(p).num_rows for p in (store / "regions").glob("part-*.parquet"))
    assert expected["regions"] == n_regions and expected["alignments"] > 0
    # the embeddings read back as the floats written (float16 shards)
    shard = sorted((store / "regions").glob("part-*.parquet"))[0]
    t = pq.read_table(shard, columns=["region_id", "embedding"])
    rid, emb = t["region_id"][0].as_py(), [float(v) for v in t["embedding"][0].as_py()]
    res = sql(store, "select embedding from regions where region_id = $r", "-p", "r", str(rid), "--format", "json")
    assert json.loads(res.stdout)[0]["embedding"] == pytest.approx(emb)
    # exploring statements other than SELECT
    for q in ("SHOW TABLES", "DESCRIBE regions", "SUMMARIZE classes", "EXPLAIN SELECT * FROM images",
              "PRAGMA table_info('runs')", "CALL pragma_database_size()", "FROM classes", "VALUES (1, 2)",
              "PIVOT classes ON name USING count(*)"):
        assert sql(store, q).exit_code == 0, q


def test_allow_read_joins_a_file_of_yours_and_never_writes_it(store, tmp_path):
    labels = tmp_path / "my labels.csv"
    with Catalog(store, read_only=True) as cat:
        paths = [r[0] for r in cat.query("SELECT path FROM images ORDER BY path").fetchall()]
    labels.write_text("path,truth\n" + "".join(f"{p},{'feline' if '/cat/' in p else 'canine'}\n" for p in paths))
    before = labels.read_bytes()
    res = sql(store, "select l.truth, count(*) as n from images i join my_labels l using (path) group by all "
                     "order by all", "--allow-read", str(labels), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == [{"truth": "canine", "n": 3}, {"truth": "feline", "n": 3}]
    # NAME=FILE names the view
    res = sql(store, "select count(*) as n from truth", "--allow-read", f"truth={labels}", "--format", "json")
    assert json.loads(res.stdout) == [{"n": 6}]
    # allowed for reading is not allowed for writing, even by its sandbox name
    for q in (f"COPY (SELECT 1) TO '{labels}'", f"COPY (SELECT 1) TO 'zslro://{labels}' (FORMAT csv)"):
        assert_one_line_error(sql(store, q, "--allow-read", str(labels)))
    assert labels.read_bytes() == before
    # a file not named stays unreadable; a missing file or a clash is one line
    other = tmp_path / "other.csv"
    other.write_text("a\n1\n")
    err = assert_one_line_error(sql(store, f"select * from read_csv('{other}')", "--allow-read", str(labels)))
    assert "--allow-read" in err
    assert "no such file" in assert_one_line_error(sql(store, "select 1", "--allow-read", str(tmp_path / "nope.csv")))
    clash = tmp_path / "images.csv"
    clash.write_text("a\n1\n")
    assert "already has a table or view named 'images'" in assert_one_line_error(
        sql(store, "select 1", "--allow-read", str(clash)))


def test_the_catalog_stays_an_ordinary_duckdb_file(store):
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM images").fetchone()[0]
        assert n == sum(pq.read_metadata(p).num_rows for p in (store / "images").glob("part-*.parquet"))
        assert con.execute("SELECT count(*) FROM alignments").fetchone()[0] > 0
    finally:
        con.close()
