"""A demo store with a LaZSL-like run written by hand, so explanation tests know the truth.

The images are the demo's coloured shapes (``pipeline.demo.make_shapes_world``); the object of
each image is the set of pixels in its class colour. For every candidate class the fused
similarity of its colour attribute on a crop grows with the share of the crop that is object
of that colour; the plan is an entropic OT plan (uniform marginals, ε = 0.1) on that
similarity, as LaZSL computes it. One red-circle image gets a boosted "blue colour" so that it
is misclassified as a blue square, with "blue colour" the attribute that tipped it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from stores import tables
from tests.helpers.reference import sinkhorn_loop

from pipeline.stages.attributes import import_attribute_file
from pipeline.stages.contrasts import store_contrasts
from pipeline.toy.shapes import _COLOURS, DEMO_CLASSES, make_shapes_world
from pipeline.stages.index_images import index_images
from pipeline.config import RegionConfig
from stores.catalog import Catalog, dumps, now_utc

EVIL = "<script>alert('pwned')</script> & \"quotes\""
UNUSED = "a plaid pattern"  # a descriptor of "yellow bar" that the plan never gives mass


@dataclass
class TruthImage:
    image_id: int
    path: str
    label: str
    mask: np.ndarray = field(repr=False)  # object pixels (H, W) bool
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # object box x0, y0, x1, y1 (end exclusive)


@dataclass
class TruthStore:
    root: Path
    run_id: int
    images: list[TruthImage]
    wrong_image_id: int  # the misclassified one
    attr_ids: dict[tuple[str, str], int]  # (class name, attribute text) -> attr_id


def sinkhorn(f: np.ndarray, eps: float = 0.1, iters: int = 200) -> np.ndarray:
    """Balanced entropic OT plan with uniform marginals on similarity f (cost 1 - f), run for a
    fixed number of iterations (tol 0)."""
    m, n = f.shape
    return sinkhorn_loop(np.full(m, 1 / m), np.full(n, 1 / n), 1 - f, eps, max_iter=iters, tol=0.0)[0]


def object_mask(path: str, colour: tuple[int, int, int]) -> np.ndarray:
    arr = np.asarray(Image.open(path).convert("RGB"))
    return np.all(arr == np.array(colour, np.uint8), axis=-1)


def build_truth_store(root: Path, model, *, per_class: int = 2, n_crops: int = 16, crop_min: float = 0.3, evil: bool = False,
                      seed: int = 0) -> TruthStore:
    world = root / "world"
    img_dir, attrs_file = make_shapes_world(world, per_class=per_class, seed=seed)
    classes = {k: list(v) for k, v in DEMO_CLASSES.items()}
    classes["yellow bar"].append(UNUSED)
    if evil:
        classes["red circle"].append(EVIL)
        classes["evil <b>bold</b> class"] = ["<img src=x onerror=alert(1)>"]
    attrs_file.write_text(json.dumps(classes))
    rng = np.random.default_rng(seed)
    with Catalog(root / "store") as cat:
        import_attribute_file(cat, model, attrs_file, progress=False)
        index_images(cat, model, [str(img_dir)], RegionConfig(n_crops=n_crops, crop_min=crop_min), progress=False, dtype="float32")
        cls = {name: cid for cid, name in cat.query("SELECT class_id, name FROM classes ORDER BY class_id").fetchall()}
        attrs: dict[int, list[tuple[int, str]]] = {}
        attr_ids = {}
        for aid, cid, text in cat.query("SELECT attr_id, class_id, text FROM attributes ORDER BY attr_id").fetchall():
            attr_ids[(cid, text)] = aid
            if text != UNUSED:
                attrs.setdefault(cid, []).append((aid, text))
        attr_ids = {(name, text): aid for (cid, text), aid in attr_ids.items() for name in cls if cls[name] == cid}
        run_id = cat.next_id("runs", "run_id")
        tables.insert_run(cat, tables.RunRecord(run_id, "lazsl", {
            "method": "lazsl", "config": {"theta": 0.8}, "texts": {"kind": "descriptors"}, "hand_made": True}, cat.model))
        images = []
        rows = cat.query("SELECT image_id, path, label FROM images ORDER BY path").fetchall()
        wrong = None
        preds, aligns = [], []
        for iid, path, label in rows:
            name = label.replace("_", " ")
            mask = object_mask(path, _COLOURS[name.split()[0]])
            ys, xs = np.nonzero(mask)
            images.append(TruthImage(iid, path, name, mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
            reg = cat.query("SELECT region_id, x0, y0, x1, y1 FROM regions WHERE image_id = ? AND kind = 'crop' ORDER BY region_id",
                            [iid]).fetchall()
            rid = np.array([r[0] for r in reg], np.int64)
            boxes = np.array([r[1:] for r in reg], np.int64)
            flip = wrong is None and name == "red circle"
            if flip:
                wrong = iid
            scores = {}
            for cname, cid in cls.items():
                colour = cname.split()[0]
                cmask = object_mask(path, _COLOURS[colour]) if colour in _COLOURS else np.zeros_like(mask)
                f = np.zeros((len(rid), len(attrs[cid])))
                for j, (aid, text) in enumerate(attrs[cid]):
                    if "colour" in text:
                        share = np.array([cmask[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes])
                        f[:, j] = 0.15 + 0.6 * share
                        if flip and colour == "blue":
                            f[:, j] += 0.5
                    else:
                        f[:, j] = 0.15 + 0.05 * rng.random(len(rid))
                t = sinkhorn(f)
                s = float((t * f).sum())
                scores[cid] = s
                for m in range(len(rid)):
                    for j, (aid, _) in enumerate(attrs[cid]):
                        aligns.append((run_id, iid, cid, int(rid[m]), aid, float(t[m, j]), float(f[m, j])))
            order = sorted(scores, key=lambda c: -scores[c])
            for rank, cid in enumerate(order, 1):
                preds.append((run_id, iid, cid, rank, scores[cid], scores[cid], scores[cid]))  # 0.2·g + 0.8·l = score
        tbl = pa.table(list(zip(*preds)), names=["run_id", "image_id", "class_id", "rank", "score", "global_score", "local_score"])  # noqa: F841
        cat.con.execute("INSERT INTO predictions SELECT run_id, image_id, class_id, rank::INTEGER, score, global_score, local_score FROM tbl")
        tbl = pa.table(list(zip(*aligns)), names=["run_id", "image_id", "class_id", "region_id", "attr_id", "mass", "similarity"])  # noqa: F841
        cat.con.execute("INSERT INTO alignments SELECT * FROM tbl")
        store_contrasts(cat, run_id)  # what classify writes after scoring an OT run
    return TruthStore(root / "store", run_id, images, wrong, attr_ids)


# ---- headless Chromium -------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)"
)


def screenshot(html: Path, png: Path, size="1200,1600") -> str:
    """Render a page with headless Chromium; returns its stderr (console messages are logged there)."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={png}",
             f"--window-size={size}", html.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    return proc.stderr


def console_problems(stderr: str) -> list[str]:
    """Console lines of the page: the report has no script, so any console message is a problem
    (uncaught errors, console.error, CSP violations, blocked loads)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln or "Refused to" in ln]
