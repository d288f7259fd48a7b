"""The scale options on the command line: one line for every mistake, nothing left behind."""
from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import cli

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0", "--device", "cpu"]


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in res.output
    return res


def one_line_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.mark.parametrize("command", ["index-images", "classify"])
def test_engine_ray_without_ray_says_how_to_install(command, tmp_path, image_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    store = tmp_path / "s"
    args = [command, *([image_folder] if command == "index-images" else []), "--store", store, *MODEL, "--engine", "ray"]
    line = one_line_error(invoke(*args))
    assert "pip install 'zsl-pipeline[ray]'" in line
    assert not store.exists()  # refused before the store was created


def test_ray_settings_need_engine_ray(tmp_path, image_folder):
    res = invoke("index-images", image_folder, "--store", tmp_path / "s", *MODEL, "--address", "auto")
    assert res.exit_code == 2 and "--address need --engine ray" in res.stderr
    res = invoke("classify", "--store", tmp_path / "s", "--ray-concurrency", "2")
    assert res.exit_code == 2 and "--ray-concurrency need --engine ray" in res.stderr


def test_bad_factory_string_is_one_line_and_leaves_no_store(tmp_path, image_folder):
    store = tmp_path / "s"
    line = one_line_error(invoke("index-images", image_folder, "--store", store, *MODEL, "--faiss-index", "NotAnIndex12"))
    assert "NotAnIndex12" in line and "Flat, HNSW32" in line
    assert not store.exists()


def test_factory_needing_more_vectors_than_the_store_will_hold(tmp_path, image_folder):
    store = tmp_path / "s"
    line = one_line_error(invoke("index-images", image_folder, "--store", store, *MODEL, "--n-crops", "4",
                                 "--faiss-index", "IVF64,Flat"))
    assert "2,496" in line and "at most 6 images" in line  # 39 x 64 training vectors
    assert not store.exists()


def test_faiss_index_recorded_and_kept_by_later_runs(tmp_path, image_folder):
    import json

    from stores.catalog import Catalog
    from stores.indexes import index_path
    from stores.faiss_index import read_sidecar

    store = tmp_path / "s"
    first = sorted(image_folder.rglob("0.*"))
    res = invoke("-q", "index-images", *first, "--store", store, *MODEL, "--n-crops", "4", "--faiss-index", "HNSW16")
    assert res.exit_code == 0, res.output
    res = invoke("-q", "index-images", image_folder, "--store", store, *MODEL, "--n-crops", "4")  # no --faiss-index
    assert res.exit_code == 0, res.output
    assert "4 images indexed" in res.stdout and "2 already in the store" in res.stdout
    with Catalog(store, read_only=True) as cat:
        for which, n in (("images", 6), ("regions", 24)):
            side = read_sidecar(index_path(cat, which))
            assert (side["factory"], side["ntotal"]) == ("HNSW16", n)
        params = [json.loads(r[0]) for r in cat.query("select params from index_runs order by 1").fetchall()]
        assert [p["faiss_index"] for p in params] == ["HNSW16", None]
    assert invoke("verify", "--store", store).exit_code == 0
