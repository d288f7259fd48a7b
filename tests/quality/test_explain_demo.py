"""Explanations on the demo store itself: the toy bird world, the shipped toy-clip model and a
real `classify --method lazsl` run (no hand-made alignments)."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from tests.helpers.stores import console_problems, needs_chromium, screenshot
from PIL import Image
from tests.pipeline.test_explain import _inside, hottest_pixels

from pipeline.stages.attributes import import_attribute_file
from pipeline.stages.methods import MethodConfig
from pipeline.stages.classify import classify
from pipeline.cli import cli
from pipeline.explain.explain import explain_image
from pipeline.stages.index_images import index_images
from pipeline.models import load_model
from pipeline.config import RegionConfig
from pipeline.toy.world import make_toyworld
from stores.catalog import Catalog


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`pipeline demo`'s stages at 2 images per class (the demo uses 20)."""
    root = tmp_path_factory.mktemp("toydemo")
    make_toyworld(root / "world", n_per_class=2, seed=2, setting="parts")
    model = load_model("zsl-tiny", "toy-clip", device="cpu")
    with Catalog(root / "store") as cat:
        import_attribute_file(cat, model, root / "world" / "attributes.json", progress=False)
        index_images(cat, model, [str(root / "world" / "images")], RegionConfig(n_crops=30, crop_min=0.5), progress=False)
        run = classify(cat, "lazsl", MethodConfig(top_k=0), model=model, progress=False).run_id
    return root, run


def test_demo_overlays_hottest_pixels_lie_in_the_heaviest_regions(demo, tmp_path):
    """The issue's check with real LaZSL plans: the overlay PNGs' hottest pixels lie in the box of
    one of the 3 regions that carried the most mass toward the attribute (measured 96/96 maps
    here), and mostly in the single heaviest one's (88/96; benchmarks/bench_maps.py: 91% at 4
    images per class)."""
    root, run = demo
    n = top1 = top3 = 0
    with Catalog(root / "store") as cat:
        ids = [r[0] for r in cat.query("SELECT image_id FROM images ORDER BY path").fetchall()]
        for iid in ids:
            res = explain_image(cat, iid, run_id=run, out_dir=tmp_path, maps="crop-boxes")
            for a in res.classes[0].attributes:
                xs, ys = hottest_pixels(a.npy, a.overlay, a.map)
                order = np.argsort(-a.weights)
                top3 += any(_inside(xs, ys, res.boxes[r]) for r in order[:3])
                top1 += _inside(xs, ys, res.boxes[order[0]])
                n += 1
    assert n == 4 * len(ids) == 96
    assert top3 >= 0.95 * n and top1 >= 0.8 * n, (top1, top3, n)


@needs_chromium
def test_demo_report_with_faithfulness_in_chromium(demo, tmp_path):
    root, run = demo
    store = ["--store", str(root / "store")]
    r = CliRunner().invoke(cli, ["faithfulness", *store, "--steps", "3", "--max-images", "4", "--boxes",
                                 str(root / "world" / "boxes.jsonl"), "--plot", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert re.search(r"^  plan-dense +4 ", r.output, re.M) and re.search(r"^  random-plan-dense +4 ", r.output, re.M)
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", *store, "-o", str(out), "--limit", "6"])
    assert r.exit_code == 0, r.output
    html = out.read_text()
    assert "Maps shown: <b>plan-dense</b>" in html and "random-plan-dense" in html and "per-class accuracy" in html
    err = screenshot(out, tmp_path / "shot.png")
    assert console_problems(err) == []
    hsv = np.asarray(Image.open(tmp_path / "shot.png").convert("HSV")).reshape(-1, 3)
    assert ((hsv[:, 1] > 80) & (hsv[:, 2] > 60)).sum() > 20000  # coloured heatmaps and plots on screen


def test_demo_contrasts_between_siblings_name_the_wing_pattern(demo):
    """A real LaZSL run's stored contrasts: between sibling classes (the same crest, tail and
    legs) the three shared descriptors get term 0 and the wing-pattern pair is the one ranked
    attribute row (beside the class prompt); the terms of every contrast sum to the stored score gap."""
    root, run = demo
    with Catalog(root / "store", read_only=True) as cat:
        desc = {}
        for cid, text in cat.query("SELECT class_id, text FROM attributes").fetchall():
            desc.setdefault(cid, set()).add(text)
        rows = cat.query("SELECT image_id, class_id, other_class_id, attribute, other_attribute, shared, term, reason_rank "
                         "FROM contrasts WHERE run_id = ? AND NOT (attr_id IS NULL AND other_attr_id IS NULL)",
                         [run]).fetchall()
        sums = cat.query(
            "SELECT s.total, pa.score - pb.score FROM (SELECT image_id, class_id, other_class_id, sum(term) AS total "
            "FROM contrast_terms WHERE run_id = ? GROUP BY ALL) s JOIN predictions pa ON pa.run_id = ? AND "
            "pa.image_id = s.image_id AND pa.class_id = s.class_id JOIN predictions pb ON pb.run_id = ? AND "
            "pb.image_id = s.image_id AND pb.class_id = s.other_class_id", [run, run, run]).fetchall()
        n_images = cat.query("SELECT count(*) FROM images").fetchone()[0]
    assert len(sums) >= n_images and all(abs(t - g) < 1e-6 for t, g in sums)
    rest = lambda c: {t for t in desc[c] if not t.endswith("wings")}  # noqa: E731
    sib = {}
    for r in rows:
        if rest(r[1]) == rest(r[2]):
            sib.setdefault((r[0], r[2]), []).append(r)
    assert len(sib) >= n_images // 2  # siblings are each other's runner-up most of the time
    for terms in sib.values():
        assert sorted(r[3] for r in terms if r[5]) == sorted(rest(terms[0][1])) and all(r[6] == 0 for r in terms if r[5])
        ranked = [r for r in terms if r[7] is not None]  # the wing pair is the only ranked attribute row
        assert len(ranked) == 1 and ranked[0][3].endswith("wings") and ranked[0][4].endswith("wings")
        assert ranked[0][7] in (1, 2)  # rank 1 unless the class prompt (not in these rows) pushed harder


def test_default_maps_point_at_the_parts_and_beat_random_maps(demo, tmp_path):
    """The issue's bar for the default (plan-dense) maps, through the command that measures it:
    pointing at the part boxes grown by 8 px >= 70% (chance about 10%), and deletion, insertion
    and pointing better than random maps with 95% intervals of the differences excluding 0."""
    root, run = demo
    r = CliRunner().invoke(cli, ["faithfulness", "--store", str(root / "store"),
                                 "--boxes", str(root / "world" / "boxes.jsonl"), "--tolerance", "8",
                                 "--plot", str(tmp_path / "p.png"), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {(x["map_kind"], x["metric"]): x for x in json.loads(r.stdout)}  # notes (cost, scorer) go to stderr
    point = rows[("plan-dense", "pointing")]
    assert point["images"] == 24 and point["value"] >= 0.7 and point["chance"] < 0.2, point
    for m in ("deletion", "insertion", "pointing"):
        assert rows[("plan-dense", m)]["better"], rows[("plan-dense", m)]
