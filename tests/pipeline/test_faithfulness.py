"""Deletion/insertion and the pointing game: the metric's pieces, a sanity test of the metric
itself, the stored tables and the CLI."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from tests.helpers.stores import build_truth_store

from pipeline.cli import cli
from pipeline.toy.shapes import _COLOURS
from pipeline.explain.faithfulness import KINDS, faithfulness, read_boxes
from queries.attribution import pointing_game
from queries.perturb import curve_auc, perturbation_series, pixel_order, step_counts
from stores.catalog import Catalog


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    return build_truth_store(tmp_path_factory.mktemp("faith"), tiny_model, per_class=2, n_crops=30, crop_min=0.5)


# ---- the pieces -------------------------------------------------------------------------
def test_auc_and_perturbation_series():
    assert curve_auc([0, 0.5, 1], [1, 1, 1]) == pytest.approx(1.0)
    assert curve_auc([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5)
    assert curve_auc(*step_counts(100, 4)[:1], [1, 0, 0, 0, 0]) == pytest.approx(0.125)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)
    base = np.zeros_like(img)
    sal = rng.random((6, 7))
    order = pixel_order(sal, rng)
    dele = perturbation_series(img, base, order, 3, "deletion")
    ins = perturbation_series(img, base, order, 3, "insertion")
    assert np.array_equal(dele[0], img) and np.array_equal(dele[-1], base)
    assert np.array_equal(ins[0], base) and np.array_equal(ins[-1], img)
    # after step 1 the most salient third (14 of 42 pixels) is gone / revealed, nothing else
    gone = np.any(dele[1] != img, axis=-1) | np.all(img == 0, axis=-1)
    top = sal >= np.sort(sal.ravel())[-14]
    assert np.array_equal(np.any(dele[1] != img, axis=-1), top & np.any(img != 0, axis=-1)) and gone[top].all()
    assert np.array_equal(np.any(ins[1] != base, axis=-1), top & np.any(img != 0, axis=-1))


def test_ties_are_broken_at_random_not_in_raster_order():
    flat = np.zeros((20, 20))
    first = pixel_order(flat, np.random.default_rng(0))[:100]
    rows = first // 20
    assert rows.min() < 5 and rows.max() > 15  # spread over the image, not the top rows


def test_pointing_game():
    m = np.zeros((10, 10))
    m[2:4, 6:8] = 1.0  # a plateau
    assert pointing_game(m, (6, 2, 8, 4)).hit and pointing_game(m, (6, 2, 8, 4)).energy_inside == 1.0
    r = pointing_game(m, (0, 0, 3, 3))
    assert not r.hit and r.x == pytest.approx(7.0) and r.y == pytest.approx(3.0)
    assert pointing_game(m, (0, 0, 5, 3), tolerance=1.0).hit is False  # grown to x <= 6: no plateau centre
    assert pointing_game(m, (0, 0, 6, 3), tolerance=1.5).hit  # grown box reaches the plateau
    assert pointing_game(np.ones((4, 4)), (0, 0, 1, 1)) is None  # a flat map points nowhere


def test_read_boxes_accepts_the_toy_world_shape_and_json(tmp_path):
    (tmp_path / "w").mkdir()
    jl = tmp_path / "w" / "boxes.jsonl"
    jl.write_text(json.dumps({"image": "images/a/0000.png", "class": "a", "part": "crest", "attribute": "a red crest",
                              "x0": 1, "y0": 2, "x1": 3, "y1": 4}) + "\n\n")
    rows = read_boxes(jl)
    assert rows == [dict(image=str((tmp_path / "w" / "images/a/0000.png").resolve()), cls="a", attribute="a red crest",
                         box=[1.0, 2.0, 3.0, 4.0])]
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"boxes": [{"path": "/x/y.png", "bbox": [0, 0, 5, 5]}]}))
    assert read_boxes(js) == [dict(image="/x/y.png", cls=None, attribute=None, box=[0.0, 0.0, 5.0, 5.0])]
    from pipeline.errors import InputError

    js.write_text(json.dumps([{"image": "a.png", "x0": 1}]))
    with pytest.raises(InputError, match="no box"):
        read_boxes(js)


# ---- a sanity test of the metric itself -------------------------------------------------
def object_scorer(store):
    """A stand-in "model" that looks only at the object: the share of the image's object-coloured
    pixels still present. The store's alignments were built from the same objects (the colour
    attribute's similarity grows with the object inside each crop), so maps that follow the
    alignments point at the evidence this scorer uses, and random maps do not."""
    truth = {im.image_id: im for im in store.images}

    def score(batch, target):
        im = truth[target.image_id]
        colour = np.array(_COLOURS[im.label.split()[0]])
        near = np.abs(batch.astype(int) - colour).sum(-1) < 40
        return near.mean(axis=(1, 2)) / max(near[0].mean(), near[-1].mean(), 1e-9)

    return score


def test_deletion_auc_of_maps_is_below_random_maps(store):
    """Deletion removes the object first when the map is right: the score falls faster than with
    a random map of the same regions; insertion reveals it first: the score rises faster.
    (The pixel order, box geometry and x/y orientation all have to be right for this to hold.)"""
    with Catalog(store.root) as cat:
        rep = faithfulness(cat, None, steps=10, scorer=object_scorer(store), n_random=2, seed=0, progress=False)
        fid = rep.faith_run_id
        a = {k: np.array(v) for k, v in rep.aucs.items()}
        assert rep.images == len(store.images) == 8
        assert a["deletion"].mean() < a["random_deletion"].mean() - 0.05
        assert a["insertion"].mean() > a["random_insertion"].mean() + 0.05
        assert np.mean(a["deletion"] < a["random_deletion"]) >= 0.75
        # a map pointing away from the evidence must do worse than random: flip the alignments
        cat.query("UPDATE alignments SET similarity = -similarity WHERE run_id = ?", [store.run_id])
        try:
            flipped = faithfulness(cat, None, steps=10, scorer=object_scorer(store), n_random=2, seed=0, progress=False)
        finally:
            cat.query("UPDATE alignments SET similarity = -similarity WHERE run_id = ?", [store.run_id])
        assert np.mean(flipped.aucs["deletion"]) > np.mean(flipped.aucs["random_deletion"])
        # stored: one curve per kind of steps+1 points, one AUC per kind, per image
        n = cat.query("SELECT count(*) FROM faithfulness_curves WHERE faith_run_id = ?", [fid]).fetchone()[0]
        assert n == 8 * len(KINDS) * 11
        stored = dict(cat.query("SELECT kind, avg(auc) FROM faithfulness_scores WHERE faith_run_id = ? GROUP BY kind", [fid]).fetchall())
        assert stored["deletion"] == pytest.approx(a["deletion"].mean())
        # the AUC is the trapezoid of the stored curve
        x, y = cat.query("SELECT list(fraction ORDER BY step), list(score ORDER BY step) FROM faithfulness_curves "
                         "WHERE faith_run_id = ? AND kind = 'deletion' GROUP BY image_id ORDER BY image_id LIMIT 1", [fid]).fetchone()
        first = cat.query("SELECT auc FROM faithfulness_scores WHERE faith_run_id = ? AND kind = 'deletion' ORDER BY image_id LIMIT 1",
                          [fid]).fetchone()[0]
        assert curve_auc(x, y) == pytest.approx(first)


def test_faithfulness_with_the_model_stores_everything(store, tiny_model):
    """The real path: perturbed images re-encoded by the model, global DCLIP score, softmax."""
    with Catalog(store.root) as cat:
        rep = faithfulness(cat, tiny_model, steps=4, limit=2, baseline="mean", progress=False)
        fid = rep.faith_run_id
        params = json.loads(cat.query("SELECT params FROM faithfulness_runs WHERE faith_run_id = ?", [fid]).fetchone()[0])
        assert params["scorer"] == "global-dclip-softmax" and params["baseline"] == "mean" and params["steps"] == 4
        curves = cat.query("SELECT image_id, kind, list(score ORDER BY step) FROM faithfulness_curves WHERE faith_run_id = ? "
                           "GROUP BY ALL", [fid]).fetchall()
        assert len(curves) == 2 * 4
        by = {(i, k): np.array(s) for i, k, s in curves}
        for iid in {i for i, _ in by}:
            d, ins = by[(iid, "deletion")], by[(iid, "insertion")]
            assert np.all((d > 0) & (d <= 1))
            # the unperturbed image ends insertion and starts deletion; the baseline the other way
            assert d[0] == pytest.approx(ins[-1], abs=1e-5) and d[-1] == pytest.approx(ins[0], abs=1e-5)
            assert by[(iid, "random_deletion")][0] == pytest.approx(d[0], abs=1e-5)
        # same seed, same random maps
        again = faithfulness(cat, tiny_model, steps=4, limit=2, baseline="mean", progress=False)
        assert again.aucs["random_deletion"] == pytest.approx(rep.aucs["random_deletion"], abs=1e-6)
        # the LaZSL re-scorer (every crop re-encoded) runs too
        lz = faithfulness(cat, tiny_model, steps=2, limit=1, rescore="lazsl", progress=False)
        assert lz.params["scorer"] == "lazsl-softmax" and len(lz.aucs["deletion"]) == 1


def test_pointing_game_and_cli(store, tmp_path):
    """Boxes in the toy world's boxes.jsonl shape; the CLI prints the summary table."""
    boxes = tmp_path / "boxes.jsonl"
    with open(boxes, "w") as f:
        for im in store.images:
            x0, y0, x1, y1 = im.bbox
            colour = im.label.split()[0] + " colour"
            f.write(json.dumps({"image": im.path, "class": im.label, "part": "body", "attribute": colour,
                                "x0": x0, "y0": y0, "x1": x1, "y1": y1}) + "\n")
        f.write(json.dumps({"image": store.images[0].path, "class": store.images[0].label, "attribute": "wings",
                            "x0": 0, "y0": 0, "x1": 5, "y1": 5}) + "\n")  # not an attribute of that class
        f.write(json.dumps({"image": "elsewhere/nope.png", "x0": 0, "y0": 0, "x1": 5, "y1": 5}) + "\n")
    r = CliRunner().invoke(cli, ["faithfulness", "--store", str(store.root), "--steps", "2", "--max-images", "2",
                                 "--maps", "crop-boxes", "--scorer", "dclip", "--boxes", str(boxes),
                                 "--plot", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert re.search(r"^  crop-boxes +2 ", r.output, re.M) and re.search(r"^  random-crop-boxes +2 ", r.output, re.M)
    assert "nope.png: not indexed" in r.output and "scorer dclip-global-softmax" in r.output
    with Catalog(store.root, read_only=True) as cat:
        fid = cat.query("SELECT max(faith_run_id) FROM faithfulness_runs").fetchone()[0]
        scored = {i for (i,) in cat.query("SELECT DISTINCT image_id FROM faithfulness_scores WHERE faith_run_id = ?",
                                          [fid]).fetchall()}
        rows = cat.query("SELECT image_id, map_kind, attribute, hit, energy_inside, x, y, x0, y0, x1, y1 FROM pointing_game "
                         "WHERE faith_run_id = ?", [fid]).fetchall()
        # --max-images caps every metric: pointing ran on exactly the images deletion/insertion measured
        assert len(scored) == 2 and {r_[0] for r_ in rows} == scored
        assert sorted(r_[1] for r_ in rows) == ["crop-boxes"] * 2 + ["random-crop-boxes"] * 2
        # the colour attribute's map is built from the object, so its energy on the object box beats the box's area share
        mine = [r_ for r_ in rows if r_[1] == "crop-boxes"]
        lift = [e / ((x1 - x0) * (y1 - y0) / 128**2) for _, _, _, _, e, _, _, x0, y0, x1, y1 in mine]
        assert np.mean(lift) > 1.0
        assert all(0 <= x <= 128 and 0 <= y <= 128 for *_, x, y, _a, _b, _c, _d in mine)
    r = CliRunner().invoke(cli, ["faithfulness", "--store", str(store.root), "--steps", "0"])
    assert r.exit_code == 2 and "--steps" in r.output and "must be >= 1 and <=" in r.output and len(r.output.strip().splitlines()) == 1
