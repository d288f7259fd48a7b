"""explain --maps plan-dense|crop-boxes|occlusion, the .npy maps and --format json, faithfulness and
the honesty lines, on the shapes store (constructed plans) with the tiny random-weight ViT."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.explain.explain import explain_image
from pipeline.explain.plots import MAP_ALPHA, MAP_CMAP, OPAQUE_FROM, TRANSPARENT_BELOW, colormap_lut, heat_overlay, image_scale
from queries.attribution import Alignment
from queries.perturb import curve_auc
from stores import tables
from stores.catalog import Catalog
from tests.helpers.stores import build_truth_store


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("shapes")
    ts = build_truth_store(root, tiny_model, per_class=2, n_crops=30, crop_min=0.5)
    boxes = root / "boxes.jsonl"
    with open(boxes, "w") as f:  # ground truth for pointing: the object's box for its colour attribute
        for im in ts.images:
            f.write(json.dumps(dict(image=im.path, **{"class": im.label}, attribute=f"{im.label.split()[0]} colour",
                                    x0=im.bbox[0], y0=im.bbox[1], x1=im.bbox[2], y1=im.bbox[3])) + "\n")
    return ts, boxes


def test_plan_maps_conserve_the_plan_and_json_matches_the_npy(shapes, tmp_path):
    """Each attribute's .npy sums to its plan mass, the class map to Σ T·F (the class's score from
    these alignments); nothing lies outside the crops that carried mass; --format json names each
    map's class, attribute (null for the class map), peak = argmax of the .npy, and the .npy path."""
    ts, _ = shapes
    im = ts.images[0]
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["explain", im.path, "--store", str(ts.root), "-o", str(out), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = [r_ for r_ in json.loads(r.output) if r_["kind"] != "contrast"]  # the maps' rows
    with Catalog(ts.root) as cat:
        cid = tables.class_ids_by_norm(cat)[rows[0]["class_name"].lower()]
        al = Alignment.from_rows(tables.alignment_rows(cat, ts.run_id, im.image_id, cid))
        texts = tables.attribute_texts(cat, np.unique(al.attr_id))
        ids, _, boxes = tables.image_regions(cat, im.image_id)
    carried = boxes[np.isin(ids, al.region_id[al.mass > 0])]
    assert [r_["attribute"] for r_ in rows[:1]] == [None] and len(rows) == 1 + len(texts)
    W, H = Image.open(im.path).size
    covered = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in carried.astype(int):
        covered[y0:y1, x0:x1] = True
    for row in rows:
        assert row["map_kind"] == "plan-dense"
        m = np.load(row["npy"])
        assert m.shape == (H, W)
        y, x = np.unravel_index(np.argmax(m), m.shape)
        assert row["peak"] == [int(x), int(y)]
        tiny = 1e-9 * m.max()  # summed-area-table round-off
        assert np.all(np.abs(m[~covered]) <= tiny) and m.min() >= -tiny and m[covered].max() == m.max()
        if row["attribute"] is None:
            assert m.sum() == pytest.approx(al.contribution.sum(), rel=1e-5)
        else:
            aid = next(a for a, t in texts.items() if t == row["attribute"])
            assert m.sum() == pytest.approx(al.mass[al.attr_id == aid].sum(), rel=1e-5)
            assert m.sum() == pytest.approx(row["mass"], rel=1e-5)


def test_boxes_and_occlusion_maps(shapes, tmp_path, tiny_model):
    ts, _ = shapes
    im = ts.images[1]
    with Catalog(ts.root) as cat:
        b = explain_image(cat, im.image_id, out_dir=tmp_path / "b", maps="crop-boxes")
        o = explain_image(cat, im.image_id, out_dir=tmp_path / "c", maps="occlusion", model=tiny_model)
    cb, co = b.classes[0], o.classes[0]
    assert cb.map_kind == "crop-boxes" and co.map_kind == "occlusion"
    np.testing.assert_allclose(np.load(cb.npy), cb.full_map, rtol=1e-6)
    # the box map at the image's size is the stored-box map the explain math draws (128 px: no rescale)
    np.testing.assert_allclose(cb.full_map, cb.map, atol=1e-12)
    k = co.map_cost
    assert k["windows"] == (128 // k["window_px"]) ** 2 and k["encoder_passes"] > k["windows"]
    assert np.load(co.npy).shape == (128, 128) and np.ptp(co.full_map) > 0
    assert any("occlusion" in line and "encoder passes" in line for line in o.summary_lines())


def test_overlay_uses_one_scale_and_leaves_low_values_transparent():
    base = Image.fromarray(np.full((16, 16, 3), 100, np.uint8))
    a = np.zeros((16, 16))
    a[4, 4] = 2.0
    b = np.zeros((16, 16))
    b[8, 8] = 1.0
    scale = image_scale([a, b])
    assert scale == (0.0, 2.0)
    lut = colormap_lut(MAP_CMAP).astype(float)
    oa = np.asarray(heat_overlay(base, a, scale, display_side=16), float)
    ob = np.asarray(heat_overlay(base, b, scale, display_side=16), float)
    assert oa.shape[1] > 16  # the colour bar beside the map
    np.testing.assert_allclose(oa[4, 4], np.round((1 - MAP_ALPHA) * 100 + MAP_ALPHA * lut[255]), atol=0.6)
    v = 0.5  # b's peak is half of the image's scale: its colour and opacity follow from the shared scale
    alpha = MAP_ALPHA * min(1.0, (v - TRANSPARENT_BELOW) / (OPAQUE_FROM - TRANSPARENT_BELOW))
    np.testing.assert_allclose(ob[8, 8], np.round((1 - alpha) * 100 + alpha * lut[round(v * 255)]), atol=0.6)
    assert np.all(oa[0, 0] == 100) and np.all(ob[0, 0] == 100)  # zero: transparent, the image as it is


def test_compare_stores_paired_differences_and_explain_quotes_them(shapes, tmp_path):
    ts, boxes = shapes
    plot = tmp_path / "cmp.png"
    r = CliRunner().invoke(cli, ["faithfulness", "--store", str(ts.root), "--boxes", str(boxes),
                                 "--maps", "plan-dense,crop-boxes,sim-sclip,gradcam,occlusion", "--max-occlusion-images", "1",
                                 "--tolerance", "4", "--steps", "4", "--plot", str(plot), "--scorer", "dclip", "--road"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    for kind in ("plan-dense", "crop-boxes", "sim-sclip", "gradcam", "occlusion", "random-plan-dense",
                 "random-crop-boxes", "random-grid"):
        assert any(line.startswith(f"  {kind} ") for line in lines), kind
    kinds = ("plan-dense", "crop-boxes", "occlusion", "gradcam", "sim-sclip", "random")
    assert all(any(k in line for k in kinds) for line in lines if not line.startswith("  map kind ")), r.output
    assert "pointing: chance" in r.output and Image.open(plot).size[0] > 400
    with Catalog(ts.root) as cat:
        fid = cat.query("SELECT max(faith_run_id) FROM faithfulness_summary").fetchone()[0]
        summ = {(s["map_kind"], s["metric"]): s for s in tables.faithfulness_summary_rows(cat, fid)}
        scores = cat.query("SELECT map_kind, kind, image_id, auc FROM faithfulness_scores WHERE faith_run_id = ?",
                           [fid]).fetchall()
        curves = cat.query("SELECT image_id, fraction, score FROM faithfulness_curves WHERE faith_run_id = ? AND "
                           "map_kind = 'plan-dense' AND kind = 'deletion' ORDER BY image_id, step", [fid]).fetchall()
        pg = cat.query("SELECT map_kind, image_id, hit FROM pointing_game WHERE faith_run_id = ?", [fid]).fetchall()
    val = {(k, m, i): a for k, m, i, a in scores}
    n = len(ts.images)
    assert summ[("occlusion", "deletion")]["images"] == 1 and summ[("plan-dense", "deletion")]["images"] == n
    for kind in ("plan-dense", "crop-boxes", "sim-sclip", "gradcam"):
        for m in ("deletion", "insertion", "road"):
            s = summ[(kind, m)]
            mine = [val[(kind, m, im.image_id)] for im in ts.images]
            rkind = {"plan-dense": "random-plan-dense", "crop-boxes": "random-crop-boxes"}.get(kind, "random-grid")
            rnd = [val[(rkind, m, im.image_id)] for im in ts.images]
            assert s["value"] == pytest.approx(np.mean(mine)) and s["random_value"] == pytest.approx(np.mean(rnd))
            assert s["diff"] == pytest.approx(np.mean(mine) - np.mean(rnd))
            assert s["diff_low"] <= s["diff"] <= s["diff_high"]
            assert s["better"] == ((s["diff_low"] > 0) if m != "deletion" else (s["diff_high"] < 0))
    # the stored deletion AUC is the trapezoid area under the stored curve
    first = [c for c in curves if c[0] == ts.images[0].image_id]
    assert val[("plan-dense", "deletion", ts.images[0].image_id)] == pytest.approx(
        curve_auc([c[1] for c in first], [c[2] for c in first]))
    # pointing: one box per image, so the value is the share of hits; chance = box area / image area
    for kind in ("plan-dense", "random-plan-dense"):
        hits = [h for k, _, h in pg if k == kind]
        assert len(hits) == n and summ[(kind, "pointing")]["value"] == pytest.approx(np.mean(hits))
    W, H = Image.open(ts.images[0].path).size
    chance = np.mean([(min(W, im.bbox[2] + 4) - max(0, im.bbox[0] - 4)) * (min(H, im.bbox[3] + 4) - max(0, im.bbox[1] - 4))
                      / (W * H) for im in ts.images])
    assert summ[("plan-dense", "pointing")]["chance"] == pytest.approx(chance)
    # explain and the report quote the measured figures of the kind they show
    r = CliRunner().invoke(cli, ["explain", ts.images[0].path, "--store", str(ts.root), "-o", str(tmp_path / "e"),
                                 "--maps", "crop-boxes"])
    s = summ[("crop-boxes", "deletion")]
    assert f"deletion {s['value']:.3f} vs random-crop-boxes {s['random_value']:.3f}" in r.output
    worse = [m for m in ("deletion", "insertion", "road", "pointing") if not summ[("crop-boxes", m)]["better"]]
    assert ("NOT better than random" in r.output) == bool(worse)
    r = CliRunner().invoke(cli, ["report", "--store", str(ts.root), "-o", str(tmp_path / "r.html"), "--limit", "2"])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    s = summ[("plan-dense", "deletion")]
    assert "Maps shown: <b>plan-dense</b>" in html
    assert f"deletion {s['value']:.3f} vs random-plan-dense {s['random_value']:.3f}" in html
    # evaluate puts the run's measured default maps beside its accuracy, with its region set
    with Catalog(ts.root, read_only=True) as cat:
        run_id = cat.query("SELECT DISTINCT run_id FROM faithfulness_summary WHERE faith_run_id = ?", [fid]).fetchone()[0]
        index = tables.index_run_params(cat)
    r = CliRunner().invoke(cli, ["evaluate", "--store", str(ts.root), "--run", str(run_id), "--format", "json"])
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)
    from pipeline.config import RegionConfig

    assert row["regions"] == RegionConfig.from_dict(index[0]["regions"]).label()
    assert row["maps_pointing"] == pytest.approx(summ[("plan-dense", "pointing")]["value"])
    assert row["maps_pointing_chance"] == pytest.approx(chance)
    for m in ("deletion", "insertion"):
        assert row[f"maps_{m}"] == pytest.approx(summ[("plan-dense", m)]["value"])
        assert row[f"maps_{m}_random"] == pytest.approx(summ[("plan-dense", m)]["random_value"])
    better = sum(bool(summ[("plan-dense", m)]["better"]) for m in ("pointing", "deletion", "insertion"))
    assert row["maps_better"] == f"{better}/3"
    r = CliRunner().invoke(cli, ["evaluate", "--store", str(ts.root), "--run", str(run_id)])
    assert "maps (plan-dense" in r.output and f"{summ[('plan-dense', 'pointing')]['value']:.3f} ({chance:.3f})" in r.output


def test_map_errors_are_one_line(shapes, tmp_path):
    ts, boxes = shapes
    for args, msg in ((["faithfulness", "--maps", "plan-dense,heat"], "unknown map kind(s) heat"),
                      (["explain", ts.images[0].path, "--maps", "rise"], "Invalid value for '--maps'")):
        r = CliRunner().invoke(cli, [*args, "--store", str(ts.root)])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, r.output


def test_a_png_does_not_depend_on_what_else_was_drawn_and_names_its_class_and_attribute(shapes, tmp_path):
    """The same attribute map drawn alone (--attribute) or with all the others is the same PNG
    byte for byte (its colour scale is the largest of all the class's attribute maps, drawn or
    not), and every PNG has a title band with text above the map."""
    from pipeline.explain.plots import DISPLAY_SIDE

    ts, _ = shapes
    im = ts.images[0]
    with Catalog(ts.root, read_only=True) as cat:
        full = explain_image(cat, im.image_id, out_dir=tmp_path / "a", maps="crop-boxes")
        drawn = [a for a in full.classes[0].attributes if a.overlay is not None]
        a = drawn[-1]  # not the strongest: alone it would have set the old per-call scale
        one = explain_image(cat, im.image_id, out_dir=tmp_path / "b", maps="crop-boxes", attribute=str(a.attr_id))
    [b] = [x for x in one.classes[0].attributes if x.overlay is not None]
    assert len(drawn) > 1 and b.attr_id == a.attr_id
    assert a.overlay.read_bytes() == b.overlay.read_bytes()
    assert full.classes[0].overlay.read_bytes() == one.classes[0].overlay.read_bytes()
    f = max(1.0, DISPLAY_SIDE / max(full.width, full.height))
    map_h = round(full.height * f)
    for path in (a.overlay, full.classes[0].overlay):
        png = np.asarray(Image.open(path).convert("L"))
        band = png[: png.shape[0] - map_h]
        assert band.shape[0] > 10 and band.min() < 80 and np.median(band) == 255  # dark text on white
