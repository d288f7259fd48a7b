"""``pipeline verify`` / ``--repair`` / ``remove-images`` and the stages' refusal, through the CLI."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from stores import files
from stores.catalog import Catalog
from tests.helpers.damage import build_small_store, copy_store, shard


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model):
    return build_small_store(tmp_path_factory.mktemp("cli"), tiny_model)


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert "Traceback" not in res.output
    return res


def test_verify_clean_store(base):
    res = invoke("verify", "--store", base)
    assert res.exit_code == 0 and res.stdout == ""
    assert "store OK: 8 images in 6 shards, 8 attributes" in res.stderr


def test_verify_reports_each_problem_on_one_line_in_every_format(base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    bad = shard(store, "regions", 1)
    os.truncate(bad, bad.stat().st_size // 2)
    (store / "faiss" / "images.index").unlink()
    res = invoke("verify", "--store", store, "--format", "jsonl")
    assert res.exit_code == 1
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert {(r["check"], r["where"]) for r in recs} == {("shard-unreadable", f"regions/{bad.name}"),
                                                        ("index-missing", "faiss/images.index")}
    assert all(r["repair"] == "--repair" for r in recs)
    assert "2 problems" in res.stderr and "--repair` fixes 2" in res.stderr
    table = invoke("verify", "--store", store).stdout.splitlines()
    assert len(table) == 2 + 2 + 1  # header, rule, one line per problem, row count
    assert json.loads(invoke("verify", "--store", store, "--format", "json").stdout) == recs
    assert invoke("verify", "--quick", "--store", store).exit_code == 1

    res = invoke("verify", "--repair", "--store", store, "--format", "csv")
    assert res.exit_code == 0, res.output
    assert f"regions/{bad.name},moved to quarantine/regions/{bad.name}" in res.stdout
    assert (store / "quarantine" / "regions" / bad.name).exists() and not bad.exists()
    assert invoke("verify", "--store", store).exit_code == 0


def test_stages_refuse_a_store_with_a_known_problem(base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    with Catalog(store) as cat:
        cat.query("DELETE FROM attribute_embeddings WHERE attr_id % 2 = 1")
    for args in (["classify", "--method", "lazsl"], ["evaluate"], ["report", "-o", tmp_path / "r.html"],
                 ["explain", "1", "-o", tmp_path / "maps"], ["index-images", base.parent / "imgs", "--workers", "0"]):
        res = invoke(*args, "--store", store)
        assert res.exit_code == 1, args
        line = res.stderr.strip()
        assert "\n" not in line and "refused: attributes-unencoded" in line and "pipeline verify" in line, line
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "maps").exists()
    res = invoke("verify", "--repair", "--reencode", "--store", store)  # the store's model encodes them again
    assert res.exit_code == 0, res.output
    assert invoke("classify", "--method", "lazsl", "--top-k", "2", "--store", store).exit_code == 0


def test_damaged_files_give_one_line_errors_and_the_rest_stays_queryable(base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    bad = shard(store, "images", 0)
    os.truncate(bad, 100)
    res = invoke("sql", "select count(*) as n from classes", "--format", "json", "--store", store)
    assert res.exit_code == 0 and json.loads(res.stdout) == [{"n": 3}]
    assert invoke("catalog", "status", "--store", store).exit_code == 0
    res = invoke("classify", "--method", "lazsl", "--store", store)
    assert res.exit_code == 1 and f"shard-unreadable: images/{bad.name}" in res.stderr
    (store / "catalog.duckdb").write_bytes(b"\0" * 5000)
    for args in (["sql", "select 1"], ["catalog", "status"], ["classify"]):
        res = invoke(*args, "--store", store)
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1 and "pipeline verify" in res.stderr, args
    res = invoke("verify", "--store", store)
    assert res.exit_code == 1 and res.stdout.splitlines()[2].startswith("catalog  catalog.duckdb")


def test_remove_images_asks_for_yes(base, tmp_path):
    store = copy_store(base, tmp_path / "s")
    digest = {p: files.file_sha256(p) for p in store.rglob("*.parquet")}
    res = invoke("remove-images", "--label", "dog", "--store", store, "--format", "csv")
    assert res.exit_code == 0 and "would remove 4 images from 2 shard pairs" in res.stderr
    assert len(res.stdout.splitlines()) == 1 + 4
    assert {p: files.file_sha256(p) for p in digest} == digest
    res = invoke("remove-images", "--label", "dog", "--yes", "--store", store)
    assert res.exit_code == 0 and "removed 4 images (16 regions) from 2 shard pairs" in res.stderr
    out = invoke("sql", "select count(*) as n from images where label = 'dog'", "--format", "csv", "--store", store).stdout
    assert out.splitlines() == ["n", "0"]
    assert invoke("verify", "--store", store).exit_code == 0
    res = invoke("remove-images", "--store", store)
    assert res.exit_code == 2 and "--label" in res.stderr
