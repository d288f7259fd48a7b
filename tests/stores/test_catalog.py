import duckdb
import pytest

from stores.catalog import Catalog
from stores.errors import ModelMismatchError, StoreError
from stores.errors import StoreVersionError
from stores.migrations import MIGRATIONS, SCHEMA_VERSION, migrate

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


def test_model_mismatch_refused_and_one_model_record(tmp_path):
    with Catalog(tmp_path / "s") as cat:
        assert cat.model is None and cat.model_record() is None
        cat.claim_model("ViT-B-32/openai", "ViT-B-32", "openai", 512, 224)
        cat.claim_model("ViT-B-32/openai", "ViT-B-32", "openai", 512, 224)  # the same model again: fine
        with pytest.raises(ModelMismatchError, match="ViT-B-32/openai"):
            cat.check_model("zsl-tiny/random:0")
        with pytest.raises(ModelMismatchError):
            cat.claim_model("zsl-tiny/random:0", "zsl-tiny", "random:0")
        assert cat.query("select count(*) from store_model").fetchone()[0] == 1
        assert cat.model_record() == dict(fingerprint="ViT-B-32/openai", name="ViT-B-32", pretrained="openai",
                                          embed_dim=512, image_size=224)


def test_older_store_moves_templates_out_of_attributes_and_model_meta_into_one_record(tmp_path):
    """m006 on a store written before it: template prompts leave attributes with their embeddings."""
    import duckdb

    from stores.migrations import MIGRATIONS, migrate

    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE VIEW images AS SELECT NULL::BIGINT AS image_id, NULL::VARCHAR AS label WHERE false")
    con.execute("CREATE TABLE _migrations(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for m in MIGRATIONS[:5]:
        m(con)
        con.execute("INSERT INTO _migrations VALUES (?, now())", [m.__name__])
    con.execute("INSERT INTO meta VALUES ('model', 'zsl-tiny/random:0'), "
                "('model_spec', '{\"name\": \"zsl-tiny\", \"pretrained\": \"random:0\"}')")
    con.execute("INSERT INTO classes VALUES (1, 'cat', 'cat')")
    con.execute("INSERT INTO attributes VALUES (1, 1, 'whiskers', 'cat, which has whiskers', 'file:a.json', 'descriptors', 'file'),"
                " (2, 1, 'a photo of a cat.', 'a photo of a cat.', 'template:clip', 'sentences', 'template:clip')")
    con.execute("INSERT INTO attribute_embeddings VALUES (1, 'zsl-tiny/random:0', [1.0, 0.0]), (2, 'zsl-tiny/random:0', [0.0, 1.0])")
    applied = migrate(con)
    assert applied == [m.__name__ for m in MIGRATIONS[5:]] and applied[:2] == ["m006_model_record_and_class_prompts",
                                                                             "m007_sample_predictions"]
    assert con.execute("select attr_id, source from attributes").fetchall() == [(1, "file:a.json")]
    assert con.execute("select attr_id from attribute_embeddings").fetchall() == [(1,)]
    assert con.execute("select prompt_id, class_id, template_set, prompt from class_prompts").fetchall() == [
        (2, 1, "clip", "a photo of a cat.")]
    assert con.execute("select prompt_id, embedding from class_prompt_embeddings").fetchall() == [(2, [0.0, 1.0])]
    assert con.execute("select fingerprint, name, pretrained from store_model").fetchall() == [
        ("zsl-tiny/random:0", "zsl-tiny", "random:0")]
    assert con.execute("select count(*) from meta where key like 'model%'").fetchone()[0] == 0


def test_read_only_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="No store"):
        Catalog(tmp_path / "nothing", read_only=True)


def test_read_only_cannot_write(tmp_path):
    Catalog(tmp_path / "s").close()
    with Catalog(tmp_path / "s", read_only=True) as cat:
        with pytest.raises(duckdb.Error):
            cat.query("INSERT INTO classes VALUES (1, 'a', 'a')")
