import duckdb
import pytest

from stores.catalog import Catalog, ModelMismatchError, StoreError
from stores.migrations import MIGRATIONS, SCHEMA_VERSION, StoreVersionError, migrate

REQUIRED = {
    "classes": {"class_id": "BIGINT", "name": "VARCHAR"},
    "attributes": {"attr_id": "BIGINT", "class_id": "BIGINT", "text": "VARCHAR", "prompt": "VARCHAR", "source": "VARCHAR"},
    "attribute_embeddings": {"attr_id": "BIGINT", "model": "VARCHAR", "embedding": "FLOAT[]"},
    "images": {"image_id": "BIGINT", "path": "VARCHAR", "sha256": "VARCHAR", "width": "INTEGER", "height": "INTEGER", "label": "VARCHAR"},
    "regions": {"region_id": "BIGINT", "image_id": "BIGINT", "kind": "VARCHAR", "x0": "FLOAT", "y0": "FLOAT", "x1": "FLOAT",
                "y1": "FLOAT", "model": "VARCHAR", "embedding": "FLOAT[]"},
    "runs": {"run_id": "BIGINT", "method": "VARCHAR", "params": "VARCHAR", "model": "VARCHAR", "created_at": "TIMESTAMP"},
    "predictions": {"run_id": "BIGINT", "image_id": "BIGINT", "class_id": "BIGINT", "rank": "INTEGER", "score": "DOUBLE"},
    "alignments": {"run_id": "BIGINT", "image_id": "BIGINT", "class_id": "BIGINT", "region_id": "BIGINT", "attr_id": "BIGINT",
                   "mass": "DOUBLE", "similarity": "DOUBLE"},
}


def columns(con, table):
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {table}").fetchall()}


def test_required_tables_and_columns(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        for table, cols in REQUIRED.items():
            got = columns(cat.con, table)
            for c, t in cols.items():
                assert got.get(c) == t, (table, c, got.get(c))
        assert cat.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert (tmp_path / "s" / "catalog.duckdb").is_file()


def test_migrations_apply_once_in_memory():
    con = duckdb.connect()
    # views made by migrations read the shard views, which Catalog creates before migrating
    con.execute("CREATE VIEW images AS SELECT NULL::BIGINT AS image_id, NULL::VARCHAR AS label WHERE false")
    assert migrate(con) == [m.__name__ for m in MIGRATIONS]
    assert migrate(con) == []
    assert [r[0] for r in con.execute("select name from _migrations order by name").fetchall()] == [m.__name__ for m in MIGRATIONS]


def test_newer_store_is_refused(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        cat.query("INSERT INTO _migrations VALUES ('m999_future', now())")
    with pytest.raises(StoreVersionError, match="newer version"):
        Catalog(tmp_path / "s")
    with pytest.raises(StoreVersionError, match="newer version"):
        Catalog(tmp_path / "s", read_only=True)


def test_model_mismatch_refused(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        cat.check_model("ViT-B-32/openai")
        cat.check_model("ViT-B-32/openai")
        with pytest.raises(ModelMismatchError, match="ViT-B-32/openai"):
            cat.check_model("zsl-tiny/random:0")


def test_read_only_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="No store"):
        Catalog(tmp_path / "nothing", read_only=True)


def test_read_only_cannot_write(tmp_path):
    Catalog(tmp_path / "s").close()
    with Catalog(tmp_path / "s", read_only=True) as cat:
        with pytest.raises(duckdb.Error):
            cat.query("INSERT INTO classes VALUES (1, 'a', 'a')")
