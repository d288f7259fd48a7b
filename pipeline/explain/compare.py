"""``pipeline faithfulness --compare``: map kinds measured against each other and against random maps.

For every image the run predicted (and its class's alignments), each map kind makes the
predicted class's map and, for pointing, the maps of the ground-truth boxes' attributes:

==============  ===============================================================================
``plan-dense``  the default: plan crop masses placed inside each crop by dense tokens
                (:mod:`pipeline.explain.pixel_maps`, ``explain --maps plan``)
``crop-boxes``  the plan's mass over whole crop boxes (``explain --maps boxes``)
``occlusion``   drop of the class's LaZSL probability under a blurred window (slow; only the
                first ``--occlusion-images`` images)
``random``      U(0, 1) on an 8×8 grid, bilinear (a fresh draw per map, seeded)
``gradcam``     Grad-CAM (``grad-cam`` package) on the image tower's last block for the text
``sim-plain``   cosine of the full image's plain last-layer patch tokens to the text
``sim-sclip``   the same with SCLIP-style tokens (:mod:`pipeline.dense`)
==============  ===============================================================================

Metrics (per image; the class map of the predicted class orders the pixels):

* **deletion / insertion** (RISE): the most attributed pixels replaced by (revealed from) a
  Gaussian blur (``--baseline``) in ``steps`` steps; AUC of the class's softmax probability of the global DCLIP
  score over all classes (:class:`pipeline.explain.maps.GlobalScorer`). Lower deletion and
  higher insertion are better.
* **ROAD** (Rong et al., 2022) with the ``grad-cam`` package's noisy linear imputation: the
  probability after removing the most (MoRF) and least (LeRF) relevant 10/30/50% of the pixels;
  ``road`` = (LeRF − MoRF)/2, higher is better (the package's ROADCombined).
* **pointing** (Zhang et al.): with ``--boxes``, is the attribute map's maximum inside the part's
  box grown by ``--tolerance`` px? Per image the share of hits; ``chance`` = grown box area /
  image area.

Every kind's per-image values are paired with the random maps' on the same images: the mean
difference and its 95% bootstrap interval (:func:`queries.stats.paired_bootstrap`). A kind is
"better than random" on a metric only when that interval excludes 0 on the good side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from queries.attribution import pointing_chance, pointing_game
from queries.perturb import curve_auc, perturbation_series, pixel_order, step_counts
from queries.stats import paired_bootstrap
from stores import tables
from stores.catalog import Catalog

from ..errors import InputError
from ..names import norm_class_name

COMPARE_KINDS = ("plan-dense", "crop-boxes", "occlusion", "random", "gradcam", "sim-plain", "sim-sclip")
EXPLAIN_KIND = {"plan": "plan-dense", "boxes": "crop-boxes", "occlusion": "occlusion"}
METRICS = ("deletion", "insertion", "road", "pointing")
HIGHER_IS_BETTER = {"deletion": False, "insertion": True, "road": True, "pointing": True}
ROAD_FRACTIONS = (10, 30, 50)
WORK_SHORT_SIDE = 256


def parse_kinds(text: str | None) -> list[str]:
    if text is None or text.strip() in ("", "all"):
        return list(COMPARE_KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in COMPARE_KINDS]
    if bad:
        raise InputError(f"--maps: unknown map kind(s) {', '.join(bad)}; use some of {', '.join(COMPARE_KINDS)} or all.")
    if "random" not in kinds:
        kinds.append("random")  # every figure is paired with random maps
    return [k for k in COMPARE_KINDS if k in kinds]


# ---- maps of one image --------------------------------------------------------------------
def _up(grid_vals, size_hw) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(grid_vals, np.float32))[None, None]
    return F.interpolate(t, size=tuple(size_hw), mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float64)


def _centre_grid_map(vals: np.ndarray, grid: tuple[int, int], H: int, W: int) -> np.ndarray:
    """Patch-grid values of the preprocessed full view placed on the image: the encoder saw the
    centred square of side min(H, W) (resize + centre crop); outside it the map is its minimum."""
    side = min(H, W)
    out = np.full((H, W), float(np.min(vals)))
    y0, x0 = (H - side) // 2, (W - side) // 2
    out[y0 : y0 + side, x0 : x0 + side] = _up(np.asarray(vals).reshape(grid), (side, side))
    return out


@dataclass
class ImageMaps:
    class_map: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (H, W) of the predicted class
    attr_maps: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)  # (kind, class, attr) -> (H, W)
    passes: int = 0  # occlusion encoder passes


def image_maps(cat: Catalog, model, run, img: dict, image: Image.Image, pred_class: int, point_classes: set[int],
               kinds: list[str], rng: np.random.Generator, *, occlusion: bool) -> ImageMaps:
    """Every kind's class map (predicted class) and attribute maps (``point_classes``), at ``image``'s size."""
    from .explain import load_alignment
    from .pixel_maps import box_maps, occlusion as occlusion_maps, plan_dense

    W, H = image.size
    out = ImageMaps()
    all_ids, rkinds, all_boxes = tables.image_regions(cat, img["image_id"])
    all_boxes = all_boxes * np.array([W / img["width"], H / img["height"]] * 2)
    classes = sorted({pred_class} | set(point_classes))
    als = {c: load_alignment(cat, run.run_id, img["image_id"], c) for c in classes}
    attr_ids = {c: np.unique(als[c].attr_id).tolist() for c in classes}
    for c in classes:
        if len(als[c]) == 0:
            continue
        got = {}
        if "plan-dense" in kinds:
            got["plan-dense"] = plan_dense(cat, model, image, als[c], all_ids, all_boxes, rkinds)
        if "crop-boxes" in kinds:
            got["crop-boxes"] = box_maps(als[c], all_ids, all_boxes, H, W)
        if "occlusion" in kinds and occlusion:
            cm = occlusion_maps(cat, model, run, image, c, all_boxes)
            out.passes += cm.cost["encoder_passes"]
            got["occlusion"] = cm
        for kind, cm in got.items():
            if c == pred_class:
                out.class_map[kind] = cm.class_map
            if c in point_classes:
                for a in attr_ids[c]:
                    m = cm.attribute_map(a)
                    if m is not None:
                        out.attr_maps[(kind, c, a)] = m
    if "random" in kinds:
        out.class_map["random"] = _up(rng.random((8, 8)), (H, W))
        for c in point_classes:
            for a in attr_ids.get(c, []):
                out.attr_maps[("random", c, a)] = _up(rng.random((8, 8)), (H, W))
    text_kinds = [k for k in ("gradcam", "sim-plain", "sim-sclip") if k in kinds]
    if text_kinds:
        from ..dense import dense_feature_sets
        from .maps import gradcam_map
        from .pixel_maps import _attr_embeddings

        mat = tables.attribute_matrix(cat, model.fingerprint)
        cls = np.unique(mat.class_ids)
        cvecs = np.stack([mat.embeddings[mat.class_ids == c].mean(0) for c in cls]).astype(np.float32)
        cvecs /= np.linalg.norm(cvecs, axis=1, keepdims=True)
        full_px = model.preprocess(image)[None]
        texts = {c: _attr_embeddings(cat, model, np.array(attr_ids[c], np.int64)) for c in point_classes if attr_ids.get(c)}
        if "gradcam" in kinds:
            gc_size = (min(H, W),) * 2

            def gc(emb, target):
                return _centre_grid_map_img(gradcam_map(model, full_px, emb, target, gc_size), H, W)
            out.class_map["gradcam"] = gc(cvecs, int(np.searchsorted(cls, pred_class)))
            for c, E in texts.items():
                for n, a in enumerate(attr_ids[c]):
                    out.attr_maps[("gradcam", c, a)] = gc(E, n)
        sims = [k for k in ("sim-plain", "sim-sclip") if k in kinds]
        if sims:
            specs = {"sim-plain": {"variant": "plain", "block": -1}, "sim-sclip": {"variant": "sclip", "block": -1}}
            toks, _, grid = dense_feature_sets(model, full_px, [specs[k] for k in sims])
            for k, t in zip(sims, toks):
                t = t[0].cpu().numpy()
                cv = cvecs[int(np.searchsorted(cls, pred_class))]
                out.class_map[k] = _centre_grid_map(t @ cv, grid, H, W)
                for c, E in texts.items():
                    for n, a in enumerate(attr_ids[c]):
                        out.attr_maps[(k, c, a)] = _centre_grid_map(t @ E[n], grid, H, W)
    return out


def _centre_grid_map_img(sq: np.ndarray, H: int, W: int) -> np.ndarray:
    side = min(H, W)
    out = np.full((H, W), float(sq.min()))
    y0, x0 = (H - side) // 2, (W - side) // 2
    out[y0 : y0 + side, x0 : x0 + side] = sq
    return out


# ---- metrics ------------------------------------------------------------------------------
def perturbed_batch(arr: np.ndarray, cmap: np.ndarray, steps: int, rng, road_seed: int, baseline: str = "blur"):
    """Deletion and insertion series (``baseline``: blur by default), then ROAD MoRF and LeRF imputations (grad-cam's
    noisy linear imputer) at ROAD_FRACTIONS: (2·(steps+1) + 6, 3, H, W) floats in [0, 1]."""
    import torch
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from .faithfulness import baseline_image

    base = baseline_image(arr, baseline)
    order = pixel_order(cmap, rng)
    series = [perturbation_series(arr, base, order, steps, m) for m in ("deletion", "insertion")]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    mask = torch.from_numpy(np.asarray(cmap, np.float32))
    import warnings

    torch.manual_seed(road_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's __array_wrap__ notice from inside grad-cam
        # grad-cam: percentile p keeps the pixels below it, so removing the top f % is percentile 100 - f
        imputed = [RemoveMostRelevantFirst(100 - f, NoisyLinearImputer())(x, mask) for f in ROAD_FRACTIONS]
        imputed += [RemoveLeastRelevantFirst(100 - f, NoisyLinearImputer())(x, mask) for f in ROAD_FRACTIONS]
    return torch.cat([torch.from_numpy(np.concatenate(series)).permute(0, 3, 1, 2).float() / 255,
                      torch.stack(imputed).clamp(0, 1)])


def curve_metrics(probs: np.ndarray, steps: int, n_pixels: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """{deletion, insertion, road_morf, road_lerf, road} from the scores of :func:`perturbed_batch`."""
    n = steps + 1
    frac, _ = step_counts(n_pixels, steps)
    k = len(ROAD_FRACTIONS)
    morf, lerf = float(probs[2 * n : 2 * n + k].mean()), float(probs[2 * n + k :].mean())
    return ({"deletion": curve_auc(frac, probs[:n]), "insertion": curve_auc(frac, probs[n : 2 * n]),
             "road_morf": morf, "road_lerf": lerf, "road": (lerf - morf) / 2}, frac, probs[:n], probs[n : 2 * n])


@dataclass
class CompareReport:
    faith_run_id: int
    run_id: int
    params: dict
    kinds: list[str]
    images: int = 0
    values: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)  # (kind, metric) -> {image: value}
    chance: float | None = None
    summary: list[dict] = field(default_factory=list)
    mean_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    plot: Path | None = None
    seconds: float = 0.0
    occlusion_passes: int = 0
    skipped: list[str] = field(default_factory=list)

    def records(self) -> list[dict]:
        return [dict(faith_run_id=self.faith_run_id, run_id=self.run_id, **r) for r in self.summary]

    def lines(self) -> list[str]:
        p = self.params
        out = [f"faithfulness run {self.faith_run_id} on run {self.run_id}: {self.images} images, {p['steps']} steps, "
               f"{p['baseline']} baseline, scorer {p['scorer']}, {self.seconds:.1f} s"
               + (f" (occlusion: {self.occlusion_passes} encoder passes on {p['occlusion_images']} images)"
                  if "occlusion" in self.kinds else "")]
        out.append("  deletion: lower is better; insertion, ROAD, pointing: higher is better. Δ = mean difference to random "
                   "maps on the same images [95% bootstrap interval]; * = better than random.")
        head = f"  {'map kind':11s} {'n':>4s}  " + "  ".join(f"{m:>31s}" for m in METRICS)
        out.append(head)
        by = {(r["map_kind"], r["metric"]): r for r in self.summary}
        for k in self.kinds:
            cells = []
            for m in METRICS:
                r = by.get((k, m))
                if r is None:
                    cells.append(f"{'-':>31s}")
                    continue
                if k == "random" or r["diff"] is None:
                    cells.append(f"{r['value']:>8.3f}{'':23s}")
                else:
                    cells.append(f"{r['value']:>8.3f} Δ{r['diff']:+.3f} [{r['diff_low']:+.3f},{r['diff_high']:+.3f}]"
                                 f"{'*' if r['better'] else ' '}")
            n = max((r["images"] for (kk, _), r in by.items() if kk == k), default=0)
            out.append(f"  {k:11s} {n:4d}  " + "  ".join(cells))
        if self.chance is not None:
            out.append(f"  pointing chance (grown box area / image area): {self.chance:.3f}; tolerance {p['tolerance']} px")
        if self.plot:
            out.append(f"plot: {self.plot}")
        if self.skipped:
            out.append(f"  skipped {len(self.skipped)}: " + "; ".join(self.skipped[:5]))
        return out


def compare_maps(cat: Catalog, model, run_id: int | None = None, *, kinds: list[str] | None = None, steps: int = 10,
                 limit: int | None = None, every: int = 1, occlusion_images: int = 8, boxes_file=None,
                 tolerance: float = 8.0, seed: int = 0, plot: str | Path | None = None, progress: bool = True,
                 max_file_bytes: int | None = None, baseline: str = "blur") -> CompareReport:
    """Measure every map kind (module doc); store faithfulness_runs/curves/scores/pointing_game rows
    with their map_kind, and faithfulness_summary rows; write the curves plot to ``plot``."""
    from tqdm import tqdm

    from stores.errors import StoreError

    from ..inputs import DEFAULT_MAX_FILE_BYTES
    from .explain import load_image, resolve_image, resolve_run
    from .faithfulness import BASELINES, read_boxes
    from .maps import GlobalScorer

    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise InputError("faithfulness --compare needs the grad-cam package (ROAD, Grad-CAM): "
                         "pip install 'zsl-pipeline[explain]'.") from None
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if cat.read_only:
        raise StoreError("faithfulness writes its results; open the store for writing.")
    if model is None:
        raise StoreError("Comparing map kinds re-encodes images: the store's model is needed.")
    kinds = kinds or list(COMPARE_KINDS)
    t0 = time.perf_counter()
    run = resolve_run(cat, run_id)
    mat = tables.attribute_matrix(cat, model.fingerprint)
    cls = np.unique(mat.class_ids)
    scorer = GlobalScorer(model, mat.embeddings, np.searchsorted(cls, mat.class_ids), len(cls))
    boxes = read_boxes(boxes_file, max_file_bytes or DEFAULT_MAX_FILE_BYTES) if boxes_file else []
    targets = tables.top1_with_alignments(cat, run.run_id, None)[:: max(1, every)]
    targets = targets[:limit] if limit else targets
    by_image: dict[int, list[dict]] = {}
    if boxes:
        names = tables.class_ids_by_norm(cat)
        wanted = {t[0] for t in targets}
        for row in boxes:
            try:
                iid = resolve_image(cat, row["image"])["image_id"]
            except InputError:
                continue
            cid = names.get(norm_class_name(row["cls"])) if row["cls"] else None
            if iid in wanted and cid is not None and row["attribute"]:
                aid = tables.find_attribute(cat, cid, row["attribute"])
                if aid is not None:
                    by_image.setdefault(iid, []).append(dict(row, class_id=int(cid), attr_id=int(aid)))
    params = dict(compare=True, kinds=kinds, steps=steps, limit=limit, every=every, seed=seed, baseline=baseline,
                  scorer="global-dclip-softmax-all-classes", road=list(ROAD_FRACTIONS), tolerance=tolerance,
                  occlusion_images=min(occlusion_images, len(targets)) if "occlusion" in kinds else 0,
                  boxes=str(Path(boxes_file).resolve()) if boxes_file else None, random_map="U(0,1) 8x8, bilinear",
                  work_short_side=WORK_SHORT_SIDE)
    fid = tables.next_faithfulness_run_id(cat)
    rep = CompareReport(fid, run.run_id, params, kinds)
    rows = tables.FaithfulnessRows(fid, run.run_id, params, model.fingerprint)
    curves_acc: dict[tuple[str, str], list[np.ndarray]] = {}
    chance = []
    for n_img, (image_id, class_id) in enumerate(tqdm(targets, desc="compare maps", unit="img", disable=not progress)):
        img = resolve_image(cat, image_id)
        try:
            original = load_image(img["path"])
        except InputError as exc:
            rep.skipped.append(str(exc))
            continue
        s = min(1.0, WORK_SHORT_SIDE / min(original.size))
        image = original.resize((round(original.size[0] * s), round(original.size[1] * s)), Image.Resampling.BILINEAR) \
            if s < 1 else original
        W, H = image.size
        rng = np.random.default_rng([seed, image_id % (2**32)])
        pts = by_image.get(image_id, [])
        maps = image_maps(cat, model, run, img, image, class_id, {p["class_id"] for p in pts}, kinds, rng,
                          occlusion=n_img < occlusion_images)
        rep.occlusion_passes += maps.passes
        arr = np.asarray(image)
        import torch

        for kind, cmap in maps.class_map.items():
            batch = perturbed_batch(arr, cmap, steps, rng, road_seed=seed, baseline=baseline)
            with torch.no_grad():
                probs = torch.cat([scorer(batch[i : i + 256]) for i in range(0, len(batch), 256)])
            probs = probs[:, int(np.searchsorted(cls, class_id))].cpu().numpy().astype(np.float64)
            vals, frac, dcurve, icurve = curve_metrics(probs, steps, H * W)
            for m, v in vals.items():
                rep.values.setdefault((kind, m), {})[image_id] = v
                rows.scores.append(dict(image_id=image_id, class_id=class_id, kind=m, auc=float(v), map_kind=kind))
            for mode, y in (("deletion", dcurve), ("insertion", icurve)):
                curves_acc.setdefault((kind, mode), []).append(y)
                rows.curves += [dict(image_id=image_id, class_id=class_id, kind=mode, step=i, fraction=float(frac[i]),
                                     score=float(y[i]), map_kind=kind) for i in range(steps + 1)]
        sx, sy = W / img["width"], H / img["height"]
        hits: dict[str, list[bool]] = {}
        for p in pts:
            box = [p["box"][0] * sx, p["box"][1] * sy, p["box"][2] * sx, p["box"][3] * sy]
            chance.append(pointing_chance(box, H, W, tolerance * sx))
            for kind in kinds:
                m = maps.attr_maps.get((kind, p["class_id"], p["attr_id"]))
                if m is None:
                    continue
                r = pointing_game(m, box, tolerance * sx)
                hit = bool(r.hit) if r is not None else False  # a flat map points nowhere
                hits.setdefault(kind, []).append(hit)
                rows.pointing.append(dict(image_id=image_id, class_id=p["class_id"], attr_id=p["attr_id"],
                                          attribute=p["attribute"], hit=hit,
                                          energy_inside=float(r.energy_inside) if r is not None else 0.0,
                                          x=(r.x / sx) if r is not None else None, y=(r.y / sy) if r is not None else None,
                                          x0=p["box"][0], y0=p["box"][1], x1=p["box"][2], y1=p["box"][3], map_kind=kind))
        for kind, h in hits.items():
            rep.values.setdefault((kind, "pointing"), {})[image_id] = float(np.mean(h))
        rep.images += 1
    rep.chance = float(np.mean(chance)) if chance else None
    for kind in kinds:
        for m in METRICS:
            v = rep.values.get((kind, m))
            if not v:
                continue
            ids = sorted(v)
            a = np.array([v[i] for i in ids])
            rnd = rep.values.get(("random", m), {})
            common = [i for i in ids if i in rnd]
            row = dict(map_kind=kind, metric=m, images=len(ids), value=float(a.mean()), random_value=None,
                       chance=rep.chance if m == "pointing" else None, diff=None, diff_low=None, diff_high=None, better=None)
            if kind != "random" and len(common) >= 2:
                ci = paired_bootstrap([v[i] for i in common], [rnd[i] for i in common], seed=seed)
                good = ci.low > 0 if HIGHER_IS_BETTER[m] else ci.high < 0
                row.update(random_value=float(np.mean([rnd[i] for i in common])), diff=ci.mean, diff_low=ci.low,
                           diff_high=ci.high, better=bool(good))
            rep.summary.append(row)
    rows.summary = rep.summary
    rep.mean_curves = {k: {} for k in kinds}
    frac, _ = step_counts(100, steps)
    for (kind, mode), ys in curves_acc.items():
        rep.mean_curves[kind][mode] = (frac, np.mean(ys, 0))
    rep.seconds = time.perf_counter() - t0
    tables.insert_faithfulness(cat, rows)
    if plot is not None and curves_acc:
        from stores import files

        from .plots import compare_png

        aucs = {k: {r["metric"]: r["value"] for r in rep.summary if r["map_kind"] == k} for k in kinds}
        rep.plot = files.write_bytes(plot, compare_png(rep.mean_curves, aucs))
    return rep


# ---- honesty --------------------------------------------------------------------------------
def honesty_lines(cat: Catalog, run_id: int, kind: str) -> list[str]:
    """How the shown map kind scored on this store when ``faithfulness --compare`` measured it, and
    a plain statement when it was not better than random; [] when it was never measured."""
    name = EXPLAIN_KIND.get(kind, kind)
    import duckdb

    try:
        s = tables.map_kind_summary(cat, run_id, name)
    except duckdb.CatalogException:  # a store from before migration m014 opened read-only: no summary table
        return []
    if s is None:
        return [f"{name} maps were not measured on this store yet: `pipeline faithfulness --compare`."]
    where = f"faithfulness run {s['faith_run_id']}" + (f" on run {s['run_id']}" if s["run_id"] != run_id else "")
    parts, worse = [], []
    for m in METRICS:
        r = s["metrics"].get(m)
        if r is None or r["diff"] is None:
            continue
        ref = f"chance {r['chance']:.2f}, random {r['random_value']:.2f}" if m == "pointing" and r["chance"] is not None \
            else f"random {r['random_value']:.3f}"
        parts.append(f"{m} {r['value']:.3f} vs {ref}")
        if not r["better"]:
            worse.append(m)
    if not parts:
        return []
    n = max(r["images"] for r in s["metrics"].values())
    out = [f"{name} maps on this store ({where}, {n} images): " + "; ".join(parts) + "."]
    if worse:
        out.append(f"{name} maps are NOT better than random maps on {', '.join(worse)} here (the 95% interval of the "
                   "difference includes 0 or favours random): do not read them as evidence for those.")
    else:
        out.append(f"{name} maps beat random maps on every measured metric (95% intervals of the differences exclude 0).")
    return out
