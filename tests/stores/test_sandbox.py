"""The sandboxed connection itself (stores.sandbox), below pipeline sql's statement check: even a
statement that got past the check could not write a byte or read a file outside the store."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stores.catalog import Catalog
from stores.sandbox import ReadOnlyFS, SqlRefused, read_statement, reader_for, sandbox_path, view_name_for
from stores.shards import IndexedImage, ShardWriter


def make_store(root: Path, n_images: int = 5) -> Path:
    rng = np.random.default_rng(0)
    with Catalog(root) as cat:
        cat.query("INSERT INTO classes (class_id, name, norm_name) VALUES (1, 'cat', 'cat')")
        w = ShardWriter(cat, 1, "m", "float16", shard_size=2)
        for i in range(n_images):
            emb = rng.standard_normal((3, 8)).astype(np.float32)
            w.add(IndexedImage(f"{i:064x}", f"/img/{i}.png", "cat", 10, 10, ["full", "crop", "crop"],
                               np.zeros((3, 4)), emb / np.linalg.norm(emb, axis=1, keepdims=True)))
        w.flush()
        cat.refresh_views()
    (root / "faiss").mkdir()
    (root / "faiss" / "images.index").write_bytes(b"index bytes")
    return root


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_connection_refuses_every_write_and_outside_read(tmp_path):
    root = make_store(tmp_path / "s")
    mine = tmp_path / "mine.csv"
    mine.write_text("a,b\n1,2\n")
    shard = sorted((root / "regions").glob("*.parquet"))[0]
    before, mine_before = digest(root), mine.read_bytes()
    attempts = [
        f"COPY (SELECT 1) TO '{shard}' (FORMAT parquet)",
        f"COPY (SELECT 1) TO '{sandbox_path(shard)}' (FORMAT parquet)",
        f"COPY (SELECT 1) TO '{sandbox_path(shard)}' (FORMAT parquet, USE_TMP_FILE false)",
        f"COPY (SELECT 1) TO '{root}/images/part-999999-00000.parquet' (FORMAT parquet)",
        f"COPY (SELECT 1) TO '{root}/faiss/images.index'",
        f"COPY (SELECT 1) TO '{root}/catalog.duckdb' (USE_TMP_FILE false)",
        f"COPY (SELECT 1) TO '{sandbox_path(mine)}' (FORMAT csv, USE_TMP_FILE false)",
        f"COPY (SELECT 1) TO '{mine}'",
        f"EXPORT DATABASE '{tmp_path}/exp'",
        f"EXPORT DATABASE '{sandbox_path(root / 'images')}'",
        f"ATTACH '{tmp_path}/new.duckdb' AS n",
        f"ATTACH '{root}/catalog.duckdb' AS y (READ_ONLY false)",
        "ATTACH ':memory:' AS m",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{sandbox_path('/etc/passwd')}')",
        f"SELECT * FROM read_parquet('{sandbox_path(root / 'images')}/../catalog.duckdb')",
        f"SELECT * FROM read_csv('{mine}')",  # allowed only by its zslro:// name
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "RESET lock_configuration",
        "SET temp_directory = '/tmp/elsewhere'",
        "CREATE TABLE t AS SELECT 1",
        "DELETE FROM classes",
        "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    ]
    with Catalog(root, sandbox=True, allow_read=[("mine", mine)]) as cat:
        for q in attempts:
            with pytest.raises(duckdb.Error):
                cat.con.execute(q).fetchall()
            assert digest(root) == before, q
        assert mine.read_bytes() == mine_before
        assert not (tmp_path / "exp").exists() and not (tmp_path / "new.duckdb").exists()
        # what may be read is read
        assert cat.query("SELECT a + b FROM mine").fetchone()[0] == 3
        assert cat.query("SELECT count(*) FROM regions").fetchone()[0] == 15
        assert cat.query("SELECT count(*) FROM classes").fetchone()[0] == 1
        settings = dict(cat.query("SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
                                  "'lock_configuration', 'autoinstall_known_extensions', 'autoload_known_extensions', "
                                  "'allow_community_extensions')").fetchall())
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                        "allow_community_extensions": "false"}
    assert digest(root) == before


def test_the_views_read_only_committed_batches(tmp_path):
    """A regions shard whose images shard is missing is a batch in flight: no view shows it."""
    root = make_store(tmp_path / "s", n_images=4)  # two shard pairs
    pq.write_table(pq.read_table(sorted((root / "regions").glob("*.parquet"))[0]),
                   root / "regions" / "part-000009-00000.parquet")
    for kw in (dict(read_only=True), dict(sandbox=True)):
        with Catalog(root, **kw) as cat:
            assert cat.query("SELECT count(*) FROM regions").fetchone()[0] == 12
            assert cat.query("SELECT count(*) FROM images").fetchone()[0] == 4


def test_read_only_fs_opens_only_what_it_was_given_and_only_for_reading(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"xyz")
    (tmp_path / "f.csv").write_text("a\n")
    (tmp_path / "secret").write_text("no")
    fs = ReadOnlyFS([tmp_path / "d"], [tmp_path / "f.csv"])
    with fs.open(sandbox_path(tmp_path / "d" / "x.bin"), "rb") as f:
        assert f.read() == b"xyz"
    assert fs.info(sandbox_path(tmp_path / "f.csv"))["size"] == 2
    for bad in (tmp_path / "secret", tmp_path / "d" / ".." / "secret", tmp_path / "d2" / "x"):
        with pytest.raises(PermissionError):
            fs.open(sandbox_path(bad), "rb")
    for mode in ("wb", "ab", "rb+"):
        with pytest.raises(PermissionError):
            fs.open(sandbox_path(tmp_path / "d" / "x.bin"), mode)
    for op in (lambda: fs.rm(sandbox_path(tmp_path / "d" / "x.bin")),
               lambda: fs.mv(sandbox_path(tmp_path / "d" / "x.bin"), sandbox_path(tmp_path / "d" / "y")),
               lambda: fs.mkdir(sandbox_path(tmp_path / "d" / "sub")),
               lambda: fs.touch(sandbox_path(tmp_path / "d" / "new"))):
        with pytest.raises(PermissionError):
            op()
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"xyz" and sorted(os.listdir(tmp_path / "d")) == ["x.bin"]


@pytest.mark.parametrize("sql,kind", [
    ("select 1", "SELECT"), ("  with a as (select 1) select * from a;", "SELECT"), ("from classes", "SELECT"),
    ("describe classes", "SELECT"), ("explain select 1", "EXPLAIN"), ("pragma show_tables", "PRAGMA"),
    ("pivot classes on name using count(*)", "MULTI"),
])
def test_read_statement_accepts_one_reading_statement(sql, kind):
    assert read_statement(duckdb.connect(), sql).type.name == kind


@pytest.mark.parametrize("sql,message", [
    ("select 1; select 2", "got 2 statements"),
    ("select 1; copy (select 1) to 'x.csv'", "got 2 statements"),
    ("copy (select 1) to 'x.csv'", "COPY is not allowed"),
    ("export database 'x'", "EXPORT DATABASE is not allowed"),
    ("attach 'x.duckdb'", "ATTACH is not allowed"),
    ("set threads = 1", "SET is not allowed"),
    ("install httpfs", "INSTALL is not allowed"),
    ("", "no SQL statement"),
    ("-- just a comment", "no SQL statement"),
    ("selec 1", "SQL error: Parser Error"),
])
def test_read_statement_refuses_with_one_line(sql, message):
    with pytest.raises(SqlRefused) as exc:
        read_statement(duckdb.connect(), sql)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_allow_read_file_names():
    assert reader_for(Path("a/labels.CSV")) == "read_csv" and reader_for(Path("x.jsonl.gz")) == "read_json"
    assert reader_for(Path("x.parquet")) == "read_parquet" and reader_for(Path("x.xlsx")) is None
    assert view_name_for(Path("my labels-2.csv.gz")) == "my_labels_2"
    assert view_name_for(Path("2024.csv")) == "f_2024"
