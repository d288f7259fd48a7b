"""Every method on the toy worlds through the stages, and every method's query cost at 1,000
classes. Prints one JSON object, measured in one run.

    PYTHONPATH=$PWD python benchmarks/bench_methods.py --seed 1000 --n-per-class 20 --work /tmp/bench-methods

(a) ``toy``: for each setting (``parts``, ``distractors``), the held-out classes of
``make_toyworld(setting, seed)`` go through the product, as a user runs it:
``build-attributes`` (the world's descriptors, ``toy-clip``), ``index-images`` with the
``toy-all`` preset (full view + 60 crops of side U(0.5, 0.9) + 60 part crops U(0.3, 0.5) + AWT's
50 views), then ``classify`` with every method and ``evaluate``. Top-1, top-5 (12 classes;
chance 8.3% / 41.7%) and ``classify``'s wall time per image (texts encoded beforehand, as a
store holds them after the first run; regions read from the store, results written; one thread). ``regions_per_image`` is what that method
needs encoded per image; ``index_ms_per_region`` converts it to encoding time. The store of
each setting is kept under ``--work`` and re-used (re-indexing known images is a no-op).

Methods and their settings (``toy-all``: θ 0.8, every class scored):

* ``clip``, ``clip-e``, ``dclip``, ``cupl`` (the store has descriptors only: the normalised
  mean of their embeddings), ``wca`` (its 20 draws of 60 crops), ``lazsl`` (the 60 crops);
* ``awt`` (AWT's texts: descriptors + ``"a photo of a {c}."``) and ``awt (descriptors)``;
* ``waffle``: WaffleCLIP, ``"{c}, which has {random}"`` (the store's DCLIP form), mean ± std
  of top-1 over ``--waffle-seeds`` seeds (one run each); ``waffle (paper)`` with the paper's
  ``"A photo of a {c}, which has {random}."``;
* ``dclip-nameless`` (each descriptor alone + ``"a photo of a {c}."``, arXiv 2412.11917) and
  ``dclip-nameless (none)`` (the descriptors alone, no name anywhere);
* ``object-bound`` (full view + crops + parts; its objects' boxes are compared with the birds').

The toy world's class names are made up, so a name carries nothing: every gain over ``clip``
comes from the descriptors (the controls ``waffle`` and ``dclip-nameless`` say how much).

(b) ``imagenet_shaped``: per-image query time of every method at 1,000 classes on the synthetic
ImageNet-shaped problem of ``benchmarks/bench_query.py`` (real DCLIP descriptor counts,
D = 512; 121 regions: full + 120 crops), the pure functions alone, one thread, best of
``--repeat``. Shortlisted variants include the shortlist (prototype cosines, top-k).
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

PRESET = "toy-all"
#: (row label, method, config overrides, regions the method needs encoded per image)
TOY_METHODS = [
    ("clip", "clip", {}, "full"),
    ("clip-e", "clip-e", {}, "full"),
    ("dclip", "dclip", {}, "full"),
    ("cupl", "cupl", {}, "full"),
    ("waffle", "waffle", {}, "full"),  # WaffleCLIP's prompt and the descriptors' alphabet (the defaults)
    ("waffle (paper, a-z)", "waffle", {"waffle_characters": "a-z"}, "full"),
    ("waffle (dclip, a-z)", "waffle", {"waffle_template": "dclip", "waffle_characters": "a-z"}, "full"),  # the old default
    ("dclip-nameless", "dclip-nameless", {}, "full"),
    ("dclip-nameless (none)", "dclip-nameless", {"nameless": "none"}, "full"),
    ("wca", "wca", {}, "crops"),
    ("lazsl", "lazsl", {}, "crops"),
    ("awt", "awt", {}, "views"),  # the toy world has no AWT descriptions: descriptors + class prompt
    ("awt (descriptors)", "awt", {"awt_texts": "descriptors"}, "views"),
    ("object-bound", "object-bound", {}, "crops+parts"),
]


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / u if u > 0 else 0.0


# ------------------------------------------------------------------ (a) toy worlds
def toy_setting(model, setting: str, args) -> dict:
    from pipeline.config import get_preset
    from pipeline.stages.methods import resolve_method_config
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.classify import classify_runs, method_texts
    from pipeline.stages.evaluate import evaluate_run
    from pipeline.stages.index_images import index_images
    from pipeline.toy.world import make_toyworld
    from stores import tables
    from stores.catalog import Catalog

    rows = [r for r in TOY_METHODS if not args.methods or r[1] in args.methods.split(",")]
    full_only = all(needs == "full" for *_, needs in rows)  # then index the full view (and one crop) only
    root = Path(args.work) / (f"{setting}-seed{args.seed}-n{args.n_per_class}" + ("-full" if full_only else ""))
    world = root / "world"
    if not (world / "world.json").is_file():
        make_toyworld(world, n_per_class=args.n_per_class, seed=args.seed, setting=setting)
    preset = get_preset(PRESET)
    regions = preset.region_config()
    if full_only:
        regions = replace(regions, n_crops=1, n_parts=0, n_views=0)
    out: dict = {}
    with Catalog(root / "store") as cat:
        import_attribute_file(cat, model, world / "attributes.json", progress=False)
        t0 = time.perf_counter()
        rep = index_images(cat, model, [str(world / "images")], regions, preset=None if full_only else PRESET, workers=0,
                           progress=False)
        n_img = tables.image_count(cat)
        per_image = {"full": 1, "crops": 1 + regions.n_crops, "views": 1 + regions.n_views,
                     "crops+parts": 1 + regions.n_crops + regions.n_parts}
        out["index"] = {"images": n_img, "regions_per_image": 1 + regions.n_crops + regions.n_parts + regions.n_views,
                        "seconds": round(time.perf_counter() - t0, 2), "indexed_now": rep.indexed}
        if rep.indexed:  # encoding time only when this run encoded them (else the store was re-used)
            out["index"]["index_ms_per_region"] = round(1000 * rep.seconds / max(1, rep.regions), 4)
        base = resolve_method_config({}, PRESET).config
        methods = {}
        for label, method, overrides, needs in rows:
            seeds = args.waffle_seeds if method == "waffle" else 1
            cfg = base.updated(**overrides, waffle_seeds=seeds)
            for i in range(seeds):  # texts are encoded once per store: not part of the timed query
                method_texts(cat, method, cfg.updated(seed=cfg.seed + i), model)
            reports = classify_runs(cat, method, cfg, model=model, provenance={"preset": PRESET}, progress=False)
            evals = [evaluate_run(cat, r.run_id) for r in reports]
            top1 = np.array([e.metrics["acc1"] for e in evals])
            top5 = np.array([e.metrics["acc5"] for e in evals])
            row = {"top1": round(float(top1.mean()), 4), "top5": round(float(top5.mean()), 4),
                   "ms_per_image": round(1000 * float(np.mean([r.seconds for r in reports])) / n_img, 2),
                   "regions_per_image": per_image[needs], "runs": [r.run_id for r in reports]}
            if seeds > 1:
                row |= {"top1_std": round(float(top1.std()), 4), "top5_std": round(float(top5.std()), 4),
                        "seeds": [r.params["config"]["seed"] for r in reports],
                        "top1_per_seed": [round(float(a), 4) for a in top1]}
            if method == "wca":
                row["top1_per_draw_mean"] = round(evals[0].metrics["acc1_per_draw_mean"], 4)
            methods[label] = row
            if method == "object-bound":
                out["object_bound_diagnostics"] = object_diagnostics(cat, reports[0].run_id, world)
        out["methods"] = methods
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
    }
    out = {}
    for name, fn in runs.items():
        sec, _ = timed(fn, args.repeat)
        out[name] = {"ms_per_image": round(1000 * sec / n_img, 3)}
    ob = object_bound_scores(regions, boxes, attr, ac, sl(50), return_plan=False)
    return {
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
    ap.add_argument("--seed", type=int, default=1000, help="toy world image seed (held out: object-bound was tuned on 7)")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--settings", default="parts,distractors")
    ap.add_argument("--work", default="bench-methods-work", help="folder for the toy worlds and their stores (re-used)")
    ap.add_argument("--waffle-seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=16, help="(b) images of the synthetic 1,000-class problem")
    ap.add_argument("--descriptors", default=next(
        (str(p) for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()), "shared"
    ) + "/data/descriptors/dclip/descriptors_imagenet.json", help="DCLIP ImageNet descriptors (only their counts are used)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-toy", action="store_true")
    ap.add_argument("--skip-imagenet", action="store_true")
    ap.add_argument("--methods", default="", help="only the toy rows of these methods (comma list); with methods "
                                                    "that read the full view only, only it is indexed")
    ap.add_argument("--json-out", default=None, help="also write the report here, rewritten after every part")
    args = ap.parse_args(argv)
    if not args.skip_imagenet:  # checked before the toy worlds' minutes of work
        require_file(args.descriptors, "--descriptors", "DCLIP ImageNet descriptors from ../shared; or --skip-imagenet")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = PartialJson(args.json_out, {
        "command": "python benchmarks/bench_methods.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version()},
    })
    if not args.skip_toy:
        from pipeline.models import load_model

        model = load_model(None, "toy-clip", device="cpu")
        toy = {"weights": "toy-clip", "fingerprint": model.fingerprint, "seed": args.seed,
               "n_per_class": args.n_per_class, "preset": PRESET, "settings": {}}
        for s in args.settings.split(","):
            toy["settings"][s] = toy_setting(model, s, args)
            out.set("toy", toy)
    if not args.skip_imagenet:
        out.set("imagenet_shaped", imagenet_shaped(args))
    out.report["env"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out.finish()


if __name__ == "__main__":
    main()
