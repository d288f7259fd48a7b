"""CZSL metrics on the compositional toy world, and mutual knowledge across models, through the stages.

    PYTHONPATH=$PWD python benchmarks/bench_compositional.py czsl --seed 2 --tune-seed 1
    PYTHONPATH=$PWD python benchmarks/bench_compositional.py mk --seed 2

Everything runs through the stage functions the command line calls, into stores under
``--work`` (kept, so ``pipeline sql`` / ``explain`` / ``report`` can look at them afterwards).

``czsl``: the world of ``pipeline make-composeworld`` (split 0: 24 seen pairs, 12 unseen, 12
open-world-only), ``toy-compose``. The equivalent commands::

    pipeline make-composeworld -o W --seed 2 --n-per-pair 10
    pipeline build-attributes --states W/states.txt --objects W/objects.txt --pairs W/pairs.txt \\
        --seen W/seen_pairs.txt --open-world --attributes-states W/attributes_states.json \\
        --attributes-objects W/attributes_objects.json --pretrained toy-compose --store S
    pipeline index-images W/images --n-crops 40 --crop-min 0.4 --store S
    pipeline classify --method clip,czsl-clip,dclip,czsl-dclip --store S
    pipeline classify --method lazsl,czsl-local --theta 0.95 --top-k 0 --store S
    pipeline classify --method czsl-local --theta 0.95 --open-world --store S
    pipeline evaluate --store S

Methods: ``clip`` (name only, "a photo of a {state} {object}."), ``dclip`` and ``lazsl`` (the
plain methods on the pairs' descriptors: the pair branch alone), and the czsl-* methods (pair,
state and object branches combined as MSCI, weights 1/1/1; ``(0.1,0.9,0.9)``: MSCI's
closed-world weights). The plain methods score every stored pair, so their closed-world figures
mask the open-world-only pairs and their open-world figures are direct; the czsl-* methods are
run once per world. LaZSL's crop_min and theta are picked on ``--tune-seed`` (fewer images) by
the closed-world best HM of ``czsl-local``, and the open-world feasibility threshold by the
open-world AUC of ``czsl-local`` there too (MSCI picks it on validation AUC); the figures are
reported on ``--seed``. Pointing (``czsl-local``, correct predictions, from ``pair_regions``):
the share of the ground-truth state box (object's distinctive part box) inside the region that
carried most of the state (object), against the mean over the regions that carried any.

``mk``: ``pipeline mutual-knowledge`` and ``pipeline compare`` on the compositional world
(closed-world pairs, predicted by ``clip`` with the class names, as the paper; class text = the
name prompt) and on the bird world (held-out classes with made-up names, predicted by ``dclip``;
class text = the mean of its DCLIP prompts, ``--class-text run``), for the toy model trained on
each world, the other world's toy model and random weights of both architectures. Concept
bank: each world's descriptors and clutter texts (``--bank``), no class names.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.config import RegionConfig
from pipeline.stages.methods import MethodConfig
from pipeline.toy import compose_world as cw  # noqa: E402
from pipeline.toy import world as tw  # noqa: E402


def _pct(m: dict, keys=("closed_seen", "closed_unseen", "closed_hm", "closed_auc", "open_seen", "open_unseen", "open_hm",
                        "open_auc", "state_acc", "object_acc", "acc1")) -> dict:
    return {k: (None if m.get(k) is None or m[k] != m[k] else round(100 * m[k], 2)) for k in keys}


def compose_store(path: Path, model, seed: int, n_per_pair: int, n_crops: int, crop_min: float, open_world: bool = True):
    """World + store through the stages (make-composeworld, build-attributes, index-images)."""
    from pipeline.stages.compositional import build_compositional, read_vocabulary
    from pipeline.stages.index_images import index_images
    from stores.catalog import Catalog

    shutil.rmtree(path, ignore_errors=True)
    world = path / "world"
    cw.make_compose_world(world, n_per_pair=n_per_pair, seed=seed)
    with Catalog(path / "store") as cat:
        vocab = read_vocabulary(world / "states.txt", world / "objects.txt", world / "pairs.txt", world / "seen_pairs.txt",
                                open_world=open_world)
        build_compositional(cat, model, vocab, attributes_states=world / "attributes_states.json",
                            attributes_objects=world / "attributes_objects.json", progress=False)
        index_images(cat, model, [str(world / "images")], RegionConfig(n_crops=n_crops, crop_min=crop_min),
                     progress=False)
    return world, path / "store"


def run_and_evaluate(store: Path, model, runs: dict[str, tuple[str, MethodConfig]]) -> dict:
    from pipeline.stages.classify import classify
    from pipeline.stages.evaluate import evaluate_run
    from stores.catalog import Catalog

    out = {}
    with Catalog(store) as cat:
        for name, (method, cfg) in runs.items():
            t0 = time.time()
            rid = classify(cat, method, cfg, model=model, progress=False).run_id
            out[name] = {"run_id": rid, "seconds": round(time.time() - t0, 1), **_pct(evaluate_run(cat, rid).metrics)}
    return out


def pointing(store: Path, run_id: int, world: Path) -> dict:
    """From the stored pair_regions: does the region that carried the state (object) hold its box?"""
    from stores.catalog import Catalog

    boxes = {}
    for line in (world / "boxes.jsonl").read_text().splitlines():
        r = json.loads(line)
        boxes.setdefault(str((world / r["image"]).resolve()), {})[r["kind"]] = r["box"]

    def held(box, region):  # share of the box inside the region
        ix = max(0.0, min(box[2], region[2]) - max(box[0], region[0]))
        iy = max(0.0, min(box[3], region[3]) - max(box[1], region[1]))
        return ix * iy / max(1e-9, (box[2] - box[0]) * (box[3] - box[1]))

    with Catalog(store, read_only=True) as cat:
        rows = cat.query(
            "SELECT i.path, pr.image_id, pr.state_weight, pr.object_weight, r.x0, r.y0, r.x1, r.y1 FROM pair_regions pr "
            "JOIN regions r USING (region_id) JOIN images i ON i.image_id = pr.image_id "
            "JOIN classes c ON c.class_id = pr.class_id WHERE pr.run_id = ? "
            "AND lower(replace(i.label, '_', ' ')) = c.norm_name", [run_id]).fetchall()
    by_image: dict = {}
    for path, img, ws, wo, *box in rows:
        by_image.setdefault((path, img), []).append((ws, wo, box))
    out = {k: [] for k in ("top_state_region_state_cover", "mean_region_state_cover", "top_object_region_part_cover",
                           "mean_region_part_cover")}
    for (path, _), regs in by_image.items():
        b = boxes[str(Path(path).resolve())]
        ws = np.array([r[0] for r in regs])
        wo = np.array([r[1] for r in regs])
        cs = np.array([held(b["state"], r[2]) for r in regs])
        cp = np.array([held(b["object_part"], r[2]) for r in regs])
        out["top_state_region_state_cover"].append(cs[np.argmax(ws)])
        out["mean_region_state_cover"].append(cs.mean())
        out["top_object_region_part_cover"].append(cp[np.argmax(wo)])
        out["mean_region_part_cover"].append(cp.mean())
    res = {k: round(float(np.mean(v)), 4) for k, v in out.items()}
    res["n_images"] = len(by_image)
    return res


def run_czsl(a) -> dict:
    import torch

    from pipeline.models import load_model
    from pipeline.stages.classify import classify
    from pipeline.stages.evaluate import evaluate_run
    from stores import tables
    from stores.catalog import Catalog

    torch.set_num_threads(a.threads)
    t0 = time.time()
    model = load_model(a.model, a.weights, device="cpu")
    work = Path(a.work)
    # ---- tuning seed: crop_min x theta by closed-world HM of czsl-local, then the feasibility threshold
    tuning, best = [], None
    for crop_min in a.crop_min_grid:
        _, store = compose_store(work / f"tune-{crop_min}", model, a.tune_seed, a.tune_n_per_pair, a.n_crops, crop_min)
        res = run_and_evaluate(store, model, {f"theta {t}": ("czsl-local", MethodConfig(theta=t)) for t in a.theta_grid})
        for t in a.theta_grid:
            r = res[f"theta {t}"]
            tuning.append({"crop_min": crop_min, "theta": t, "closed_hm": r["closed_hm"], "closed_auc": r["closed_auc"]})
            if best is None or r["closed_hm"] > best[0]:
                best = (r["closed_hm"], crop_min, t)
    _, crop_min, theta = best
    with Catalog(work / f"tune-{crop_min}" / "store") as cat:
        fp = cat.model
        pairs = tables.czsl_pair_rows(cat)
        from pipeline.stages.compositional import _feasibility

        f = _feasibility(cat, pairs, -1.0)
        scores = np.sort(np.asarray(f.score)[~np.array([bool(p["seen"]) for p in pairs])])
        grid = [-1.0] + [float(v) + 1e-6 for v in np.quantile(scores, [0.1, 0.25, 0.5, 0.75])]
        feas_tuning = []
        for thr in grid:
            rid = classify(cat, "czsl-local", MethodConfig(theta=theta, open_world=True, feasibility_threshold=thr),
                           model=model, progress=False).run_id
            m = evaluate_run(cat, rid).metrics
            feas_tuning.append({"threshold": round(thr, 4), "open_auc": round(100 * m["open_auc"], 2),
                                "removed": int(cat.query("SELECT count(*) FROM pair_feasibility WHERE run_id = ? AND removed",
                                                         [rid]).fetchone()[0])})
    thr = max(feas_tuning, key=lambda r: (r["open_auc"], -r["removed"]))["threshold"]
    # ---- the evaluation seed
    world, store = compose_store(work / "eval", model, a.seed, a.n_per_pair, a.n_crops, crop_min)
    msci = dict(pair_weight=0.1, state_weight=0.9, object_weight=0.9)
    runs = {
        "clip": ("clip", MethodConfig()),
        "czsl-clip": ("czsl-clip", MethodConfig()),
        "czsl-clip (0.1,0.9,0.9)": ("czsl-clip", MethodConfig(**msci)),
        "dclip": ("dclip", MethodConfig()),
        "czsl-dclip": ("czsl-dclip", MethodConfig()),
        "lazsl": ("lazsl", MethodConfig(theta=theta, top_k=0)),
        "czsl-local": ("czsl-local", MethodConfig(theta=theta)),
        "czsl-local (0.1,0.9,0.9)": ("czsl-local", MethodConfig(theta=theta, **msci)),
        "czsl-clip open": ("czsl-clip", MethodConfig(open_world=True)),
        "czsl-dclip open": ("czsl-dclip", MethodConfig(open_world=True)),
        "czsl-local open": ("czsl-local", MethodConfig(theta=theta, open_world=True)),
    }
    if thr > -1.0:
        runs["czsl-local open + feasibility"] = ("czsl-local", MethodConfig(theta=theta, open_world=True,
                                                                           feasibility_threshold=thr))
    res = run_and_evaluate(store, model, runs)
    split = cw.make_pair_split(0)
    return {
        "world": {"eval_seed": a.seed, "tune_seed": a.tune_seed, "n_per_pair": a.n_per_pair, "n_seen_pairs": len(split.seen),
                  "n_unseen_pairs": len(split.unseen), "n_open_only_pairs": len(split.open_only), "store": str(store)},
        "model": {"name": a.model, "weights": a.weights, "fingerprint": fp},
        "lazsl": {"n_crops": a.n_crops, "crop_min": crop_min, "theta": theta, "tuning": tuning},
        "feasibility": {"threshold": thr, "tuning": feas_tuning},
        "methods": res,
        "pointing_czsl_local": pointing(store, res["czsl-local"]["run_id"], world),
        "seconds": round(time.time() - t0, 1),
    }


# --------------------------------------------------------------------------- mutual knowledge
def bird_store(path: Path, model, seed: int, n_per_class: int):
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.index_images import index_images
    from stores.catalog import Catalog

    shutil.rmtree(path, ignore_errors=True)
    world = path / "world"
    tw.make_toyworld(world, n_per_class=n_per_class, seed=seed, setting="parts")
    bank = [tw.descriptor(p, v) for p in tw.PART_NAMES for v in tw.PARTS[p][0]] + cw.clutter_texts()
    (world / "concepts.txt").write_text("".join(f"{t}\n" for t in bank))
    with Catalog(path / "store") as cat:
        import_attribute_file(cat, model, world / "attributes.json", progress=False)
        index_images(cat, model, [str(world / "images")], RegionConfig(n_crops=1), progress=False)
    return world, path / "store"


def run_mk(a) -> dict:
    import torch

    from pipeline.models import load_model
    from pipeline.stages.classify import classify
    from pipeline.stages.mutual_knowledge import ConceptConfig, compare_stores, explain_concepts
    from stores.catalog import Catalog

    torch.set_num_threads(a.threads)
    t0 = time.time()
    work = Path(a.work)
    out = {"params": {**ConceptConfig().__dict__, "seed": a.seed, "compose_per_pair": a.mk_per_pair,
                      "birds_per_class": a.mk_per_class}, "worlds": {}}
    for world_name in a.mk_worlds:
        stores = []
        for spec in a.mk_models:
            name, weights = spec.split(":", 1)
            model = load_model(name, weights, device="cpu")
            path = work / f"mk-{world_name}-{name}-{weights.replace(':', '')}"
            if world_name == "compose":
                world, store = compose_store(path, model, a.seed, a.mk_per_pair, 1, 0.5, open_world=False)
                method, class_text = "clip", "name"
            else:
                world, store = bird_store(path, model, a.seed, a.mk_per_class)
                method, class_text = "dclip", "run"
            with Catalog(store) as cat:
                rid = classify(cat, method, MethodConfig(), model=model, progress=False).run_id
                explain_concepts(cat, model, rid, config=ConceptConfig(class_text=class_text),
                                 bank_file=world / "concepts.txt", progress=False)
            stores.append(str(store))
        rows = compare_stores(stores, compute=False)
        out["worlds"][world_name] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="CZSL metrics and mutual knowledge on the toy worlds, through the stages "
                                             "(prints JSON).")
    ap.add_argument("what", choices=("czsl", "mk"))
    ap.add_argument("--work", default="/tmp/bench-compositional", help="Folder for the worlds and stores (replaced).")
    ap.add_argument("--model", default="zsl-compose")
    ap.add_argument("--weights", default="toy-compose")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--tune-seed", type=int, default=1)
    ap.add_argument("--n-per-pair", type=int, default=10)
    ap.add_argument("--tune-n-per-pair", type=int, default=5)
    ap.add_argument("--n-crops", type=int, default=40)
    ap.add_argument("--crop-min-grid", type=float, nargs="+", default=[0.4, 0.5])
    ap.add_argument("--theta-grid", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    ap.add_argument("--mk-per-pair", type=int, default=4)
    ap.add_argument("--mk-per-class", type=int, default=10)
    ap.add_argument("--mk-models", nargs="+", default=["zsl-compose:toy-compose", "zsl-tiny:toy-clip", "zsl-tiny:random:0",
                                                        "zsl-compose:random:0"], help="MODEL:WEIGHTS, one store each")
    ap.add_argument("--mk-worlds", nargs="+", default=["compose", "birds"], choices=["compose", "birds"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    print(json.dumps(run_czsl(a) if a.what == "czsl" else run_mk(a), indent=1))


if __name__ == "__main__":
    main()
