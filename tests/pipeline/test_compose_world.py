"""The compositional toy world: generator contract (bytes, layout, split, boxes, captions)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.toy import compose_world as cw
from pipeline.toy.train_compose import sample_views


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("cw") / "w"
    cw.make_compose_world(out, n_per_pair=2, seed=3)
    return out


def test_same_seed_same_bytes_other_seed_other_images(world, tmp_path):
    again = tmp_path / "again"
    cw.make_compose_world(again, n_per_pair=2, seed=3)
    a, b = _files(world), _files(again)
    assert a == b
    other = tmp_path / "other"
    cw.make_compose_world(other, n_per_pair=2, seed=4)
    c = _files(other)
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) == len(pngs)
    for k in ("pairs.txt", "seen_pairs.txt", "attributes_pairs.json"):
        assert a[k] == c[k]


def test_split_covers_every_state_and_object():
    for split_seed in range(4):
        sp = cw.make_pair_split(split_seed)
        seen, unseen, only = set(sp.seen), set(sp.unseen), set(sp.open_only)
        assert (len(seen), len(unseen), len(only)) == (24, 12, 12)
        assert seen | unseen | only == set(cw.all_pairs()) and not (seen & unseen or seen & only or unseen & only)
        for s in cw.STATE_NAMES:
            assert sum(p[0] == s for p in seen) >= 3 and any(p[0] == s for p in unseen)
        for o in cw.OBJECT_NAMES:
            assert sum(p[1] == o for p in seen) >= 3 and any(p[1] == o for p in unseen)
    assert cw.make_pair_split(0) != cw.make_pair_split(1)


def test_layout_files_and_boxes(world):
    lines = lambda n: (world / n).read_text().splitlines()  # noqa: E731
    assert lines("states.txt") == list(cw.STATE_NAMES) and lines("objects.txt") == list(cw.OBJECT_NAMES)
    seen, unseen, closed = lines("seen_pairs.txt"), lines("unseen_pairs.txt"), lines("pairs.txt")
    assert sorted(closed) == sorted(seen + unseen) and len(lines("pairs_open.txt")) == 48
    folders = sorted(p.name for p in (world / "images").iterdir())
    assert folders == sorted(p.replace(" ", "_") for p in closed)
    pa = json.loads((world / "attributes_pairs.json").read_text())
    sa = json.loads((world / "attributes_states.json").read_text())
    oa = json.loads((world / "attributes_objects.json").read_text())
    assert len(pa) == 48 and pa["striped cup"] == sa["striped"] + oa["cup"]
    bank = lines("concepts.txt")
    assert bank[:2] == sa["striped"] and set(oa["cup"]) < set(bank) and "a grey stone" in bank
    names = set(lines("states.txt")) | set(lines("objects.txt")) | set(pa)
    assert not [t for t in bank if t in names]  # no class, state or object name is a concept
    rows = [json.loads(x) for x in (world / "boxes.jsonl").read_text().splitlines()]
    assert len(rows) == 36 * 2 * 3
    by_image = {}
    for r in rows:
        by_image.setdefault(r["image"], {})[r["kind"]] = r
        assert r["image"].split("/")[1] == r["pair"].replace(" ", "_")
    for img, kinds in by_image.items():
        assert set(kinds) == {"state", "object", "object_part"}
        w, h = Image.open(world / img).size
        ob = kinds["object"]["box"]
        for k in ("state", "object_part"):
            x0, y0, x1, y1 = kinds[k]["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert ob[0] <= x0 and ob[1] <= y0 and x1 <= ob[2] and y1 <= ob[3]  # evidence lies on the object
        # the state box is local: smaller than the object box
        sx0, sy0, sx1, sy1 = kinds["state"]["box"]
        assert (sx1 - sx0) * (sy1 - sy0) < 0.6 * (ob[2] - ob[0]) * (ob[3] - ob[1])


def test_state_patch_changes_pixels_only_inside_its_box():
    # same scene drawn with two different states: the images differ only inside the state box
    sp = cw.make_pair_split(0)
    a = cw.render_example(("striped", "cup"), "single", sp, cw.example_rng(0, "single", 5, 1))
    b = cw.render_example(("ribbed", "cup"), "single", sp, cw.example_rng(0, "single", 5, 1))
    assert a.items[0].state_box == b.items[0].state_box
    diff = np.any(np.asarray(a.image) != np.asarray(b.image), axis=-1)
    x0, y0, x1, y1 = a.items[0].state_box
    assert diff.sum() > 50 and diff[y0:y1, x0:x1].sum() == diff.sum()


def test_training_views_never_show_or_name_a_heldout_pair():
    sp = cw.make_pair_split(0)
    held = {cw.pair_name(*p) for p in sp.unseen + sp.open_only}
    caps = [c for _, c in sample_views(np.random.default_rng(7), sp, 400, 2, nonce_pool=["tovrin"])]
    assert not [c for c in caps if any(h in c for h in held)]
    # captions name states and objects, descriptors, and the DCLIP form
    assert any(c.startswith("a photo of a ") for c in caps)
    assert any("tovrin, which" in c for c in caps)
    assert any(c.startswith("a close-up of") for c in caps)
