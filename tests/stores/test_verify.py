"""A corpus of deliberately damaged stores: ``verify`` finds every damage (one line each),
the stages refuse the store, and ``repair`` fixes what can be rebuilt without re-encoding
(quarantining, never deleting, damaged shards)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages.attributes import add_class_prompts, encode_attributes, encode_class_prompts
from stores import indexes, tables
from stores.catalog import Catalog
from stores.errors import StoreError
from stores.faiss_index import build_flat_ip, read_sidecar, write_index
from stores.verify import quick_check, repair, require_usable, verify
from tests.helpers.damage import build_small_store, copy_store, normalised, rewrite_shard, set_embeddings, shard


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, tiny_model):
    return build_small_store(tmp_path_factory.mktemp("healthy"), tiny_model)


def checks(problems) -> set[str]:
    return {p.check for p in problems}


def truncate(path, frac=0.5):
    os.truncate(path, int(path.stat().st_size * frac))


def sql(store, *statements, params=None):
    with Catalog(store) as cat:
        for s in statements:
            cat.query(s, params)


# ---- damage ---------------------------------------------------------------------------------
def insert_owl(store, model):
    """A class with an encoded attribute that the prototype index has never seen."""
    with Catalog(store) as cat:
        cid, aid = tables.next_class_id(cat), tables.next_attr_id(cat)
        tables.insert_classes(cat, [cid], ["owl"], ["owl"])
        tables.insert_attributes(cat, [dict(attr_id=aid, class_id=cid, text="big eyes", prompt="owl, which has big eyes",
                                            source="file:x", style="descriptors", prompt_version="file")])
        tables.insert_attribute_embeddings(cat, [aid], cat.model, normalised(np.random.default_rng(0), 1, model.embed_dim))


def drop_fox(store, model):
    sql(store, "DELETE FROM attribute_embeddings WHERE attr_id IN (SELECT attr_id FROM attributes JOIN classes USING "
               "(class_id) WHERE name = 'fox')",
        "DELETE FROM attributes WHERE class_id = (SELECT class_id FROM classes WHERE name = 'fox')")


def templates_as_attributes(store, model):
    """What older code did: template prompts stored as attributes, and the prototypes built
    from every attribute of a class, templates included."""
    with Catalog(store) as cat:
        aid = tables.next_attr_id(cat)
        rows = [dict(attr_id=aid + i, class_id=cid, text=f"a photo of a {name}.", prompt=f"a photo of a {name}.",
                     source="template:clip", style="sentences", prompt_version="template:clip")
                for i, (cid, name) in enumerate(tables.class_names(cat).items())]
        tables.insert_attributes(cat, rows)
        emb = model.encode_texts([r["prompt"] for r in rows])
        tables.insert_attribute_embeddings(cat, [r["attr_id"] for r in rows], cat.model, emb)
        attrs = tables.attribute_matrix(cat, cat.model)  # every style: the old prototypes
        classes, proto = indexes.expected_prototypes(attrs)
        side = read_sidecar(indexes.index_path(cat, "class_prototypes"))
        write_index(build_flat_ip(proto, classes), indexes.index_path(cat, "class_prototypes"),
                    {k: v for k, v in side.items() if k not in ("ntotal", "dim", "bytes", "ids_sha256")})


def templates_in_prototypes(store, model):
    """Class prompts kept apart, but mixed into the prototype vectors (sidecar left plausible:
    only the full check's vector comparison can see it)."""
    with Catalog(store) as cat:
        add_class_prompts(cat, ["a photo of a {}."], "clip")
        encode_class_prompts(cat, model)
        attrs = indexes.prototype_attributes(cat, cat.model)
        prompts = tables.class_prompt_matrix(cat, cat.model, "clip")
        mixed = tables.TextMatrix(np.concatenate([attrs.ids, prompts.ids + 10_000]),
                                  np.concatenate([attrs.class_ids, prompts.class_ids]),
                                  np.concatenate([attrs.embeddings, prompts.embeddings]))
        classes, proto = indexes.expected_prototypes(mixed)
        path = indexes.index_path(cat, "class_prototypes")
        side = read_sidecar(path)
        write_index(build_flat_ip(proto, classes), path, {k: v for k, v in side.items()
                                                            if k not in ("ntotal", "dim", "bytes", "ids_sha256")})


def scale_attribute_embedding(factor):
    def damage(store, model):
        with Catalog(store) as cat:
            aid = cat.query("SELECT min(attr_id) FROM attributes").fetchone()[0]
            emb = np.array(cat.query("SELECT embedding FROM attribute_embeddings WHERE attr_id = ?", [aid]).fetchone()[0])
            cat.query("UPDATE attribute_embeddings SET embedding = ? WHERE attr_id = ?", [(emb * factor).tolist(), aid])
    return damage


def nan_attribute_embedding(store, model):
    with Catalog(store) as cat:
        aid = cat.query("SELECT max(attr_id) FROM attributes").fetchone()[0]
        emb = np.array(cat.query("SELECT embedding FROM attribute_embeddings WHERE attr_id = ?", [aid]).fetchone()[0])
        emb[3] = np.nan
        cat.query("UPDATE attribute_embeddings SET embedding = ? WHERE attr_id = ?", [emb.tolist(), aid])


def region_embeddings(fn):
    def damage(store, model):
        name = shard(store, "regions", 0).name
        rewrite_shard(store, "regions", name, lambda t: set_embeddings(t, fn))
    return damage


def nan_row(e):
    e[1] = np.nan
    return e


def regions_of_another_model(store, model):
    name = shard(store, "regions", 1).name
    rewrite_shard(store, "regions", name, lambda t: t.set_column(t.schema.get_field_index("model"), "model",
                                                                  pa.array(["ViT-B-32/openai"] * t.num_rows)))


def empty_regions_shard(store, model):
    """What `COPY (SELECT * FROM regions LIMIT 0) TO '<store>/regions/part-...'` did."""
    p = shard(store, "regions", 0)
    t = pq.read_table(p)
    pq.write_table(t.slice(0, 0), p)


def copy_images_shard(store, model):
    """What `COPY (SELECT * FROM images) TO '<store>/images/part-999999-00000.parquet'` did."""
    shutil.copy(shard(store, "images", 0), store / "images" / "part-999999-00000.parquet")


def copy_shard_pair(store, model):
    for t in ("images", "regions"):
        shutil.copy(shard(store, t, 0), store / t / "part-999999-00000.parquet")


def other_model_embeddings(store, model):
    sql(store, "INSERT INTO attribute_embeddings SELECT attr_id, 'ViT-B-32/openai', embedding FROM attribute_embeddings")


def wrong_sidecar(store, model):
    p = store / "faiss" / "class_prototypes.json"
    side = json.loads(p.read_text())
    side.update(model="ViT-B-32/openai", ntotal=99)
    p.write_text(json.dumps(side))


def garbage(path_in_store):
    def damage(store, model):
        (store / path_in_store).write_bytes(b"garbage!" * 64)
    return damage


CASES = {
    # name: (damage, checks verify must find, does a stage refuse it, after repair: "fixed" | "reencode" | {checks left})
    "truncated regions shard": (lambda s, m: truncate(shard(s, "regions", 1)), {"shard-unreadable"}, True, "fixed"),
    "truncated images shard": (lambda s, m: truncate(shard(s, "images", 0)), {"shard-unreadable"}, True, "fixed"),
    "regions shard emptied (COPY attack)": (empty_regions_shard, {"shard-size"}, True, "fixed"),
    "deleted regions shard": (lambda s, m: shard(s, "regions", 0).unlink(), {"shard-missing"}, True, "fixed"),
    "deleted images shard": (lambda s, m: shard(s, "images", 2).unlink(), {"shard-missing"}, True, "fixed"),
    "images shard copied (COPY attack)": (copy_images_shard, {"shard-unrecorded", "shard-partner"}, True, "fixed"),
    "shard pair copied": (copy_shard_pair, {"shard-unrecorded", "duplicate-ids"}, True, "fixed"),
    "missing shard record": (lambda s, m: sql(s, "DELETE FROM shards WHERE table_name = 'regions' AND name = "
                                                 "(SELECT min(name) FROM shards)"), {"shard-unrecorded"}, True, "fixed"),
    "stray staged file": (lambda s, m: (s / "regions" / "part-000077-00000.parquet.tmp").write_bytes(b"x" * 100),
                          {"interrupted-write"}, False, "fixed"),
    "garbage images.index": (garbage("faiss/images.index"), {"index-unreadable"}, False, "fixed"),
    "garbage class_prototypes.index": (garbage("faiss/class_prototypes.index"), {"index-unreadable"}, True, "fixed"),
    "truncated attributes.index": (lambda s, m: truncate(s / "faiss" / "attributes.index", 0.8), {"index-unreadable"},
                                   True, "fixed"),
    "wrong sidecar": (wrong_sidecar, {"index-sidecar"}, True, "fixed"),
    "missing sidecar": (lambda s, m: (s / "faiss" / "images.json").unlink(), {"index-sidecar"}, False, "fixed"),
    "deleted images.index": (lambda s, m: (s / "faiss" / "images.index").unlink(), {"index-missing"}, False, "fixed"),
    "half-encoded attributes": (lambda s, m: sql(s, "DELETE FROM attribute_embeddings WHERE attr_id % 2 = 0"),
                                {"attributes-unencoded", "index-stale", "index-vectors"}, True, "reencode"),
    "stale prototypes: a class missing": (insert_owl, {"prototypes-stale", "index-stale"}, True, "fixed"),
    "stale prototypes: a class too many": (drop_fox, {"prototypes-stale", "index-stale"}, True, "fixed"),
    "templates mixed into attributes": (templates_as_attributes, {"templates-in-attributes", "index-vectors"}, True,
                                        "fixed"),
    "templates mixed into prototypes": (templates_in_prototypes, {"index-vectors"}, False, "fixed"),
    "non-normalised attribute embedding": (scale_attribute_embedding(2.0), {"embedding-norm", "index-vectors"}, False,
                                           "reencode"),
    "NaN attribute embedding": (nan_attribute_embedding, {"embedding-nan"}, False, "reencode"),
    "NaN region embedding": (region_embeddings(nan_row), {"embedding-nan"}, False, "fixed"),
    "non-normalised region embeddings": (region_embeddings(lambda e: e * 3), {"embedding-norm"}, False, "fixed"),
    "attribute embeddings of another model": (other_model_embeddings, {"model-mixed"}, False, "fixed"),
    "regions of another model": (regions_of_another_model, {"model-mixed"}, False, {"model-mixed"}),
    "no model record": (lambda s, m: sql(s, "DELETE FROM store_model"), {"store-model", "attributes-unencoded"}, True,
                        "fixed"),
    "dropped view": (lambda s, m: sql(s, "DROP VIEW top_attributes"), {"views"}, False, "fixed"),
}


def test_healthy_store_has_no_problem(healthy):
    with Catalog(healthy, read_only=True) as cat:
        assert verify(cat) == []
        assert quick_check(cat) == []
        counts = cat.query("SELECT table_name, count(*), sum(rows) FROM shards WHERE state = 'live' GROUP BY ALL "
                           "ORDER BY ALL").fetchall()
        assert counts == [("images", 3, 8), ("regions", 3, 8 * 4)]  # 8 images in pairs of 3, full view + 3 crops


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_found_refused_and_repaired(case, healthy, tmp_path, tiny_model):
    damage, expected, blocks, after = CASES[case]
    store = copy_store(healthy, tmp_path / "s")
    damage(store, tiny_model)
    before = {p: p.stat().st_size for p in store.rglob("*.parquet")}

    with Catalog(store, read_only=True) as cat:
        found = verify(cat)
        assert expected <= checks(found), [p.line() for p in found]
        assert all("\n" not in p.line() for p in found)
        if blocks:
            with pytest.raises(StoreError, match="pipeline verify"):
                require_usable(cat, "classify")
        else:
            require_usable(cat, "classify")

    with Catalog(store) as cat:  # a write-open settles interrupted writes only: damage stays
        for p, size in before.items():
            if case != "stray staged file":
                assert p.exists(), f"{p} vanished on opening the store"
        report = repair(cat, reencode=after == "reencode")
        if after == "reencode":
            assert report.reencode_needed
            encode_attributes(cat, tiny_model, progress=False)
        left = verify(cat)
        if isinstance(after, set):
            assert checks(left) == after, [p.line() for p in left]
        else:
            assert left == [], [p.line() for p in left]
            require_usable(cat, "classify")
    quarantined = list((store / "quarantine").rglob("*")) if (store / "quarantine").exists() else []
    for p in before:  # a shard that left the store was moved, never deleted
        if not p.exists():
            assert any(q.name.startswith(p.name) for q in quarantined), p


def test_repair_without_reencode_leaves_missing_embeddings_reported(healthy, tmp_path):
    store = copy_store(healthy, tmp_path / "s")
    sql(store, "DELETE FROM attribute_embeddings WHERE attr_id % 2 = 0")
    with Catalog(store) as cat:
        report = repair(cat)
        assert report.reencode_needed
        left = verify(cat)
        n_missing = cat.query("SELECT count(*) FROM attributes WHERE attr_id % 2 = 0").fetchone()[0]
    assert checks(left) == {"attributes-unencoded"}
    assert f"{n_missing} of 8 attributes have no embedding" in left[0].message


def test_lost_shard_is_never_cleaned_up_by_deleting_its_partner(healthy, tmp_path):
    """Images shard lost: the next write-mode open keeps its regions partner (it has a record)."""
    store = copy_store(healthy, tmp_path / "s")
    img = shard(store, "images", 1)
    partner = store / "regions" / img.name
    img.unlink()
    for _ in range(2):
        Catalog(store).close()
    assert partner.exists()
    with Catalog(store) as cat:
        assert cat.query("SELECT count(*) FROM regions WHERE image_id NOT IN (SELECT image_id FROM images)").fetchone()[0] > 0
        lines = [p.line() for p in verify(cat)]
        assert any(line.startswith(f"shard-missing: images/{img.name}") for line in lines), lines
        repair(cat)
        assert verify(cat) == []
        state = dict(cat.query("SELECT table_name, state FROM shards WHERE name = ?", [img.name]).fetchall())
    assert state == {"images": "lost", "regions": "quarantined"}
    assert (store / "quarantine" / "regions" / img.name).exists()


def test_interrupted_write_without_record_is_still_removed(healthy, tmp_path):
    """A regions shard with neither images partner nor record (the protocol before records
    wrote regions first) is an interrupted write: removed on the next write-mode open."""
    store = copy_store(healthy, tmp_path / "s")
    src = shard(store, "regions", 0)
    orphan = store / "regions" / "part-000050-00000.parquet"
    shutil.copy(src, orphan)
    Catalog(store).close()
    assert not orphan.exists() and src.exists()


def test_old_store_without_records_is_verified_and_backfilled(healthy, tmp_path):
    """A store written before m009: quick check passes (its shards are legacy), the full check
    reports each unrecorded shard, and --repair records them with their true rows and hashes."""
    store = copy_store(healthy, tmp_path / "s")
    with Catalog(store) as cat:
        expect = {(t, n): (r, b, h) for n, t, r, b, h in cat.query("SELECT name, table_name, rows, bytes, sha256 FROM shards "
                                                                  "WHERE state = 'live'").fetchall()}
        cat.query("DROP TABLE shards")
        cat.query("DELETE FROM _migrations WHERE name = 'm009_shard_records'")
        cat.query("DELETE FROM meta WHERE key = 'legacy_shards'")
    with Catalog(store) as cat:  # migrates: records begin here
        assert quick_check(cat) == []
        found = verify(cat)
        assert checks(found) == {"shard-unrecorded"} and len(found) == 6
        repair(cat, found)
        assert verify(cat) == []
        got = {(t, n): (r, b, h) for n, t, r, b, h in cat.query("SELECT name, table_name, rows, bytes, sha256 FROM shards "
                                                               "WHERE state = 'live'").fetchall()}
    assert got == expect


def test_damaged_catalog_is_one_line_naming_verify(healthy, tmp_path):
    store = copy_store(healthy, tmp_path / "s")
    truncate(store / "catalog.duckdb", 0.3)
    for ro in (True, False):
        with pytest.raises(StoreError, match=r"catalog.duckdb.*pipeline verify"):
            Catalog(store, read_only=ro)
    (store / "catalog.duckdb").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=r"damaged.*pipeline verify"):
        Catalog(store, read_only=True)


def test_damaged_readers_raise_one_line_store_errors(healthy, tmp_path):
    from stores.faiss_index import read_index
    from stores.parquet import read_tables

    store = copy_store(healthy, tmp_path / "s")
    bad = shard(store, "regions", 1)
    truncate(bad)
    with pytest.raises(StoreError, match=rf"{bad.name}: unreadable Parquet shard .*pipeline verify"):
        read_tables(sorted((store / "regions").glob("*.parquet")))
    (store / "faiss" / "images.index").write_bytes(b"garbage!" * 64)
    with pytest.raises(StoreError, match=r"images.index: .*pipeline verify"):
        read_index(store / "faiss" / "images.index")
    (store / "faiss" / "attributes.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"attributes.json: unreadable Faiss sidecar"):
        read_index(store / "faiss" / "attributes.index")
    # a damaged shard is left out of the views: the rest of the store stays queryable
    with Catalog(store, read_only=True) as cat:
        assert cat.unreadable_shards == [bad]
        n = cat.query("SELECT count(*) FROM images").fetchone()[0]
        assert n == 8
        assert cat.query("SELECT count(DISTINCT image_id) FROM regions").fetchone()[0] == 8 - 3


def test_quick_check_is_cheap(healthy):
    import time

    with Catalog(healthy, read_only=True) as cat:
        quick_check(cat)
        t0 = time.perf_counter()
        for _ in range(5):
            quick_check(cat)
        per = (time.perf_counter() - t0) / 5
    assert per < 0.5, per  # milliseconds in practice; generous for a loaded CI machine


def test_stage_tolerates_what_it_completes(healthy, tmp_path):
    """build-attributes runs on a half-encoded store (it finishes the encoding); classify refuses."""
    store = copy_store(healthy, tmp_path / "s")
    sql(store, "DELETE FROM attribute_embeddings WHERE attr_id % 3 = 0")
    with Catalog(store, read_only=True) as cat:
        require_usable(cat, "build-attributes")
        with pytest.raises(StoreError, match=r"classify refused: attributes-unencoded: .*pipeline verify"):
            require_usable(cat, "classify")


def test_a_regions_shard_with_other_bytes_is_refused_before_classify_reads_it(healthy, tmp_path):
    """Issue 21: an exponent-bit flip in a regions shard (same size, readable) changed a prediction
    with no warning; the stages that read regions now check each shard's sha256 first."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    store = copy_store(healthy, tmp_path / "s")
    name = shard(store, "regions").name

    def flip_exponent(e):
        e[0, 0] *= 2.0 ** 8  # one component's exponent changed: still finite, still a float
        return e

    rewrite_shard(store, "regions", name, lambda t: set_embeddings(t, flip_exponent), update_record=False)
    sql(store, "UPDATE shards SET bytes = ? WHERE table_name = 'regions' AND name = ?",
        params=[(store / "regions" / name).stat().st_size, name])  # same size as recorded: only the checksum differs
    with Catalog(store, read_only=True) as cat:
        assert not quick_check(cat)  # the cheap checks (sizes, magic bytes, records) cannot see it
        with pytest.raises(StoreError, match="shard-checksum"):
            require_usable(cat, "classify")
    res = CliRunner().invoke(cli, ["classify", "--method", "clip", "--store", str(store), "-q"])
    assert res.exit_code == 1 and "shard-checksum" in res.output and res.output.count("\n") == 1, res.output
    res = CliRunner().invoke(cli, ["classify", "--method", "clip", "--store", str(copy_store(healthy, tmp_path / "ok")),
                                   "-q", "--limit", "1"])
    assert res.exit_code == 0, res.output  # the control: the same command on the undamaged copy runs
