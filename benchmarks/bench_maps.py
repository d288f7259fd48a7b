"""How attribution maps are normalised, measured on the toy world with real LaZSL plans.

Builds the demo's toy bird world (toy-clip, 30 crops, lo 0.5), runs LaZSL, and for every
(image, attribute of its true class) compares map variants on:

* top1 / top3: the map's hottest pixels (its maximal plateau) lie inside the box of the
  region that carried the most mass toward the attribute / of one of the three heaviest;
* point: the plateau's centroid lies in the attribute's ground-truth part box (boxes.jsonl);
* sch: share of the map's mass above its minimum inside that box (chance = the box's area share);
* flat: with equal weights on every region the map is flat (no centre bias of random crops).

Variants: ``area_mean`` (mass / box area, then / coverage: the first design), ``mean``
(per-pixel average of covering boxes' mass, prior 0), ``ours`` (prior "auto"), ``sum`` (no
normalisation), ``random`` (random region weights, our normalisation).

    python benchmarks/bench_maps.py [--per-class 4] [--seed 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def variants(boxes, w, h, wd):
    from queries.attribution import _box_sum, attribution_map, box_pixel_bounds

    b = box_pixel_bounds(boxes, h, wd)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1)
    cnt = _box_sum(b, np.ones(len(b)), h, wd)
    cov = cnt > 0
    return {
        "area_mean": np.where(cov, _box_sum(b, w / area, h, wd) / np.maximum(cnt, 1), -np.inf),
        "mean": np.where(cov, attribution_map(boxes, w, h, wd, prior=0), -np.inf),
        "ours": np.where(cov, attribution_map(boxes, w, h, wd), -np.inf),
        "sum": np.where(cov, _box_sum(b, w, h, wd), -np.inf),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()

    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.classify import classify
    from pipeline.explain.explain import prepare_image, resolve_image
    from pipeline.stages.index_images import index_images
    from pipeline.models import load_model
    from pipeline.config import RegionConfig
    from pipeline.toy.world import make_toyworld
    from queries.attribution import attribute_weights, attribution_map
    from stores.catalog import Catalog

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-maps-"))
    make_toyworld(root / "world", n_per_class=args.per_class, seed=args.seed, setting="parts")
    model = load_model("zsl-tiny", "toy-clip", device="cpu")
    rng = np.random.default_rng(0)
    stats: dict[str, dict[str, list]] = {}
    with Catalog(root / "store") as cat:
        import_attribute_file(cat, model, root / "world" / "attributes.json", progress=False)
        index_images(cat, model, [str(root / "world" / "images")], RegionConfig(n_crops=30, crop_min=0.5), progress=False)
        run = classify(cat, "lazsl", MethodConfig(top_k=0), model=model, progress=False).run_id
        for line in (root / "world" / "boxes.jsonl").read_text().splitlines():
            r = json.loads(line)
            img = resolve_image(cat, str(root / "world" / r["image"]))
            cid = cat.query("SELECT class_id FROM classes WHERE norm_name = lower(?)", [r["class"]]).fetchone()[0]
            aid = cat.query("SELECT attr_id FROM attributes WHERE class_id = ? AND text = ?", [cid, r["attribute"]]).fetchone()[0]
            als, rids, boxes, (wd, h), _, _ = prepare_image(cat, run, img, [cid])
            w = attribute_weights(als[cid], rids, aid)
            maps = variants(boxes, w, h, wd)
            maps["random"] = attribution_map(boxes, rng.random(len(w)), h, wd)
            order = np.argsort(-w)
            gt = (r["x0"], r["y0"], r["x1"], r["y1"])
            for name, m in maps.items():
                ys, xs = np.nonzero(m >= m.max() - 1e-12 * abs(m.max()))
                cx, cy = xs + 0.5, ys + 0.5

                def inside(bx):
                    return bool(np.all((cx > bx[0]) & (cx <= bx[2]) & (cy > bx[1]) & (cy <= bx[3])))

                fin = np.where(np.isfinite(m), m, np.nan)
                pos = np.nan_to_num(fin - np.nanmin(fin))
                s = stats.setdefault(name, {k: [] for k in ("top1", "top3", "point", "sch", "flat")})
                s["top1"].append(inside(boxes[order[0]]))
                s["top3"].append(any(inside(boxes[j]) for j in order[:3]))
                s["point"].append(gt[0] <= cx.mean() <= gt[2] and gt[1] <= cy.mean() <= gt[3])
                s["sch"].append(pos[gt[1]:gt[3], gt[0]:gt[2]].sum() / max(pos.sum(), 1e-300))
            for name, m in variants(boxes, np.full(len(w), 1.0), h, wd).items():
                v = m[np.isfinite(m)]
                stats[name]["flat"].append(float(v.max() - v.min()) / max(abs(float(v.max())), 1e-300) < 1e-9)
            stats.setdefault("area_share", {"sch": []})["sch"].append((gt[2] - gt[0]) * (gt[3] - gt[1]) / (wd * h))
    out = {name: {k: round(float(np.mean(v)), 3) for k, v in s.items() if v} for name, s in stats.items()}
    out["_pairs"] = len(stats["ours"]["top1"])
    out["_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
