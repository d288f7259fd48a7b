"""Attribution maps: the math against a hand loop, and `pipeline explain` on the demo store."""
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tests.helpers.stores import UNUSED, build_truth_store
from PIL import Image

from pipeline.cli import cli
from pipeline.explain.explain import explain_image, load_image
from queries.regions import patch_boxes, random_square_crops
from queries.attribution import (
    Alignment,
    attribution_map,
    class_weights,
    coverage_count,
    shares,
    tipping_attribute,
    tipping_margins,
)
from stores.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]  # the repository


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_model):
    """The demo world (shapes), indexed as `pipeline demo` does (30 crops, crop-min 0.5)."""
    return build_truth_store(tmp_path_factory.mktemp("demo"), tiny_model, per_class=2, n_crops=30, crop_min=0.5)


# ---- the math ---------------------------------------------------------------------------
def hand_map(boxes, weights, h, w, prior):
    """The definition, pixel by pixel: centre in (x0, x1] x (y0, y1]."""
    boxes = np.asarray(boxes, float)
    inside = np.zeros((len(boxes), h, w), bool)
    for r, (x0, y0, x1, y1) in enumerate(boxes):
        for y in range(h):
            for x in range(w):
                inside[r, y, x] = x0 < x + 0.5 <= x1 and y0 < y + 0.5 <= y1
    keep = inside.reshape(len(boxes), -1).any(1)
    inside, wts = inside[keep], np.asarray(weights, float)[keep]
    n = inside.sum(0)
    k = 4 * np.median(n[n > 0]) if prior == "auto" else prior
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            if n[y, x]:
                out[y, x] = (wts[inside[:, y, x]].sum() + k * wts.mean()) / (n[y, x] + k)
    return out


@pytest.mark.parametrize("prior", [0.0, 2.5, "auto"])
def test_attribution_map_matches_hand_loop(prior):
    rng = np.random.default_rng(1)
    h, w = 23, 31
    boxes = np.concatenate([
        rng.uniform(-5, 35, (12, 4)),  # fractional, partly outside, some inverted (empty)
        [[0, 0, 31, 23], [3, 4, 3, 9], [40, 40, 50, 50]],  # the full image, a zero-width box, one fully outside
    ])
    weights = rng.uniform(0, 1, len(boxes))
    got = attribution_map(boxes, weights, h, w, prior=prior)
    np.testing.assert_allclose(got, hand_map(boxes, weights, h, w, prior), rtol=1e-10, atol=1e-12)


def test_uncovered_pixels_are_zero_and_coverage_counts():
    m = attribution_map([[0, 0, 4, 4]], [2.0], 6, 8, prior=0)
    assert np.all(m[:4, :4] == 2.0) and np.all(m[4:, :] == 0) and np.all(m[:, 4:] == 0)
    assert coverage_count([[0, 0, 4, 4], [2, 2, 8, 6]], 6, 8)[3, 3] == 2


def test_uniform_weights_have_no_centre_bias():
    """Random crops cover the centre far more often; the coverage normalisation must cancel it."""
    boxes = random_square_crops(120, 90, 60, 0.4, 0.9, np.random.default_rng(0))
    cover = coverage_count(boxes, 90, 120)
    assert cover[45, 60] > 10 * cover[5, 5] > 0
    for prior in (0, "auto"):
        m = attribution_map(boxes, np.full(len(boxes), 0.3), 90, 120, prior=prior)
        np.testing.assert_allclose(m[cover > 0], 0.3)


def test_patch_grid_map_is_the_grid():
    boxes = patch_boxes(100, 80, 4)  # centre 80x80 square, 20 px cells
    wts = np.arange(16, dtype=float)
    m = attribution_map(boxes, wts, 80, 100)
    assert np.all(m[:, :10] == 0) and np.all(m[:, 90:] == 0)  # outside the centre crop
    cells = m[:, 10:90].reshape(4, 20, 4, 20).transpose(0, 2, 1, 3).reshape(16, -1)
    assert np.all(cells.max(1) == cells.min(1))  # constant per cell, no seams
    assert np.all(np.diff(cells[:, 0]) > 0)  # ordered like the weights
    assert np.unravel_index(m.argmax(), m.shape)[0] >= 60  # the heaviest cell is the last row


def test_class_weights_and_tipping_margins_sum_up():
    rng = np.random.default_rng(3)
    regions = np.arange(100, 106)

    def plan(n_attr, attr0):
        rows = [(r, attr0 + a, 1 / 6 / n_attr * (1 + 0.2 * rng.standard_normal()), rng.uniform(0.1, 0.4))
                for r in regions for a in range(n_attr)]
        return Alignment.from_rows(rows)

    pred, true = plan(3, 10), plan(4, 20)
    cw = class_weights(pred, regions)
    assert abs(cw.sum()) < 1e-12  # contribution above the class mean sums to zero
    # same mass per region in both plans -> the margins add up to the score gap exactly
    for al in (pred, true):
        m = np.array([al.mass[al.region_id == r].sum() for r in regions])
        al.mass *= np.repeat(1 / 6 / m, np.bincount(np.searchsorted(regions, al.region_id)))
    gap = pred.contribution.sum() - true.contribution.sum()
    assert sum(tipping_margins(pred, true).values()) == pytest.approx(gap, abs=1e-12)
    aid, margin = tipping_attribute(pred, true)
    assert margin == max(tipping_margins(pred, true).values()) and 10 <= aid < 13
    np.testing.assert_allclose(shares([1.0, 3.0]), [0.25, 0.75])


# ---- pipeline explain on the demo store -------------------------------------------------
def _plateau(m):
    ys, xs = np.nonzero(m >= m.max() - 1e-12 * abs(m.max()))
    return xs, ys


def _inside(xs, ys, box):
    x0, y0, x1, y1 = box
    return bool(np.all((xs + 0.5 > x0) & (xs + 0.5 <= x1) & (ys + 0.5 > y0) & (ys + 0.5 <= y1)))


def hottest_pixels(npy: Path, png: Path, heat: np.ndarray):
    """The map's hottest pixels, read back from the .npy explain wrote next to the overlay (the
    same array in the image's pixels); the overlay is the image drawn at display size plus a colour bar."""
    saved = np.load(npy)
    assert saved.dtype == np.float32 and saved.shape == heat.shape
    np.testing.assert_allclose(saved, heat, rtol=1e-6, atol=1e-9 * np.abs(heat).max())
    im = Image.open(png)
    assert im.size[1] > 384 and im.size[0] > 384  # 128 px upsampled to 384, its title above, colour bar beside
    return _plateau(heat)


def test_hottest_pixels_lie_in_the_boxes_that_carried_the_most_mass(demo, tmp_path):
    """The issue's check, on the demo store, read back from every overlay PNG that explain writes.

    "Hottest pixels" = where the map is maximal, read back as the colormap's top colour in the
    PNG. They must lie
    inside the box of one of the 3 regions that carried the most mass toward the attribute, for
    at least 90% of the maps, and inside the single top region's box for at least 80%. Not
    100%: the demo's crops cover 50-90% of the side, so masses are flat-ish and a border pixel
    seen by a few fairly heavy crops can win (docs/explanations.md has the rates per setting).
    """
    n_maps = top1 = top3 = cls_top3 = 0
    with Catalog(demo.root) as cat:
        for im in demo.images:
            res = explain_image(cat, im.image_id, run_id=demo.run_id, class_name=im.label, out_dir=tmp_path / "maps",
                                maps="crop-boxes")
            ce = res.classes[0]
            for a in ce.attributes:
                xs, ys = hottest_pixels(a.npy, a.overlay, a.map)
                order = np.argsort(-a.weights)
                top3 += any(_inside(xs, ys, res.boxes[r]) for r in order[:3])
                top1 += _inside(xs, ys, res.boxes[order[0]])
                n_maps += 1
            # class map: hottest pixels in a region that contributed most above the class average
            xs, ys = hottest_pixels(ce.npy, ce.overlay, ce.map)
            cls_top3 += any(_inside(xs, ys, res.boxes[r]) for r in np.argsort(-ce.weights)[:3])
    assert n_maps == 3 * len(demo.images)  # every attribute that carried mass, for every image
    assert top3 >= 0.9 * n_maps and top1 >= 0.8 * n_maps, (top1, top3, n_maps)
    assert cls_top3 >= 0.75 * len(demo.images), cls_top3


def test_colour_attribute_points_at_the_object(demo):
    """Where the similarity was constructed from the object, the map is hotter on the object than off it."""
    hits = 0
    with Catalog(demo.root) as cat:
        for im in demo.images:
            res = explain_image(cat, im.image_id, class_name=im.label, write=False, maps="crop-boxes")
            colour = next(a for a in res.classes[0].attributes if "colour" in a.text)
            hits += colour.map[im.mask].mean() > colour.map[~im.mask].mean()
            # and the shares are the contributions view's, normalised
            rows = dict(cat.query(
                "SELECT attribute, contribution FROM contributions WHERE run_id = ? AND image_id = ? AND class_id = ?",
                [demo.run_id, im.image_id, res.classes[0].class_id]).fetchall())
            total = sum(rows.values())
            for a in res.classes[0].attributes:
                assert a.share == pytest.approx(rows[a.text] / total)
            assert sum(a.share for a in res.classes[0].attributes) == pytest.approx(1.0)
    assert hits == len(demo.images)


def test_explain_cli(demo, tmp_path):
    im = demo.images[0]
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["explain", im.path, "--store", str(demo.root), "-o", str(out), "--class",
                                 im.label.upper(), "--attribute", "colour"])
    assert r.exit_code == 0, r.output
    assert "global" in r.output and "local" in r.output and "%" in r.output
    assert re.search(r"\d+\.\d%\s+\S+\s+\S+\s+\S+\s+\w+ colour", r.output)
    pngs = sorted(out.glob("*.png"))
    maps = [p for p in pngs if ".vs-" not in p.name]  # (+ the headline attribute of why-A-not-B, both classes)
    assert len(maps) == 2 and any("attr" in p.name and "colour" in p.name for p in maps)  # class + the attribute
    # by a unique end of the path, default class (the prediction)
    tail = "/".join(Path(im.path).parts[-2:])
    r = CliRunner().invoke(cli, ["explain", tail, "--store", str(demo.root), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.count("\n  ") >= 3
    # mistakes are one line, no traceback
    for args, msg in (
        (["missing.png"], "not an indexed image"),
        ([im.path, "--class", "unicorn"], "No class 'unicorn'"),
        ([im.path, "--attribute", UNUSED], "No attribute"),
        ([im.path, "--run", "99"], "No run 99"),
    ):
        r = CliRunner().invoke(cli, ["explain", *args, "--store", str(demo.root), "-o", str(out)])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output


def test_explain_on_patch_regions_draws_the_patch_grid(tmp_path, tiny_model, image_folder, attr_file):
    """With --regions patches the regions are ViT patch cells: the maps are the grid (real classify;
    LaZSL's filter gives the patches least like the full image no mass, and they stay untinted)."""
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.classify import classify
    from pipeline.stages.index_images import index_images
    from pipeline.config import RegionConfig

    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, tiny_model, attr_file, progress=False)
        index_images(cat, tiny_model, [str(image_folder)], RegionConfig(source="patches"), progress=False)
        run = classify(cat, "lazsl", MethodConfig(top_k=0), progress=False).run_id
        path = sorted(image_folder.rglob("*.*"))[1]  # 104 x 80: the centre crop is x 12..92
        res = explain_image(cat, str(path), run_id=run, out_dir=tmp_path / "o")
    assert res.region_kind == "patch" and 0 < len(res.region_ids) <= 64
    ce = res.classes[0]
    assert not ce.mask[:, :12].any() and not ce.mask[:, 92:].any()  # outside the centre crop: no patch
    kept = ce.mask[:, 12:92].reshape(8, 10, 8, 10).transpose(0, 2, 1, 3).reshape(64, -1)
    assert np.all(kept.all(1) | ~kept.any(1)) and kept.all(1).sum() == len(res.region_ids)  # whole cells
    for m in [ce.map] + [a.map for a in ce.attributes]:
        assert np.all(m[~ce.mask] == 0)
        cells = m[:, 12:92].reshape(8, 10, 8, 10).transpose(0, 2, 1, 3).reshape(64, -1)
        assert np.allclose(cells.max(1), cells.min(1))  # one value per patch cell
    assert all(f.is_file() for f in res.files)


def test_explain_json_has_the_contrast_terms(demo, tmp_path):
    """The wrong prediction's contrasts in `explain --format json`: rows as stored in the
    `contrasts` view, terms (prompt row included) summing to the stored score gap."""
    import json

    r = CliRunner().invoke(cli, ["explain", str(demo.wrong_image_id), "--store", str(demo.root), "-o", str(tmp_path / "o"),
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = [x for x in json.loads(r.output) if x["kind"] == "contrast"]
    with Catalog(demo.root, read_only=True) as cat:
        view = cat.query("SELECT other_class_name, attribute, other_attribute, term, reason_rank, gap FROM contrasts "
                         "WHERE run_id = ? AND image_id = ?", [demo.run_id, demo.wrong_image_id]).fetchall()
        scores = dict(cat.query("SELECT c.name, p.score FROM predictions p JOIN classes c USING (class_id) "
                                "WHERE run_id = ? AND image_id = ?", [demo.run_id, demo.wrong_image_id]).fetchall())
    assert sorted((x["other_class"], x["attribute"], x["other_attribute"], round(x["term"], 10), x["reason_rank"])
                  for x in rows) == sorted((v[0], v[1], v[2], round(v[3], 10), v[4]) for v in view)
    true = [x for x in rows if x["true_class"]]
    assert {x["class_name"] for x in true} == {"blue square"} and {x["other_class"] for x in true} == {"red circle"}
    assert sum(x["term"] for x in true) == pytest.approx(scores["blue square"] - scores["red circle"], abs=1e-9)
    assert next(x for x in true if x["reason_rank"] == 1)["attribute"] == "blue colour"  # the boosted one
    # table output: the headline names the reason with its sign and whom it favours
    r = CliRunner().invoke(cli, ["explain", str(demo.wrong_image_id), "--store", str(demo.root), "-o", str(tmp_path / "o")])
    assert re.search(r"why blue square and not red circle \([^)]*true class\): blue square over red circle by \+0\.\d+: "
                     r"blue colour vs .* \+0\.\d+ tipped it", r.output), r.output
