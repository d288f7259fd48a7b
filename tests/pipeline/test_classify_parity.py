"""classify on real images: stored scores equal plain loops over the stored embeddings."""
import numpy as np
import pytest

from pipeline.stages.attributes import import_attribute_file
from pipeline.stages.methods import MethodConfig
from pipeline.stages.classify import classify
from pipeline.stages.index_images import index_images
from pipeline.config import RegionConfig
from stores.catalog import Catalog
from tests.helpers.reference import lazsl_pair


@pytest.fixture
def store(tmp_path, tiny_model, image_folder, attr_file):
    cat = Catalog(tmp_path / "s")
    import_attribute_file(cat, tiny_model, attr_file, progress=False)
    index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=12, crop_min=0.4), progress=False, dtype="float32")
    yield cat
    cat.close()


def _embeddings(cat):
    regions = {}
    for iid, kind, emb in cat.query("select image_id, kind, embedding from regions order by image_id, kind = 'crop', region_id").fetchall():
        regions.setdefault(iid, []).append(np.array(emb, np.float64))
    attrs = {}
    for cid, emb in cat.query(
        "select a.class_id, e.embedding from attributes a join attribute_embeddings e using (attr_id) "
        "where a.style = 'descriptors' order by attr_id"
    ).fetchall():
        attrs.setdefault(cid, []).append(np.array(emb, np.float64))
    return {k: np.stack(v) for k, v in regions.items()}, {k: np.stack(v) for k, v in attrs.items()}


def _stored(cat, run_id):
    return {(i, c): s for i, c, s in cat.query("select image_id, class_id, score from predictions where run_id = ?", [run_id]).fetchall()}


def test_dclip_matches_loop(store):
    run = classify(store, "dclip", MethodConfig(top_k=0), progress=False)
    regions, attrs = _embeddings(store)
    stored = _stored(store, run.run_id)
    for iid, r in regions.items():
        for cid, a in attrs.items():
            assert abs(stored[(iid, cid)] - float(np.mean(a @ r[0]))) < 1e-5


def test_lazsl_matches_loop_on_real_images(store):
    run = classify(store, "lazsl", MethodConfig(top_k=0), progress=False)
    regions, attrs = _embeddings(store)
    stored = _stored(store, run.run_id)
    for iid, r in regions.items():
        loop = {cid: lazsl_pair(r[0], r[1:], a)["score"] for cid, a in attrs.items()}
        for cid, s in loop.items():
            assert abs(stored[(iid, cid)] - s) < 1e-4
        top = store.query("select class_id from predictions where run_id = ? and image_id = ? and rank = 1", [run.run_id, iid]).fetchone()[0]
        assert top == max(loop, key=loop.get)


def test_clip_and_cupl_match_loop(store, tiny_model):
    regions, _ = _embeddings(store)
    names = dict(store.query("select class_id, name from classes").fetchall())
    run = classify(store, "clip", MethodConfig(top_k=0), model=tiny_model, progress=False)
    stored = _stored(store, run.run_id)
    text = {cid: tiny_model.encode_texts([f"a photo of a {n}."])[0].astype(np.float64) for cid, n in names.items()}
    for iid, r in regions.items():
        for cid, t in text.items():
            assert abs(stored[(iid, cid)] - float(r[0] @ t)) < 1e-5
