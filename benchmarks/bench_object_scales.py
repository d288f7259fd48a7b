"""Object-bound against its controls across bird scales, on the pure functions (no store).

    PYTHONPATH=$PWD python benchmarks/bench_object_scales.py --seed 1000 --n-per-class 4 --out /tmp/scales.json

The lean counterpart of ``bench_methods.py``'s scale sweep, for a machine too busy to run the
product on every world: the same worlds (``make-toyworld --setting S --object-scale X --seed``,
rendered in memory), the same region boxes as ``index-images`` draws them
(:func:`queries.regions.region_boxes` of each image's content hash, fp32 instead of the store's
fp16 embeddings), the same scoring functions as ``classify``. Per image it encodes the full view,
LaZSL's 60 crops U(0.5, 0.9) (the ``toy-all`` crops) and the ``toy-bound`` preset's 60
log-uniform crops in [0.15, 0.9]; then

* ``oracle: the labelled bird's box``: the DCLIP score of a square crop around the labelled
  bird's ground-truth box (10% margin): what one region scores with a perfect object
  proposal; a reference, not a method (methods that pool several regions can exceed it);
* ``dclip``: the full view's mean descriptor cosine;
* ``lazsl``: LaZSL over its own 60 crops;
* ``best-region``, ``crop-dclip``: the controls over the ``toy-bound`` crops;
* ``best-region (all 120 crops)``: the best single region over both crop sets;
* ``crop-dclip (LaZSL's 60 crops)``: the mean DCLIP score over LaZSL's larger crops;
* ``object-bound``: over the ``toy-bound`` regions (full + 60), with its defaults;
* ``object-bound (contain 0.9)``: the same with the containment test it had before it was
  re-chosen on the tuning seeds 7 and 8 (0.9 -> 0.75, parts strictly smaller than their object),
  so the change is measured here too.

Top-1 per (setting, scale), the mean over scales, and object-bound's margins in points.
Prints one JSON object and rewrites ``--out`` after every world.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCALES = (0.5, 1.0, 1.5)
ROWS = ("oracle: the labelled bird's box", "dclip", "lazsl", "best-region", "crop-dclip", "best-region (all 120 crops)",
        "crop-dclip (LaZSL's 60 crops)", "object-bound (contain 0.9)", "object-bound")
#: object-bound's containment before it was re-chosen on tuning seeds 7 and 8 (0.9 -> 0.75; parts are now also
#: strictly smaller than their object)
OLD_CONTAIN = 0.9
#: rows whose per-image correctness is kept, for object-bound's paired comparisons (--pool)
PAIRED = ("object-bound", "best-region", "lazsl", "crop-dclip (LaZSL's 60 crops)")
CONTROLS = ("best-region", "crop-dclip", "best-region (all 120 crops)", "crop-dclip (LaZSL's 60 crops)")


def world_scenes(setting: str, scale: float, seed: int, n_per_class: int):
    """(scene, label, sha256 of its PNG bytes) as make_toyworld writes them; ``scene.image`` is the image."""
    from pipeline.toy import world as tw

    split = tw.make_split(0)
    for ci, combo in enumerate(split.heldout):
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, tw.SETTINGS.index(setting), ci, i])
            scene = tw.render_example(combo, setting, split.heldout, rng, object_scale=scale)
            yield scene, ci, hashlib.sha256(tw._png_bytes(scene.image)).hexdigest()  # the bytes make_toyworld writes


def world_images(setting: str, scale: float, seed: int, n_per_class: int):
    """(PIL image, label, sha256 of its PNG bytes) as make_toyworld writes them."""
    for scene, label, sha in world_scenes(setting, scale, seed, n_per_class):
        yield scene.image, label, sha


def bird_crop(scene, pad: float = 0.1, birds: int = 1):
    """A square crop around the first ``birds`` birds' boxes (the labelled bird first) with a ``pad`` margin."""
    boxes = [b.bbox for b in scene.birds[:birds]]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    W, H = scene.image.size
    side = min(max(x1 - x0, y1 - y0) * (1 + 2 * pad), W, H)
    bx0 = min(max((x0 + x1) / 2 - side / 2, 0), W - side)
    by0 = min(max((y0 + y1) / 2 - side / 2, 0), H - side)
    return scene.image.crop((int(bx0), int(by0), int(bx0 + side), int(by0 + side)))


def score_world(lm, texts, items, geometries) -> dict:
    import torch

    from queries.binding import object_bound_scores
    from queries.controls import best_region_scores, crop_dclip_scores
    from queries.lazsl import lazsl_scores
    from queries.regions import region_boxes

    attr, ac = texts
    labels, regs, boxes = [], {k: [] for k in geometries}, {k: [] for k in geometries}
    oracle = lm.encode_images(torch.stack([lm.preprocess(bird_crop(scene)) for scene, _, _ in items])).numpy()
    for scene, label, sha in items:
        img = scene.image
        labels.append(label)
        for name, geo in geometries.items():
            bx = region_boxes(img.width, img.height, sha, **geo)[1]
            views = [lm.preprocess(img)] + [lm.preprocess(img.crop(tuple(int(v) for v in b))) for b in bx[1:]]
            regs[name].append(lm.encode_images(torch.stack(views)))
            boxes[name].append(bx)
    labels = np.array(labels)
    lz = torch.stack(regs["lazsl"]).numpy()
    bd = torch.stack(regs["bound"]).numpy()
    bd_boxes = np.stack(boxes["bound"]).astype(np.float32)
    n_cls = int(ac.max()) + 1
    scores = {
        "oracle: the labelled bird's box": best_region_scores(oracle[:, None], attr, ac, n_cls).scores,
        "dclip": best_region_scores(lz[:, :1], attr, ac, n_cls).scores,
        "lazsl": lazsl_scores(lz[:, 0], lz[:, 1:], attr, ac, return_plan=False).scores,
        "best-region": best_region_scores(bd[:, 1:], attr, ac, n_cls).scores,
        "crop-dclip": crop_dclip_scores(bd[:, 1:], attr, ac, n_cls).scores,
        "best-region (all 120 crops)": best_region_scores(np.concatenate([lz[:, 1:], bd[:, 1:]], 1), attr, ac,
                                                          n_cls).scores,
        "crop-dclip (LaZSL's 60 crops)": crop_dclip_scores(lz[:, 1:], attr, ac, n_cls).scores,
        "object-bound (contain 0.9)": object_bound_scores(bd, bd_boxes, attr, ac, return_plan=False,
                                                          contain=OLD_CONTAIN).scores,
        "object-bound": object_bound_scores(bd, bd_boxes, attr, ac, return_plan=False).scores,
    }
    correct = {k: (np.asarray(v).argmax(1) == labels) for k, v in scores.items()}
    row = {k: round(float(c.mean()), 4) for k, c in correct.items()}
    # per image (0/1), for the paired comparison of --pool
    row["correct"] = {k: correct[k].astype(int).tolist() for k in PAIRED}
    return row


def pooled_differences(reports: list[dict], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Object-bound minus each paired row over every image of ``reports`` (seeds x scales),
    per setting: the mean difference in points and a paired bootstrap 95% interval (images
    resampled with replacement, the same draw for both rows)."""
    rng = np.random.default_rng(seed)
    out = {}
    for setting in dict.fromkeys(s for r in reports for s in r["top1"]):
        worlds = [w for r in reports for w in r["top1"].get(setting, {}).values()]
        ob = np.concatenate([w["correct"]["object-bound"] for w in worlds]).astype(float)
        idx = rng.integers(0, len(ob), size=(n_boot, len(ob)))
        res = {"images": len(ob)}
        for other in PAIRED[1:]:
            d = ob - np.concatenate([w["correct"][other] for w in worlds])
            lo, hi = np.quantile(d[idx].mean(1), [0.025, 0.975])
            res[f"object-bound - {other}"] = {"points": round(100 * float(d.mean()), 1),
                                              "ci95": [round(100 * float(lo), 1), round(100 * float(hi), 1)]}
        out[setting] = res
    return out


def summarise(results: dict) -> dict:
    out = {}
    for setting, by_scale in results.items():
        mean = {r: round(float(np.mean([w[r] for w in by_scale.values()])), 4) for r in ROWS}
        controls = {r: mean[r] for r in CONTROLS}
        best = max(controls, key=controls.get)
        ob = mean["object-bound"]
        out[setting] = {"mean_top1_over_scales": mean, "scales": list(by_scale), "margins_points": {
            "object-bound - lazsl": round(100 * (ob - mean["lazsl"]), 1),
            "object-bound - best-region": round(100 * (ob - mean["best-region"]), 1),
            f"object-bound - best control ({best})": round(100 * (ob - controls[best]), 1)}}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="toy-clip", help="a shipped tag (toy-clip, toy-clip-unbound) or a .pt file")
    ap.add_argument("--model", default=None, help="the architecture of a .pt file (zsl-tiny); tags imply it")
    ap.add_argument("--seed", type=int, default=1000, help="image seed (object-bound was tuned on 7 and 8; the "
                    "toy-bound "
                    "regions were chosen without tuning)")
    ap.add_argument("--n-per-class", type=int, default=4)
    ap.add_argument("--settings", default="distractors,parts")
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench-object-scales.json", help="the report so far, rewritten after each world")
    ap.add_argument("--pool", nargs="+", metavar="REPORT", help="instead of measuring: pool these reports "
                    "(seeds of one "
                    "encoder) and print object-bound's paired differences with bootstrap 95%% intervals")
    args = ap.parse_args(argv)
    if args.pool:
        reports = [json.loads(Path(p).read_text()) for p in args.pool]
        print(json.dumps({"reports": args.pool, "weights": sorted({r["weights"] for r in reports}),
                          "seeds": [r["seed"] for r in reports], "paired": pooled_differences(reports)}, indent=1))
        return
    import torch

    from pipeline.config import get_preset
    from pipeline.models import load_model
    from pipeline.stages.attributes import dclip_sentence
    from pipeline.toy import world as tw

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, args.weights, device="cpu", precision="fp32")
    classes = tw.make_split(0).heldout_classes()
    sents = [f"{n}, {dclip_sentence(d)}" for n, ds in classes.items() for d in ds]
    attr = lm.encode_texts(sents)
    ac = np.repeat(np.arange(len(classes)), [len(v) for v in classes.values()])
    all_geo = get_preset("toy-all").region_config()
    geometries = {
        "lazsl": {"source": "crops", "n_crops": all_geo.n_crops, "crop_min": all_geo.crop_min,
                  "crop_max": all_geo.crop_max, "seed": all_geo.seed},
        "bound": get_preset("toy-bound").region_config().geometry(),
    }
    report = {"command": "python benchmarks/bench_object_scales.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "weights": args.weights, "fingerprint": lm.fingerprint, "seed": args.seed,
              "n_per_class": args.n_per_class, "classes": len(classes),
              "regions": {"lazsl": "full + 60 crops U(0.5, 0.9) (toy-all's crops)",
                          "bound": "toy-bound: full + 60 crops, log-uniform side in [0.15, 0.9]"},
              "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
              "top1": {}}
    for setting in args.settings.split(","):
        for scale in (float(x) for x in args.scales.split(",")):
            t0 = time.perf_counter()
            items = list(world_scenes(setting, scale, args.seed, args.n_per_class))
            row = score_world(lm, (attr, ac), items, geometries)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            report["top1"].setdefault(setting, {})[f"x{scale:g}"] = row
            report["summary"] = summarise({s: {k: {r: v[r] for r in ROWS} for k, v in w.items()}
                                           for s, w in report["top1"].items()})
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    report["env"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
