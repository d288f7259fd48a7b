"""Every method on the toy worlds through the stages, on both shipped encoders and at three
bird scales, and every method's query cost at 1,000 classes. Prints one JSON object, measured
in one run (and writes it, as far as it got, to ``--work``/partial.json after every world).

    PYTHONPATH=$PWD python benchmarks/bench_methods.py --seed 1000 --n-per-class 10 --work /tmp/bench-methods

(a) ``toy``: for each encoder (``--weights``: ``toy-clip``, trained with captions grouped per
bird, and ``toy-clip-unbound``, trained on the same scenes with captions that do not say which
bird has which), each setting (``parts``, ``distractors``) and each bird scale (``--scales``,
``make-toyworld --object-scale``), the held-out classes of the world go through the product,
as a user runs it: ``build-attributes`` (the world's descriptors), ``index-images`` with a
preset, ``classify`` with every row's method and ``evaluate``. Two stores per world:

* ``toy-all``: full view + 60 crops U(0.5, 0.9) (LaZSL's) + 60 part crops U(0.3, 0.5) + AWT's
  50 views; every baseline runs here, and object-bound and the controls over the 121
  crops + parts (the design the issue audited);
* ``toy-bound``: object-bound's default, full view + 60 crops of log-uniform side in
  [0.15, 0.9] (scale-free: no size tuned to one world); object-bound and its controls
  ``best-region`` (the best single crop's DCLIP score) and ``crop-dclip`` (the mean over
  crops of the DCLIP score) read exactly these regions.

Top-1, top-5 (12 classes; chance 8.3% / 41.7%) and ``classify``'s wall time per image (texts
encoded beforehand; regions read from the store, results written; one thread).
``regions_per_image`` is what that row reads per image. At scale 1 every row runs; at the
other scales the rows of ``SCALE_METHODS``. ``summary``: top-1 per scale and its mean over the
scales for each setting, and object-bound's margins over LaZSL, best-region and the best
control. Stores are kept under ``--work`` and re-used (re-indexing known images is a no-op).

The toy world's class names are made up, so a name carries nothing: every gain over ``clip``
comes from the descriptors (the controls ``waffle`` and ``dclip-nameless`` say how much).

(b) ``imagenet_shaped``: per-image query time of every method at 1,000 classes on the synthetic
ImageNet-shaped problem of ``benchmarks/bench_query.py`` (real DCLIP descriptor counts,
D = 512), the pure functions alone, one thread, best of ``--repeat``; ``ratio_to_lazsl_k50``
divides object-bound's times by LaZSL's (90 crops, k = 50) of the same run. Shortlisted
variants include the shortlist (prototype cosines, top-k).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import PartialJson, require_file  # noqa: E402
from queries import class_prototypes, shortlist_candidates  # noqa: E402
from queries.awt import awt_scores  # noqa: E402
from queries.baselines import clip_scores, dclip_scores, wca_scores  # noqa: E402
from queries.binding import object_bound_scores  # noqa: E402
from queries.lazsl import lazsl_scores  # noqa: E402
from queries.regions import random_square_crops  # noqa: E402

PRESET = "toy-all"  # LaZSL's 60 crops U(0.5, 0.9) + 60 part crops U(0.3, 0.5) + AWT's 50 views
BOUND_PRESET = "toy-bound"  # object-bound's default: full + 60 scale-free crops (log-uniform sides)
#: (row label, method, config overrides, regions the method reads per image, preset of the store it runs on)
TOY_METHODS = [
    ("clip", "clip", {}, "full", PRESET),
    ("clip-e", "clip-e", {}, "full", PRESET),
    ("dclip", "dclip", {}, "full", PRESET),
    ("cupl", "cupl", {}, "full", PRESET),
    ("waffle", "waffle", {}, "full", PRESET),
    ("waffle (paper, a-z)", "waffle", {"waffle_characters": "a-z"}, "full", PRESET),
    ("waffle (dclip, a-z)", "waffle", {"waffle_template": "dclip", "waffle_characters": "a-z"}, "full", PRESET),
    ("dclip-nameless", "dclip-nameless", {}, "full", PRESET),
    ("dclip-nameless (none)", "dclip-nameless", {"nameless": "none"}, "full", PRESET),
    ("wca", "wca", {}, "crops", PRESET),
    ("lazsl", "lazsl", {}, "crops", PRESET),
    ("awt", "awt", {}, "views", PRESET),
    ("awt (descriptors)", "awt", {"awt_texts": "descriptors"}, "views", PRESET),
    ("best-region (121: crops+parts)", "best-region", {"control_parts": True}, "crops+parts", PRESET),
    ("crop-dclip (121: crops+parts)", "crop-dclip", {"control_parts": True}, "crops+parts", PRESET),
    ("object-bound (121: crops+parts)", "object-bound", {}, "crops+parts", PRESET),
    ("lazsl (toy-bound regions)", "lazsl", {}, "crops", BOUND_PRESET),
    ("best-region", "best-region", {}, "crops", BOUND_PRESET),
    ("crop-dclip", "crop-dclip", {}, "crops", BOUND_PRESET),
    ("object-bound", "object-bound", {}, "crops", BOUND_PRESET),
]
#: the rows run at every object scale (the full table runs at scale 1)
SCALE_METHODS = ("lazsl", "best-region (121: crops+parts)", "best-region", "crop-dclip", "object-bound")


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / u if u > 0 else 0.0


# ------------------------------------------------------------------ (a) toy worlds
def _indexed_store(cat, model, world: Path, preset_name: str) -> dict:
    """Index the world's images with a preset's regions; what that cost and holds."""
    from pipeline.config import get_preset
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.index_images import index_images
    from stores import tables

    regions = get_preset(preset_name).region_config()
    import_attribute_file(cat, model, world / "attributes.json", progress=False)
    t0 = time.perf_counter()
    rep = index_images(cat, model, [str(world / "images")], regions, preset=preset_name, workers=0, progress=False)
    per_image = {"full": 1, "crops": 1 + regions.n_crops, "views": 1 + regions.n_views,
                 "crops+parts": 1 + regions.n_crops + regions.n_parts}
    info = {"images": tables.image_count(cat), "regions_per_image": 1 + regions.n_crops + regions.n_parts + regions.n_views,
            "regions": regions.label() + (f" ({regions.crop_sides} sides)" if regions.crop_sides != "uniform" else ""),
            "seconds": round(time.perf_counter() - t0, 2), "indexed_now": rep.indexed, "per_image": per_image}
    if rep.indexed:  # encoding time only when this run encoded them (else the store was re-used)
        info["index_ms_per_region"] = round(1000 * rep.seconds / max(1, rep.regions), 4)
    return info


def _run_method(cat, model, method: str, overrides: dict, preset_name: str, args) -> tuple[dict, list]:
    from pipeline.stages.methods import resolve_method_config
    from pipeline.stages.classify import classify_runs, method_texts
    from pipeline.stages.evaluate import evaluate_run

    base = resolve_method_config({}, preset_name).config
    seeds = args.waffle_seeds if method == "waffle" else 1
    cfg = base.updated(**overrides, waffle_seeds=seeds)
    for i in range(seeds):  # texts are encoded once per store: not part of the timed query
        method_texts(cat, method, cfg.updated(seed=cfg.seed + i), model)
    reports = classify_runs(cat, method, cfg, model=model, provenance={"preset": preset_name}, progress=False)
    evals = [evaluate_run(cat, r.run_id) for r in reports]
    top1 = np.array([e.metrics["acc1"] for e in evals])
    top5 = np.array([e.metrics["acc5"] for e in evals])
    row = {"top1": round(float(top1.mean()), 4), "top5": round(float(top5.mean()), 4),
           "runs": [r.run_id for r in reports], "preset": preset_name}
    if seeds > 1:
        row |= {"top1_std": round(float(top1.std()), 4), "top5_std": round(float(top5.std()), 4),
                "seeds": [r.params["config"]["seed"] for r in reports],
                "top1_per_seed": [round(float(a), 4) for a in top1]}
    if method == "wca":
        row["top1_per_draw_mean"] = round(evals[0].metrics["acc1_per_draw_mean"], 4)
    return row, reports


def toy_setting(model, weights: str, setting: str, scale: float, args) -> dict:
    """One world (setting, object scale, image seed) through the product: index it with each
    preset the rows need, classify with every row's method, evaluate."""
    from pipeline.toy.world import make_toyworld, setting_scale
    from stores.catalog import Catalog

    root = Path(args.work) / f"{setting}-x{scale:g}-seed{args.seed}-n{args.n_per_class}"
    world = root / "world"
    if not (world / "world.json").is_file():
        make_toyworld(world, n_per_class=args.n_per_class, seed=args.seed, setting=setting, object_scale=scale)
    rows = [r for r in TOY_METHODS if (scale == 1.0 or r[0] in SCALE_METHODS)
            and (not args.rows or r[0] in args.rows.split(","))]
    out: dict = {"object_scale": scale, "bird_scale_range": list(setting_scale(setting, scale)), "index": {}}
    methods = {}
    for preset_name in dict.fromkeys(r[4] for r in rows):
        with Catalog(root / f"store-{weights}-{preset_name}") as cat:
            info = _indexed_store(cat, model, world, preset_name)
            n_img, per_image = info["images"], info.pop("per_image")
            out["index"][preset_name] = info
            for label, method, overrides, needs, p in rows:
                if p != preset_name:
                    continue
                row, reports = _run_method(cat, model, method, overrides, preset_name, args)
                row["ms_per_image"] = round(1000 * float(np.mean([r.seconds for r in reports])) / n_img, 2)
                row["regions_per_image"] = per_image[needs]
                methods[label] = row
                if method == "object-bound":
                    out.setdefault("object_bound_diagnostics", {})[label] = object_diagnostics(cat, reports[0].run_id, world)
    out["methods"] = methods
    return out


def summarise(settings: dict) -> dict:
    """Top-1 across the object scales per setting, and object-bound's margins over the controls."""
    out = {}
    for setting, by_scale in settings.items():
        rows = {}
        for label in SCALE_METHODS:
            vals = [w["methods"][label]["top1"] for w in by_scale.values() if label in w["methods"]]
            if vals:
                rows[label] = {"per_scale": vals, "mean": round(float(np.mean(vals)), 4)}
        if "object-bound" in rows:
            ob = rows["object-bound"]["mean"]
            controls = {k: v["mean"] for k, v in rows.items() if k.startswith(("best-region", "crop-dclip"))}
            best = max(controls, key=controls.get) if controls else None
            rows["margins_points"] = {
                "object-bound - lazsl": round(100 * (ob - rows["lazsl"]["mean"]), 1) if "lazsl" in rows else None,
                "object-bound - best-region": round(100 * (ob - rows["best-region"]["mean"]), 1)
                if "best-region" in rows else None,
                f"object-bound - best control ({best})": round(100 * (ob - controls[best]), 1) if best else None,
            }
        out[setting] = rows
    return out


def object_diagnostics(cat, run_id: int, world: Path) -> dict:
    """Where the winning object of the predicted class is: the full image, or which bird."""
    scenes = {}
    for line in (world / "scenes.jsonl").read_text().splitlines():
        s = json.loads(line)
        scenes[str((world / s["image"]).resolve())] = [b["bbox"] for b in s["birds"]]
    rows = cat.query(
        "select i.path, r.kind, r.x0, r.y0, r.x1, r.y1, b.n_parts from predictions p join images i using (image_id) "
        "join object_bindings b using (run_id, image_id, class_id) join regions r on r.region_id = b.region_id "
        "where p.run_id = ? and p.rank = 1", [run_id]).fetchall()
    own, other, full, parts = [], [], [], []
    for path, kind, *box, n_parts in rows:
        birds = scenes[path]
        full.append(kind == "full")
        parts.append(n_parts)
        own.append(_iou(box, birds[0]))
        if len(birds) > 1:
            other.append(_iou(box, birds[1]))
    return {
        "winning_object_is_full_image": round(float(np.mean(full)), 4),
        "winning_object_iou_with_labelled_bird": round(float(np.mean(own)), 4),
        "winning_object_iou_with_other_bird": round(float(np.mean(other)), 4) if other else None,
        "winning_object_parts_mean": round(float(np.mean(parts)), 1),
    }


# ------------------------------------------------------------------ (b) 1,000 classes
def timed(fn, repeat=1):
    best, res = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


def imagenet_shaped(args) -> dict:
    from bench_query import make_problem

    desc = json.loads(Path(args.descriptors).read_text())
    counts = np.array([max(1, len(v)) for v in desc.values()])
    C = len(counts)
    n_img, R = args.images, 120
    full, crops, attr, ac, _ = make_problem(counts, n_img, R, 512, args.seed)
    rng = np.random.default_rng(args.seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    # class texts: a name prompt per class near the class's descriptors, 30 waffle prompts
    prompt = unit(np.stack([attr[ac == c].mean(0) for c in range(C)]) + 0.3 * rng.standard_normal((C, 512)) / math.sqrt(512))
    waffle = unit(np.repeat(prompt, 30, 0) + 0.5 * rng.standard_normal((30 * C, 512)) / math.sqrt(512))
    waffle_cls = np.repeat(np.arange(C), 30)
    nf = np.concatenate([prompt, attr])
    nf_cls = np.concatenate([np.arange(C), ac])
    boxes = np.stack([
        np.concatenate([[[0, 0, 224, 224]], random_square_crops(224, 224, 60, 0.5, 0.9, rng),
                        random_square_crops(224, 224, 60, 0.3, 0.5, rng)]) for _ in range(n_img)
    ]).astype(np.float32)
    regions = np.concatenate([full[:, None], crops], 1)  # full + 120 crops
    # object-bound's default regions: the toy-bound preset's scale-free scheme (full + 60), here on 224 px images
    from pipeline.config import get_preset
    from queries.regions import region_boxes

    geometry = get_preset(BOUND_PRESET).region_config().geometry()
    n_bound = len(region_boxes(224, 224, "0" * 64, **geometry)[0])
    bound_boxes = np.stack([region_boxes(224, 224, f"{i:064x}", **geometry)[1] for i in range(n_img)]).astype(np.float32)
    bound_regions = regions[:, :n_bound]
    crops90 = crops[:, :90]  # LaZSL's ImageNet preset: 90 crops
    protos = class_prototypes(attr, ac, C)
    views = regions[:, :51]  # AWT: original + 50 views
    wca = dict(image_scale=math.exp(4.0), text_scale=math.exp(2.0), patch_n=60, n_runs=20, seed=0, score="code")

    def sl(k):
        return shortlist_candidates(full, protos, k)

    runs = {
        "clip": lambda: clip_scores(full, prompt),
        "dclip": lambda: dclip_scores(full, attr, ac, C),
        "waffle (30 texts/class)": lambda: dclip_scores(full, waffle, waffle_cls, C),
        "dclip-nameless": lambda: dclip_scores(full, nf, nf_cls, C),
        "wca (90 crops)": lambda: wca_scores(full, crops90, attr, ac, prompt, **wca).scores,
        "lazsl (90 crops, all classes)": lambda: lazsl_scores(full, crops90, attr, ac, return_plan=False).scores,
        "lazsl (90 crops, k=50)": lambda: lazsl_scores(full, crops90, attr, ac, sl(50), return_plan=False).scores,
        "awt (51 views, all classes)": lambda: awt_scores(views, attr, ac, prompt, return_plan=False).scores,
        "object-bound (121 regions, k=50)": lambda: object_bound_scores(regions, boxes, attr, ac, sl(50), return_plan=False).scores,
        "object-bound (121 regions, k=10)": lambda: object_bound_scores(regions, boxes, attr, ac, sl(10), return_plan=False).scores,
        "object-bound (61 regions, k=50)": lambda: object_bound_scores(regions[:, :61], boxes[:, :61], attr, ac, sl(50), return_plan=False).scores,
        f"object-bound ({BOUND_PRESET}: {n_bound} regions, k=50)": lambda: object_bound_scores(
            bound_regions, bound_boxes, attr, ac, sl(50), return_plan=False).scores,
    }
    out = {}
    for name, fn in runs.items():
        sec, _ = timed(fn, args.repeat)
        out[name] = {"ms_per_image": round(1000 * sec / n_img, 3)}
    ob = object_bound_scores(regions, boxes, attr, ac, sl(50), return_plan=False)
    obb = object_bound_scores(bound_regions, bound_boxes, attr, ac, sl(50), return_plan=False)
    lz = out["lazsl (90 crops, k=50)"]["ms_per_image"]
    return {
        "ratio_to_lazsl_k50": {k: round(v["ms_per_image"] / lz, 2) for k, v in out.items() if k.startswith("object-bound")},
        f"object_bound_{BOUND_PRESET}_candidate_objects_per_image": round(float((obb.n_parts > 0).sum(1).mean()), 1),
        "classes": int(C),
        "descriptors_per_class_mean": round(float(counts.mean()), 2),
        "images": n_img,
        "dim": 512,
        "object_bound_candidate_objects_per_image": round(float((ob.n_parts > 0).sum(1).mean()), 1),
        "object_bound_ot_problems_per_image_k50": round(float(ob.n_solved.mean()), 1),
        "methods": out,
        "note": "texts (prompts, waffle) are synthetic near-class vectors; times do not depend on their content",
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1000, help="toy world image seed (held out: object-bound and its "
                    "scale-free regions were tuned on 7)")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--weights", default="toy-clip",
                    help="shipped encoders to run the toy table on, comma-separated; add toy-clip-unbound (the "
                    "weak-binding encoder, python -m pipeline.toy.train --captions unbound) once it is trained")
    ap.add_argument("--scales", default="0.5,1,1.5", help="bird scales (make-toyworld --object-scale); the full "
                    "table runs at 1, the others run " + ", ".join(SCALE_METHODS))
    ap.add_argument("--settings", default="parts,distractors")
    ap.add_argument("--work", default="bench-methods-work", help="folder for the toy worlds and their stores (re-used), "
                    "and partial.json, the report so far")
    ap.add_argument("--waffle-seeds", type=int, default=5)
    ap.add_argument("--rows", default="", help="only these rows of the toy table, comma-separated labels "
                    "(e.g. lazsl,best-region,crop-dclip,object-bound); default every row")
    ap.add_argument("--images", type=int, default=16, help="(b) images of the synthetic 1,000-class problem")
    ap.add_argument("--descriptors", default=next(
        (str(p) for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()), "shared"
    ) + "/data/descriptors/dclip/descriptors_imagenet.json", help="DCLIP ImageNet descriptors (only their counts are used)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-toy", action="store_true")
    ap.add_argument("--skip-imagenet", action="store_true")
    ap.add_argument("--json-out", default=None, help="also write the report here, rewritten after every world "
                    "(\"complete\": false until the end)")
    args = ap.parse_args(argv)
    if not args.skip_imagenet:  # checked before the toy worlds' minutes of work
        require_file(args.descriptors, "--descriptors", "DCLIP ImageNet descriptors from ../shared; or --skip-imagenet")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = PartialJson(args.json_out or Path(args.work) / "partial.json", {
        "command": "python benchmarks/bench_methods.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version()},
    })
    if not args.skip_imagenet:
        out.set("imagenet_shaped", imagenet_shaped(args))
    if not args.skip_toy:
        from pipeline.models import load_model

        toy: dict = {}
        scales = [float(x) for x in args.scales.split(",")]
        for weights in args.weights.split(","):
            model = load_model(None, weights, device="cpu")
            entry = toy[weights] = {
                "fingerprint": model.fingerprint, "seed": args.seed, "n_per_class": args.n_per_class,
                "presets": [PRESET, BOUND_PRESET], "settings": {}}
            for s in args.settings.split(","):
                for scale in scales:
                    entry["settings"].setdefault(s, {})[f"x{scale:g}"] = toy_setting(model, weights, s, scale, args)
                    entry["summary"] = summarise(entry["settings"])
                    out.set("toy", toy)  # what is measured so far, after every world
    out.report["env"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out.finish()

if __name__ == "__main__":
    main()
