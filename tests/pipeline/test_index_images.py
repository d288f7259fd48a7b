import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.errors import InputError
from pipeline.imaging import discover_images
from pipeline.stages.index_images import index_images
from stores.shards import content_id
from pipeline.config import RegionConfig
from queries.regions import random_square_crops, region_boxes
from stores.catalog import Catalog
from stores.faiss_index import index_vectors, read_index


def test_crop_boxes_follow_the_reference_rule():
    rng = np.random.default_rng(0)
    b = random_square_crops(200, 100, 500, 0.5, 0.9, rng)
    side = b[:, 2] - b[:, 0]
    assert np.all(side == b[:, 3] - b[:, 1])  # square
    assert side.min() >= 50 and side.max() <= 90  # U(0.5, 0.9)·min(H, W)
    assert b[:, 0].min() >= 0 and b[:, 1].min() >= 0 and b[:, 2].max() <= 200 and b[:, 3].max() <= 100
    # seeded per image: same content hash -> same boxes, other hash -> other boxes
    k1, b1 = region_boxes(200, 100, "ab" * 32, **RegionConfig(n_crops=10).geometry())
    _, b2 = region_boxes(200, 100, "ab" * 32, **RegionConfig(n_crops=10).geometry())
    _, b3 = region_boxes(200, 100, "cd" * 32, **RegionConfig(n_crops=10).geometry())
    assert k1[0] == "full" and k1[1:] == ["crop"] * 10
    assert np.array_equal(b1, b2) and not np.array_equal(b1, b3)
    assert list(b1[0]) == [0, 0, 200, 100]


def test_index_folder_writes_regions_and_images(tmp_path, tiny_model, image_folder):
    with Catalog(tmp_path / "s") as cat:
        rep = index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=5, crop_min=0.5), progress=False, dtype="float32")
        assert (rep.indexed, rep.failed, rep.regions) == (6, 0, 36)
        imgs = cat.query("select path, label, width, height, sha256, image_id from images order by path").fetchall()
        assert [r[1] for r in imgs] == ["cat"] * 3 + ["dog"] * 3
        assert imgs[1][2:4] == (104, 80)
        assert all(r[5] == content_id(r[4]) for r in imgs)
        kinds = cat.query("select kind, count(*) from regions group by kind order by kind").fetchall()
        assert kinds == [("crop", 30), ("full", 6)]
        # the stored full-image embedding equals encoding the preprocessed image directly
        path, iid = imgs[0][0], imgs[0][5]
        emb = np.array(cat.query("select embedding from regions where image_id = ? and kind = 'full'", [iid]).fetchone()[0], np.float32)
        ref = tiny_model.encode_images(tiny_model.preprocess(Image.open(path).convert("RGB")).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(emb, ref, atol=1e-5)
        # and a crop's embedding equals encoding that box of the image
        x0, y0, x1, y1, cemb = cat.query(
            "select x0, y0, x1, y1, embedding from regions where image_id = ? and kind = 'crop' order by region_id limit 1", [iid]
        ).fetchone()
        crop = Image.open(path).convert("RGB").crop((int(x0), int(y0), int(x1), int(y1)))
        ref = tiny_model.encode_images(tiny_model.preprocess(crop).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(np.array(cemb, np.float32), ref, atol=1e-5)
        ids, _ = index_vectors(read_index(cat.root / "faiss" / "images.index")[0])
        assert sorted(ids.tolist()) == sorted(r[5] for r in imgs)
        # re-indexing the same files is a no-op
        rep2 = index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=5), progress=False)
        assert (rep2.indexed, rep2.skipped) == (0, 6)
        assert cat.query("select count(*) from regions").fetchone()[0] == 36


def test_float16_storage_halves_bytes(tmp_path, tiny_model, image_folder):
    sizes = {}
    for dt in ("float16", "float32"):
        with Catalog(tmp_path / dt) as cat:
            index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=5), progress=False, dtype=dt)
            f = cat.shard_files("regions")[0]
            sizes[dt] = pq.ParquetFile(f).schema_arrow.field("embedding").type.value_type
    assert str(sizes["float16"]) == "halffloat" and str(sizes["float32"]) == "float"


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        discover_images([str(tmp_path / "missing")])
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        discover_images([str(txt)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No images"):
        discover_images([str(tmp_path / "empty")])


def test_manifest_csv(tmp_path, image_folder):
    m = tmp_path / "m.csv"
    m.write_text("path,label\n" + "\n".join(f"{p},{p.parent.name}-x" for p in sorted(image_folder.rglob("*.png"))))
    items = discover_images([str(m)])
    assert len(items) == 4 and items[0].label == "cat-x"


def test_same_content_under_another_label_is_reported(tmp_path, tiny_model, image_folder):
    """The same bytes as a cat (in this run, and in a later run) under the label dog: indexed once,
    under its first label, and each such file is named in the report with both labels."""
    import shutil
    from pathlib import Path

    cats = sorted((image_folder / "cat").iterdir())
    extra = tmp_path / "more" / "dog"
    extra.mkdir(parents=True)
    shutil.copy(cats[0], extra / "copy0.png")
    with Catalog(tmp_path / "s") as cat:
        rep = index_images(cat, tiny_model, [str(image_folder), str(tmp_path / "more")], RegionConfig(n_crops=2),
                           progress=False)
        assert (rep.indexed, rep.skipped) == (6, 1)
        [(path, label, kept_path, kept_label)] = rep.label_conflicts
        assert (Path(path).name, label, Path(kept_path).name, kept_label) == ("copy0.png", "dog", cats[0].name, "cat")
        assert any("(label dog)" in ln and "(kept as cat)" in ln for ln in rep.lines())
        shutil.copy(cats[1], extra / "copy1.png")  # a later run: the content is already in the store
        rep2 = index_images(cat, tiny_model, [str(tmp_path / "more")], RegionConfig(n_crops=2), progress=False)
        assert (rep2.indexed, rep2.skipped) == (0, 2)
        assert sorted((c[1], c[3], c[0].endswith(n)) for c, n in zip(rep2.label_conflicts, ["copy0.png", "copy1.png"])) \
            == [("dog", "cat", True), ("dog", "cat", True)]
        # the same content under the same label is not a conflict
        rep3 = index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=2), progress=False)
        assert rep3.skipped == 6 and rep3.label_conflicts == []
        labels = dict(cat.query("select path, label from images").fetchall())
        assert all(label == ("cat" if "/cat/" in p else "dog") for p, label in labels.items()) and len(labels) == 6


@pytest.mark.parametrize("dense,layers", [("sclip", (-1, -2)), ("plain", (-2,)), ("maskclip", ())])
def test_dense_patch_regions_are_the_dense_tokens_and_travel_with_the_run(tmp_path, tiny_model, image_folder, dense, layers):
    """--regions patches --dense V --layers L: each patch row is the normalised mean of the token
    sets dense_feature_sets gives for that spec (recomputed here from the preprocessed image), and
    the variant and layers are stored in index_runs.params."""
    from pipeline.dense import dense_feature_sets
    from stores import tables

    cfg = RegionConfig(source="patches", dense=dense, layers=layers)
    with Catalog(tmp_path / "s") as cat:
        index_images(cat, tiny_model, [str(image_folder)], cfg, progress=False, dtype="float32")
        path, iid = cat.query("select path, image_id from images order by path limit 1").fetchone()
        rows = cat.query("select kind, embedding from regions where image_id = ? order by y0, x0, kind", [iid]).fetchall()
        params = tables.index_run_params(cat)
    pixels = tiny_model.preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
    specs = ([{"variant": "layers", "layers": list(layers)}] if dense == "plain"
             else [{"variant": dense, "block": b} for b in (layers or (-1,))])
    sets, pooled, grid = dense_feature_sets(tiny_model, pixels, specs)
    ref = torch.nn.functional.normalize(torch.stack(sets).mean(0), dim=-1)[0].numpy()
    got = np.array([r[1] for r in rows if r[0] == "patch"], np.float32)
    assert got.shape == (grid[0] * grid[1], ref.shape[1])
    np.testing.assert_allclose(got, ref, atol=2e-5)
    full = np.array([r[1] for r in rows if r[0] == "full"][0], np.float32)
    np.testing.assert_allclose(full, pooled[0].numpy(), atol=2e-5)
    assert [(p["regions"]["dense"], p["regions"]["layers"]) for p in params] == [(dense, list(layers))]


def test_dense_options_refused_off_patches(tmp_path, tiny_model, image_folder):
    with pytest.raises(InputError, match="--regions patches"):
        RegionConfig(source="crops", dense="sclip")
    with pytest.raises(InputError, match="--layers"):
        RegionConfig(source="patches", layers=(-1, -1))
    with Catalog(tmp_path / "s") as cat, pytest.raises(InputError, match="--layers 9: layer 9 is out of range for a tower of 4 blocks"):
        index_images(cat, tiny_model, [str(image_folder)], RegionConfig(source="patches", dense="sclip", layers=(9,)),
                     progress=False)
