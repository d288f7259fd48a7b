"""Compare attribution-map kinds on the demo's toy world, as the field measures maps (prints JSON).

    PYTHONPATH=$PWD python benchmarks/bench_explain_maps.py --seed 1            # the table
    PYTHONPATH=$PWD python benchmarks/bench_explain_maps.py --mode speed        # maps/s, ViT-B-32, CPU

``--mode table`` builds the demo's world and store for real (``make_toyworld(seed, parts)``,
30 crops with crop_min 0.5, LaZSL θ 0.8, all classes; :mod:`benchmarks.explain_world`), makes
every map kind for every image, and measures:

* **pointing** (Zhang et al.): for each of the *true* class's 4 attributes, is the map's
  hottest point inside the part's ground-truth box grown by 8 px (128 px images)? A flat map
  is a miss. ``chance`` = grown box area / image area. ``queries.explain.pointing_game``;
  ``quantus.PointingGame`` on the same maps is run as a cross-check (``agreement``).
* **deletion / insertion** (RISE): pixels ordered by the predicted class's map, replaced by
  (deletion) or revealed from (insertion) a Gaussian blur (σ = 1/20 of the side) in
  ``--steps`` steps; AUC of the class's softmax probability. Lower deletion, higher insertion.
* **ROAD** (Rong et al. 2022) with the ``grad-cam`` package's noisy linear imputation: the
  probability after removing the most (MoRF, lower is better) or least (LeRF, higher is
  better) relevant 10/30/50% of the pixels, averaged; ``road`` = (LeRF − MoRF)/2, the
  package's ROADCombined (higher is better).
* Two re-scorers: ``global`` (the class's global DCLIP score, the full view only, what
  ``pipeline faithfulness`` uses by default) on every ``--every``-th image, and ``lazsl``
  (LaZSL re-run on the full view and the 30 crops, the classifier itself) on every
  ``--lazsl-every``-th image.
* every figure has a bootstrap 95% interval over images, and every kind its paired difference
  to the random maps (``vs_random``).

Map kinds (attribute maps for pointing; class maps for the rest):

* ``plan_dense`` (default design): the LaZSL plan's crop masses placed inside each crop by
  the crop's own SCLIP-style patch tokens (blocks -1 and -2), attribute-contrasted,
  τ = 1/logit_scale (:mod:`queries.plan_maps`).
* ``crop_boxes``: the shipped map (mass spread over crop boxes with the coverage prior).
* ``patches_<v>``: LaZSL run over the full image's dense patch tokens of variant v as regions
  (``index-images --regions patches`` with that variant); the map is the plan on the cells.
* ``sim_plain`` / ``sim_sclip``: cosine of the full image's patch tokens to the text.
* ``gradcam``: Grad-CAM on the image tower's last block for the text (``grad-cam`` package).
* ``occlusion``: 16 px windows, stride ``--occ-stride``, blur fill, drop of the class's LaZSL
  softmax probability (attribute maps: drop of the attribute's contribution); only on the
  ``--lazsl-every`` subset (its cost).
* ``random``: U(0, 1) on an 8×8 grid, bilinear.

``--mode speed`` times each map kind on ``ViT-B-32`` with random weights on the CPU (90 crops,
LaZSL's ImageNet preset, 224 px images, 5 attributes): maps per second per (image, class).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

KINDS_ALL = ["plan_dense", "crop_boxes", "patches_plain", "patches_maskclip", "patches_clearclip", "patches_sclip",
             "patches_layers", "sim_plain", "sim_sclip", "gradcam", "occlusion", "random"]
PATCH_SPECS = {"plain": dict(variant="plain"), "maskclip": dict(variant="maskclip"),
               "clearclip": dict(variant="clearclip"), "sclip": dict(variant="sclip"),
               "layers": dict(variant="layers", layers=(-2,))}
ROAD_FRACTIONS = (10, 30, 50)


def _up(grid_vals: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(grid_vals, np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float64)


def _grown(box, tol, h, w):
    x0, y0, x1, y1 = box
    return max(0, x0 - tol), max(0, y0 - tol), min(w, x1 + tol), min(h, y1 + tol)


# ---------------------------------------------------------------------------------- maps
def _plan_and_fused(w, i: int, c: int, theta: float = 0.8):
    """Image i, class c: the plan's attribute columns, the plan T and the fused similarity F
    ((1-θ)·full + θ·crop) it was paid with."""
    cols = w.attr_index[i, c]
    cols = cols[cols >= 0]
    A = w.attr[cols]
    return cols, w.plan[i, c][:, : len(cols)], (1 - theta) * (w.full[i] @ A.T)[None] + theta * (w.crops[i] @ A.T)


def make_maps(w, i: int, kinds: list[str], *, tau: float, occ_stride: int, rng) -> dict:
    """{kind: {"attr": (4, H, W) maps of the true class's attributes, "class": (H, W) map of the predicted class}}."""
    import torch
    from PIL import Image

    from pipeline.dense import dense_feature_sets
    from pipeline.explain.maps import DEFAULT_DENSE, LazslScorer, crop_attribute_sims, gradcam_map, occlusion_maps
    from pipeline.explain.resolve import baseline_image
    from queries.attribution import attribution_map
    from queries.plan_maps import plan_class_map, plan_density_map, within_region_weights
    from queries.lazsl import lazsl_scores

    lm = w.model
    arr = w.arrays[i]
    H, W = arr.shape[:2]
    im = Image.fromarray(arr)
    ct, cp = int(w.labels[i]), int(w.predictions[i])
    kept = w.crop_mass[i] > 0
    boxes = w.boxes[i]
    th = 0.8  # LaZSL's θ of the toy world's runs

    def plan_and_fused(c):
        return _plan_and_fused(w, i, c, th)

    out: dict[str, dict] = {}
    ctx = {}
    if "plan_dense" in kinds:
        crops = torch.stack([lm.preprocess(im.crop(tuple(int(v) for v in b))) for b in boxes[kept]])
        classes = sorted({ct, cp})
        cols_all = np.concatenate([plan_and_fused(c)[0] for c in classes])
        sims, grid = crop_attribute_sims(lm, crops, w.attr[cols_all], dense=DEFAULT_DENSE)
        res = {}
        off = 0
        for c in classes:
            cols, T, Fm = plan_and_fused(c)
            s = sims[..., off : off + len(cols)]
            off += len(cols)
            within = within_region_weights(s, tau=tau, contrast=True)
            res[c] = (plan_density_map(boxes[kept], T[kept], within, grid, H, W).maps,
                      plan_class_map(boxes[kept], T[kept], Fm[kept], within, grid, H, W))
        out["plan_dense"] = {"attr": res[ct][0], "class": res[cp][1]}
    if "crop_boxes" in kinds:
        cols, T, _ = plan_and_fused(ct)
        am = np.stack([attribution_map(boxes[kept], T[kept, n], H, W) for n in range(len(cols))])
        cols, T, Fm = plan_and_fused(cp)
        fbar = (T * Fm).sum() / T.sum()
        cm = attribution_map(boxes[kept], (T * (Fm - fbar)).sum(1)[kept], H, W)
        out["crop_boxes"] = {"attr": am, "class": cm}
    full_px = lm.preprocess(im)[None]
    want_patch = [k for k in kinds if k.startswith("patches_")]
    specs = [PATCH_SPECS[k.split("_", 1)[1]] for k in want_patch]
    if want_patch or "sim_plain" in kinds or "sim_sclip" in kinds:
        extra = [dict(variant="plain"), dict(variant="sclip")]
        toks, pooled, grid = dense_feature_sets(lm, full_px, specs + extra)
        toks = [t[0].cpu().numpy() for t in toks]
        pooled = pooled.cpu().numpy()
        for k, t in zip(want_patch, toks):
            r = lazsl_scores(pooled, t[None], w.attr, w.attr_class, theta=th)
            ctx.setdefault("patch_pred", {})[k] = int(np.asarray(r.scores)[0].argmax())
            P = np.asarray(r.plan)[0]
            ai = np.asarray(r.attr_index)[0]

            def cellmap(vals):
                return _up(vals.reshape(grid), (H, W))
            n_t = int((ai[ct] >= 0).sum())
            am = np.stack([cellmap(P[ct][:, n]) for n in range(n_t)])
            cols = ai[cp][ai[cp] >= 0]
            A = w.attr[cols]
            Fm = (1 - th) * (pooled[0] @ A.T)[None] + th * (t @ A.T)
            cm = cellmap((P[cp][:, : len(cols)] * Fm).sum(1))
            out[k] = {"attr": am, "class": cm}
        for name, t in (("sim_plain", toks[-2]), ("sim_sclip", toks[-1])):
            if name in kinds:
                cols_t = plan_and_fused(ct)[0]
                cols_p = plan_and_fused(cp)[0]
                am = np.stack([_up((t @ w.attr[a]).reshape(grid), (H, W)) for a in cols_t])
                cv = w.attr[cols_p].mean(0)
                out[name] = {"attr": am, "class": _up((t @ cv).reshape(grid), (H, W))}
    if "gradcam" in kinds:
        cols_t = plan_and_fused(ct)[0]
        cols_p = plan_and_fused(cp)[0]
        am = np.stack([gradcam_map(lm, full_px, w.attr[cols_t], n, (H, W)) for n in range(len(cols_t))])
        cvecs = np.stack([w.attr[np.flatnonzero(w.attr_class == c)].mean(0) for c in range(len(w.class_ids))])
        out["gradcam"] = {"attr": am, "class": gradcam_map(lm, full_px, cvecs, cp, (H, W))}
    if "occlusion" in kinds:
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
        b = torch.from_numpy(baseline_image(arr, "blur").copy()).permute(2, 0, 1).float() / 255
        sc = LazslScorer(lm, w.attr, w.attr_class, boxes)
        cm, am, passes = occlusion_maps(sc, x, b, ct, window=16, stride=occ_stride)
        if cp != ct:
            cm, _, p2 = occlusion_maps(sc, x, b, cp, window=16, stride=occ_stride)
            passes += p2
        out["occlusion"] = {"attr": am, "class": cm}
        ctx["occlusion_passes"] = passes
    if "random" in kinds:
        n_t = len(plan_and_fused(ct)[0])
        out["random"] = {"attr": np.stack([_up(rng.random((8, 8)), (H, W)) for _ in range(n_t)]),
                         "class": _up(rng.random((8, 8)), (H, W))}
    return out, ctx


# ---------------------------------------------------------------------------------- metrics
def pointing(w, i, maps: np.ndarray, tol: float = 8.0):
    from queries.attribution import pointing_game

    c = int(w.labels[i])
    cols = w.attr_index[i, c]
    cols = cols[cols >= 0]
    hits, parts = [], []
    for n, a in enumerate(cols):
        part = w.attr_part[a]
        r = pointing_game(maps[n], w.part_boxes[i][part], tol)
        hits.append(bool(r.hit) if r is not None else False)
        parts.append(part)
    return hits, parts


def perturbations(arr, cmap, steps: int, rng, road_seed: int):
    """The perturbed images of one class map: deletion and insertion series (blur baseline), then
    ROAD MoRF and LeRF imputations (grad-cam's noisy linear imputer) at ROAD_FRACTIONS."""
    import torch
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from pipeline.explain.resolve import baseline_image
    from queries.perturb import perturbation_series, pixel_order

    base = baseline_image(arr, "blur")
    order = pixel_order(cmap, rng)
    series = [perturbation_series(arr, base, order, steps, m) for m in ("deletion", "insertion")]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    mask = torch.from_numpy(np.asarray(cmap, np.float32))
    imputed = []
    torch.manual_seed(road_seed)
    for f in ROAD_FRACTIONS:  # grad-cam: percentile p keeps the pixels below it, so remove the top 100-p %
        imputed.append(RemoveMostRelevantFirst(100 - f, NoisyLinearImputer())(x, mask))
    for f in ROAD_FRACTIONS:
        imputed.append(RemoveLeastRelevantFirst(100 - f, NoisyLinearImputer())(x, mask))
    return torch.cat([torch.from_numpy(np.concatenate(series)).permute(0, 3, 1, 2).float() / 255,
                      torch.stack(imputed).clamp(0, 1)])


def curves(batch, scorer, target: int, steps: int, n_pixels: int):
    """{deletion, insertion, road_morf, road_lerf, road} of one scorer on :func:`perturbations`."""
    from queries.perturb import curve_auc, step_counts

    probs = scorer(batch)[:, target].numpy().astype(np.float64)
    n = steps + 1
    frac, _ = step_counts(n_pixels, steps)
    k = len(ROAD_FRACTIONS)
    morf, lerf = probs[2 * n : 2 * n + k].mean(), probs[2 * n + k :].mean()
    return {"deletion": curve_auc(frac, probs[:n]), "insertion": curve_auc(frac, probs[n : 2 * n]),
            "road_morf": float(morf), "road_lerf": float(lerf), "road": float((lerf - morf) / 2)}


def contrast_stats(w) -> dict:
    """Contrastive reasons on every wrong prediction (predicted vs true class); needs
    ``queries/contrast.py`` (the contrastive-reasons branch), else says so."""
    try:
        from queries.contrast import contrast_terms, plan_contributions
    except ImportError:
        return {"skipped": "queries.contrast is not on this branch"}
    from queries.attribution import Alignment, tipping_attribute

    rows = []
    err = 0.0
    for i in np.flatnonzero(w.predictions != w.labels):
        cp, ct = int(w.predictions[i]), int(w.labels[i])
        cols_p, Tp, Fp = _plan_and_fused(w, i, cp)
        cols_t, Tt, Ft = _plan_and_fused(w, i, ct)
        r = contrast_terms(plan_contributions(Tp, Fp), plan_contributions(Tt, Ft),
                           [w.attr_text[a] for a in cols_p], [w.attr_text[a] for a in cols_t],
                           emb_a=w.attr[cols_p], emb_b=w.attr[cols_t])
        err = max(err, abs(r.prompt_term + sum(x.term for x in r.rows) - float(w.scores[i, cp] - w.scores[i, ct])))
        top = r.top_attribute()
        wing_row = next((x for x in r.rows if not x.shared and x.index_a is not None
                         and w.attr_part[cols_p[x.index_a]] == "wings"), None)
        # the shipped "tipped by": tipping_margins over the plan rows
        R = Tp.shape[0]

        def al(cols, T, Fm):
            rr, nn = np.nonzero(T > 0)
            return Alignment(rr.astype(np.int64), cols[nn].astype(np.int64), T[rr, nn], Fm[rr, nn])
        old = tipping_attribute(al(cols_p, Tp, Fp), al(cols_t, Tt, Ft))
        # naive pairing: same text, else by position; argmax of c_A(a) - c_B(b), no prompt term
        ca, cb = plan_contributions(Tp, Fp), plan_contributions(Tt, Ft)
        naive = int(np.argmax([ca[n] - cb[[w.attr_part[a] for a in cols_t].index(w.attr_part[cols_p[n]])]
                               for n in range(len(cols_p))]))
        rows.append(dict(
            siblings=w.siblings(cp, ct),
            named_wings=top is not None and top.index_a is not None and w.attr_part[cols_p[top.index_a]] == "wings",
            wing_term=None if wing_row is None else wing_row.term,
            prompt_term=r.prompt_term, prompt_rank1=r.prompt_rank == 1,
            old_named_wings=old is not None and w.attr_part[int(old[0])] == "wings",
            naive_named_wings=w.attr_part[cols_p[naive]] == "wings", _R=R))
    sib = [r for r in rows if r["siblings"]]

    def frac(key, rs):
        return round(float(np.mean([r[key] for r in rs])), 4) if rs else None
    return {
        "wrong_predictions": len(rows),
        "between_siblings": len(sib),
        "named_reason_is_wing_pattern": frac("named_wings", sib),
        "shipped_tipped_by_is_wing_pattern": frac("old_named_wings", sib),
        "naive_text_pairing_is_wing_pattern": frac("naive_named_wings", sib),
        "wing_term_favours_predicted": round(float(np.mean([r["wing_term"] > 0 for r in sib])), 4) if sib else None,
        "class_prompt_term_is_rank1": frac("prompt_rank1", sib),
        "mean_prompt_term": round(float(np.mean([r["prompt_term"] for r in sib])), 5) if sib else None,
        "mean_wing_term": round(float(np.mean([r["wing_term"] for r in sib])), 5) if sib else None,
        "max_abs_error_terms_vs_gap": float(err),
    }


def run_table(args) -> dict:
    import torch

    from explain_world import build_world
    from pipeline.explain.maps import GlobalScorer, LazslScorer, logit_scale
    from queries.stats import bootstrap_mean, paired_bootstrap

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    w = build_world(args.seed, args.world_root)
    tau = 1.0 / logit_scale(w.model)
    kinds = args.kinds.split(",") if args.kinds else KINDS_ALL
    lazsl_kinds = set(args.lazsl_kinds.split(",")) if args.lazsl_kinds else set(kinds)
    n_img = len(w.labels)
    glob = GlobalScorer(w.model, w.attr, w.attr_class, len(w.class_ids))
    q_del = quantus_deletion_agreement(w) if args.quantus else None
    per: dict[str, dict[str, dict[int, float]]] = {}  # metric key -> kind -> {image: value}
    point: dict[str, dict[int, list]] = {k: {} for k in kinds}
    point_parts: dict[str, dict[str, list]] = {k: {} for k in kinds}
    chance = []
    patch_pred: dict[str, list] = {}
    agree = {"pointing_same": 0, "pointing_n": 0}
    occ_passes, timing = [], {k: 0.0 for k in ("maps", "global", "lazsl")}  # perturbation time not counted
    sel = [i for i in range(n_img) if i % args.every == 0]
    for i in sel:
        heavy = i % args.lazsl_every == 0
        use = [k for k in kinds if k != "occlusion" or heavy]
        rng = np.random.default_rng([args.seed, i])
        ts = time.perf_counter()
        maps, ctx = make_maps(w, i, use, tau=tau, occ_stride=args.occ_stride, rng=rng)
        timing["maps"] += time.perf_counter() - ts
        for k, v in ctx.get("patch_pred", {}).items():
            patch_pred.setdefault(k, []).append(v == w.labels[i])
        if "occlusion_passes" in ctx:
            occ_passes.append(ctx["occlusion_passes"])
        c = int(w.labels[i])
        cols = w.attr_index[i, c]
        for a in cols[cols >= 0]:
            g = _grown(w.part_boxes[i][w.attr_part[a]], 8, 128, 128)
            chance.append((g[2] - g[0]) * (g[3] - g[1]) / (128 * 128))
        for k, m in maps.items():
            hits, parts = pointing(w, i, m["attr"])
            point[k][i] = hits
            for h, p in zip(hits, parts):
                point_parts[k].setdefault(p, []).append(h)
            if args.quantus and i % args.lazsl_every == 0:
                agree_q = quantus_pointing(w, i, m["attr"])
                agree["pointing_same"] += int(np.sum(np.array(agree_q) == np.array(hits)))
                agree["pointing_n"] += len(hits)
        scorers = [("global", glob)]
        if heavy:
            scorers.append(("lazsl", LazslScorer(w.model, w.attr, w.attr_class, w.boxes[i])))
        for k, m in maps.items():
            batch = perturbations(w.arrays[i], m["class"], args.steps, np.random.default_rng([args.seed, i, 7]), road_seed=i)
            for sname, sc in scorers:
                if sname == "lazsl" and k not in lazsl_kinds:
                    continue
                ts = time.perf_counter()
                res = curves(batch, sc, int(w.predictions[i]), args.steps, w.arrays[i].shape[0] * w.arrays[i].shape[1])
                timing[sname] += time.perf_counter() - ts
                for metric, v in res.items():
                    per.setdefault(f"{sname}:{metric}", {}).setdefault(k, {})[i] = v
        if args.raw_out:
            with open(args.raw_out, "a") as f:
                f.write(json.dumps({"image": i, "pointing": {k: point[k].get(i) for k in kinds},
                                    "metrics": {key: {k: v.get(i) for k, v in by.items()} for key, by in per.items()}}) + "\n")
        if args.progress:
            print(f"image {i} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    def ci(v):
        return bootstrap_mean(v, n_resamples=args.n_boot).as_list()
    table = {}
    for k in kinds:
        row: dict = {}
        imgs = sorted(point[k])
        if imgs:
            hits = np.array([np.mean(point[k][i]) for i in imgs])
            row["pointing"] = ci(hits)
            row["pointing_pairs"] = int(sum(len(point[k][i]) for i in imgs))
            row["pointing_by_part"] = {p: round(float(np.mean(v)), 3) for p, v in point_parts[k].items()}
            if "random" in point and k != "random":
                common = [i for i in imgs if i in point["random"]]
                row["pointing_vs_random"] = paired_bootstrap([np.mean(point[k][i]) for i in common],
                                                             [np.mean(point["random"][i]) for i in common],
                                                             n_resamples=args.n_boot).as_list()
        for key, by_kind in per.items():
            if k not in by_kind:
                continue
            vals = by_kind[k]
            imgs = sorted(vals)
            row[key] = ci([vals[i] for i in imgs])
            row[key + ":n"] = len(imgs)
            if k != "random" and "random" in by_kind:
                common = [i for i in imgs if i in by_kind["random"]]
                d = paired_bootstrap([vals[i] for i in common], [by_kind["random"][i] for i in common],
                                     n_resamples=args.n_boot)
                row[key + ":vs_random"] = d.as_list() + [d.excludes_zero]
        table[k] = row
    return {
        "world": {"seed": args.seed, "images": n_img, "measured_images": len(sel), "lazsl_images":
                  len([i for i in sel if i % args.lazsl_every == 0]), "classes": len(w.class_ids)},
        "accuracy": {"lazsl_crops_store": round(w.store_accuracy, 4), "lazsl_crops_in_memory": round(w.accuracy, 4),
                     **{f"lazsl_{k}": round(float(np.mean(v)), 4) for k, v in patch_pred.items()}},
        "pointing_chance": round(float(np.mean(chance)), 4),
        "params": {"steps": args.steps, "baseline": "blur sigma=side/20", "road_fractions": ROAD_FRACTIONS,
                   "tau": round(tau, 5), "tolerance_px": 8, "occlusion": {"window": 16, "stride": args.occ_stride},
                   "n_boot": args.n_boot, "every": args.every, "lazsl_every": args.lazsl_every,
                   "lazsl_kinds": sorted(lazsl_kinds),
                   "mean_occlusion_passes": round(float(np.mean(occ_passes)), 1) if occ_passes else None},
        "table": table,
        "contrast": contrast_stats(w),
        "agreement": {"quantus_pointing_same_outcome": round(agree["pointing_same"] / agree["pointing_n"], 4)
                      if agree["pointing_n"] else None, "pairs": agree["pointing_n"],
                      "quantus_pixelflipping_max_abs_diff": q_del},
        "seconds": {k: round(v, 1) for k, v in timing.items()} | {"total": round(time.perf_counter() - t0, 1)},
    }


def quantus_deletion_agreement(w, images=(0, 1), steps: int = 24) -> float:
    """Max |difference| between our deletion curve (queries.explain) and quantus.PixelFlipping
    on the same pixel order, zero baseline and global scorer (a random map per image)."""
    import quantus
    import torch

    from pipeline.explain.maps import GlobalScorer
    from queries.perturb import perturbation_series, pixel_order

    sc = GlobalScorer(w.model, w.attr, w.attr_class, len(w.class_ids)).eval()
    worst = 0.0
    for i in images:
        arr = w.arrays[i]
        H, W = arr.shape[:2]
        order = pixel_order(np.random.default_rng(i).random((H, W)), np.random.default_rng(0))
        imgs = perturbation_series(arr, np.zeros_like(arr), order, steps, "deletion")
        ours = sc(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)[:, w.predictions[i]].numpy()
        rank = np.empty(H * W)
        rank[order] = np.arange(H * W)
        a = (H * W - rank).reshape(1, 1, H, W).astype(np.float32)  # the same order, no ties
        x = (arr.astype(np.float32) / 255).transpose(2, 0, 1)[None]
        pf = quantus.PixelFlipping(features_in_step=H * W * 3 // steps, perturb_baseline=0.0,
                                   return_auc_per_sample=False, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
        q = np.array(pf(model=sc, x_batch=x, y_batch=np.array([w.predictions[i]]), a_batch=a, softmax=False,
                        channel_first=True, device="cpu")[0])
        worst = max(worst, float(np.abs(ours[1:] - q).max()))
    return worst


def quantus_pointing(w, i, maps: np.ndarray) -> list[bool]:
    """quantus.PointingGame on the same maps, the part box grown by 8 px as the mask."""
    import quantus

    c = int(w.labels[i])
    cols = w.attr_index[i, c]
    cols = cols[cols >= 0]
    H, W = maps.shape[-2:]
    s = np.zeros((len(cols), 1, H, W), np.float32)
    for n, a in enumerate(cols):
        x0, y0, x1, y1 = (int(round(v)) for v in _grown(w.part_boxes[i][w.attr_part[a]], 8, H, W))
        s[n, 0, y0:y1, x0:x1] = 1
    metric = quantus.PointingGame(disable_warnings=True, display_progressbar=False)
    a = maps[:, None].astype(np.float32)
    x = np.zeros((len(cols), 3, H, W), np.float32)
    res = metric(model=None, x_batch=x, y_batch=np.zeros(len(cols), int), a_batch=a, s_batch=s)
    return [bool(v) for v in res]


# ---------------------------------------------------------------------------------- speed
def run_speed(args) -> dict:
    import torch

    from pipeline.dense import dense_feature_sets
    from pipeline.explain.maps import DEFAULT_DENSE, LazslScorer, crop_attribute_sims, gradcam_map, occlusion_maps
    from pipeline.models import load_model
    from queries.regions import random_square_crops
    from queries.attribution import attribution_map
    from queries.plan_maps import plan_class_map, plan_density_map, within_region_weights
    from queries.lazsl import lazsl_scores

    torch.set_num_threads(args.threads)
    lm = load_model("ViT-B-32", "random:0", device="cpu")
    rng = np.random.default_rng(0)
    size, n_crops, n_attr, n_cls = 224, 90, 5, 10
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    from PIL import Image

    im = Image.fromarray(arr)
    boxes = random_square_crops(size, size, n_crops, 0.6, 0.9, rng).astype(np.float64)
    attr = rng.standard_normal((n_cls * n_attr, lm.embed_dim)).astype(np.float32)
    attr /= np.linalg.norm(attr, axis=1, keepdims=True)
    attr_class = np.repeat(np.arange(n_cls), n_attr)
    crops = torch.stack([lm.preprocess(im.crop(tuple(int(v) for v in b))) for b in boxes])
    full = lm.encode_images(lm.preprocess(im)[None]).numpy()
    cemb = lm.encode_images(crops).numpy()
    r = lazsl_scores(full, cemb[None], attr, attr_class, candidates=np.array([[0]]))
    T = np.asarray(r.plan)[0, 0]
    A = attr[:n_attr]
    Fm = 0.2 * (full @ A.T) + 0.8 * (cemb @ A.T)
    tau = 0.01
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    out = {}

    def timeit(name, fn, reps=1, note="", warm=True):
        if warm:
            fn()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            fn()
        dt, dc = (time.perf_counter() - t) / reps, (time.process_time() - c) / reps
        # CPU time is what the map costs on a free core; wall time includes other processes' load
        out[name] = {"cpu_seconds_per_map": round(dc, 3), "maps_per_cpu_second": round(1 / max(dc, 1e-9), 3),
                     "wall_seconds_per_map": round(dt, 3), "note": note}

    def plan_dense():
        sims, grid = crop_attribute_sims(lm, crops, A, dense=DEFAULT_DENSE)
        within = within_region_weights(sims, tau=tau)
        plan_density_map(boxes, T, within, grid, size, size)
        plan_class_map(boxes, T, Fm, within, grid, size, size)
    timeit("plan_dense", plan_dense, note=f"{n_crops} crops re-encoded with 2 dense token sets in one pass; class + {n_attr} attribute maps")

    def plan_only():
        sims = np.zeros((2, n_crops, 49, n_attr))
        within = within_region_weights(sims, tau=tau)
        plan_density_map(boxes, T, within, (7, 7), size, size)
    timeit("plan_dense_from_stored_tokens", plan_only, reps=3, note="map arithmetic only (tokens already computed)")
    timeit("crop_boxes", lambda: [attribution_map(boxes, T[:, n], size, size) for n in range(n_attr)], reps=3,
           note="no encoder pass")

    def patches():
        toks, pooled, grid = dense_feature_sets(lm, lm.preprocess(im)[None], [dict(variant="sclip")])
        lazsl_scores(pooled.numpy(), toks[0].numpy(), attr, attr_class)
    timeit("patches_sclip", patches, reps=3, note="one pass + LaZSL over the patch tokens")
    timeit("sim_plain", lambda: dense_feature_sets(lm, lm.preprocess(im)[None], [dict(variant="plain")]), reps=3)
    timeit("sim_sclip", lambda: dense_feature_sets(lm, lm.preprocess(im)[None], [dict(variant="sclip")]), reps=3)
    timeit("gradcam", lambda: gradcam_map(lm, lm.preprocess(im)[None], A, 0, (size, size)), reps=2,
           note="one forward + backward per target")
    sc = LazslScorer(lm, attr, attr_class, boxes)
    base = x * 0 + x.mean((1, 2), keepdim=True)
    res = {}

    from queries.occlusion import sliding_windows

    def passes_for(window):  # what occlusion_maps re-encodes: the full view and each crop that meets the window
        wins = sliding_windows(size, size, window=window, stride=window)
        meet = [(boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0) for x0, y0, x1, y1 in wins]
        return 1 + n_crops + sum(1 + int(m.sum()) for m in meet), len(wins)

    w = args.occ_window

    def occ():
        res["passes"] = occlusion_maps(sc, x, base, 0, window=w, stride=w)[2]
    n_win = passes_for(w)[1]
    timeit("occlusion", occ, warm=False, note=f"window {w} px, stride {w} px on 224 px ({n_win} windows), LaZSL "
           "re-scored; only views meeting the window re-encoded (measured)")
    out["occlusion"]["encoder_passes"] = res["passes"]
    assert res["passes"] == passes_for(w)[0]
    per_pass_cpu = out["occlusion"]["cpu_seconds_per_map"] / res["passes"]
    per_pass_wall = out["occlusion"]["wall_seconds_per_map"] / res["passes"]
    p32, n32 = passes_for(32)
    out["occlusion_32px_estimated"] = {
        "cpu_seconds_per_map": round(per_pass_cpu * p32, 1), "maps_per_cpu_second": round(1 / (per_pass_cpu * p32), 5),
        "wall_seconds_per_map": round(per_pass_wall * p32, 1), "encoder_passes": p32,
        "note": f"window 32 px ({n32} windows, explain's 16 px per 128 px rule): the measured cost per encoder pass "
                "times the passes it needs (counted exactly, not run)"}
    return {"model": lm.fingerprint, "image_size": size, "n_crops": n_crops, "n_attributes": n_attr,
            "threads": args.threads, "kinds": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("table", "speed"), default="table")
    ap.add_argument("--seed", type=int, default=1, help="toy world image seed (the demo uses 1)")
    ap.add_argument("--world-root", default=None, help="reuse a folder (world + store) between runs")
    ap.add_argument("--kinds", default=None, help="comma-separated subset of " + ",".join(KINDS_ALL))
    ap.add_argument("--every", type=int, default=1, help="measure every n-th image")
    ap.add_argument("--lazsl-every", type=int, default=4, help="LaZSL re-scoring and occlusion on every n-th image")
    ap.add_argument("--lazsl-kinds", default=None, help="kinds re-scored with LaZSL (default: all)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--occ-stride", type=int, default=16)
    ap.add_argument("--occ-window", type=int, default=112, help="speed: occlusion window = stride measured (px of 224)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quantus", action="store_true", help="cross-check the pointing game with quantus")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--raw-out", default=None, help="append per-image results to this JSONL file")
    args = ap.parse_args(argv)
    res = run_table(args) if args.mode == "table" else run_speed(args)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
