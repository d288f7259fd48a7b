"""``pipeline faithfulness``: map kinds measured against random maps of the same kind (and each other).

``plan-dense``  the default: plan crop masses placed inside each crop by dense tokens
                (:mod:`pipeline.explain.pixel_maps`, ``explain --maps plan``)
``crop-boxes``  the plan's mass over whole crop boxes (``explain --maps boxes``)
``occlusion``   drop of the class's LaZSL probability under a blurred window (slow; only the
                first ``--max-occlusion-images`` images)
``random``      U(0, 1) on an 8×8 grid, bilinear (a fresh draw per map, seeded)
``gradcam``     Grad-CAM (``grad-cam`` package) on the image tower's last block for the text
``sim-plain``   cosine of the full image's plain last-layer patch tokens to the text
``sim-sclip``   the same with SCLIP-style tokens (:mod:`pipeline.dense`)
==============  ===============================================================================
=======
For every image the run predicted (and its class's alignments), each map kind
(:mod:`pipeline.explain.map_kinds`: ``plan-dense`` by default, what ``explain`` draws;
``crop-boxes``, ``occlusion``, ``gradcam``, ``sim-plain``, ``sim-sclip`` on request) makes
the predicted class's map and, for pointing, the maps of the ground-truth boxes' attributes.
Each kind is paired with a random map *of the same kind* (``map_kinds.RANDOM_OF``): random
plan masses and random placement inside the same crops for ``plan-dense``, random masses over
the same boxes for ``crop-boxes``, an 8x8 bilinear grid for the others.

Metrics (per image; the class map of the predicted class orders the pixels):

* **deletion / insertion** (RISE): the most attributed pixels replaced by (revealed from) a
  Gaussian blur (``--baseline``) in ``steps`` steps; AUC of the class's softmax probability
  over all classes under the run's own method (``--scorer method``, the default: LaZSL re-run
  on the perturbed full view and crops, :class:`pipeline.explain.maps.LazslScorer`) or under
  the global DCLIP score (``--scorer dclip``, :class:`pipeline.explain.maps.GlobalScorer`:
  one encoder pass per perturbed image instead of 1 + crops). Lower deletion and higher
  insertion are better.
* **ROAD** (Rong et al., 2022; with ``--road``: the ``grad-cam`` package takes seconds to import
  and ROAD adds 6 perturbed images per map) with the package's noisy linear imputation: the
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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from queries.attribution import pointing_chance, pointing_game
from queries.perturb import curve_auc, perturbation_series, pixel_order, step_counts
from queries.stats import paired_bootstrap
from stores import files, tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..errors import InputError
from ..inputs import DEFAULT_MAX_FILE_BYTES
from ..names import norm_class_name
from ..stages.methods import find_method

from .faithfulness import read_boxes
from .honesty import HIGHER_IS_BETTER, METRICS
from .map_kinds import (  # noqa: F401  (parse_kinds re-exported)
    CROP_BOXES,
    DCLIP_SCORER,
    DEFAULT_KIND,
    GRADCAM,
    OCCLUSION,
    PLAN_DENSE,
    RANDOM_OF,
    SCORERS,
    SIM_PLAIN,
    SIM_SCLIP,
    parse_kinds,
)
from .pixel_maps import _attr_embeddings, box_maps, occlusion as occlusion_maps, plan_dense, random_map
from .resolve import BASELINES, baseline_image, load_alignment, load_image, resolve_image, resolve_run

ROAD_FRACTIONS = (10, 30, 50)
WORK_SHORT_SIDE = 256
COST_WARN_SECONDS = 60  # a run estimated longer than this prints its estimate first


# ---- maps of one image --------------------------------------------------------------------
def _up(grid_vals, size_hw) -> np.ndarray:
    # heavy: imported on use
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


def _random_grid(rng, H: int, W: int) -> np.ndarray:
    return _up(rng.random((8, 8)), (H, W))


def image_maps(cat: Catalog, model, run, img: dict, image: Image.Image, pred_class: int, point_classes: set[int],
               kinds: list[str], rng: np.random.Generator, *, occlusion: bool) -> ImageMaps:
    """Every kind's class map (predicted class) and attribute maps (``point_classes``), at
    ``image``'s size, each with its random map of the same kind (``RANDOM_OF``)."""
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
        if PLAN_DENSE in kinds:
            got[PLAN_DENSE] = plan_dense(cat, model, image, als[c], all_ids, all_boxes, rkinds)
        if CROP_BOXES in kinds:
            got[CROP_BOXES] = box_maps(als[c], all_ids, all_boxes, H, W)
        if OCCLUSION in kinds and occlusion:
            cm = occlusion_maps(cat, model, run, image, c, all_boxes)
            out.passes += cm.cost["encoder_passes"]
            got[OCCLUSION] = cm
        for kind, cm in got.items():
            if c == pred_class:
                out.class_map[kind] = cm.class_map
                rkind, rmap = random_map(cm, rng, H, W)
                out.class_map.setdefault(rkind, rmap)
            if c in point_classes:
                for a in attr_ids[c]:
                    m = cm.attribute_map(a)
                    if m is not None:
                        out.attr_maps[(kind, c, a)] = m
                        rkind, rmap = random_map(cm, rng, H, W)
                        out.attr_maps.setdefault((rkind, c, a), rmap)
    text_kinds = [k for k in (GRADCAM, SIM_PLAIN, SIM_SCLIP) if k in kinds]
    if text_kinds or (OCCLUSION in kinds and occlusion):  # their random kind is the 8x8 grid
        rk = RANDOM_OF[GRADCAM]
        out.class_map.setdefault(rk, _random_grid(rng, H, W))
        for c in point_classes:
            for a in attr_ids.get(c, []):
                out.attr_maps.setdefault((rk, c, a), _random_grid(rng, H, W))
    if text_kinds:
        # heavy: imported on use (torch)
        from ..dense import dense_feature_sets
        from .maps import gradcam_map

        mat = tables.attribute_matrix(cat, model.fingerprint)
        cls = np.unique(mat.class_ids)
        cvecs = np.stack([mat.embeddings[mat.class_ids == c].mean(0) for c in cls]).astype(np.float32)
        cvecs /= np.linalg.norm(cvecs, axis=1, keepdims=True)
        full_px = model.preprocess(image)[None]
        texts = {c: _attr_embeddings(cat, model, np.array(attr_ids[c], np.int64)) for c in point_classes if attr_ids.get(c)}
        if GRADCAM in kinds:
            gc_size = (min(H, W),) * 2

            def gc(emb, target):
                return _centre_grid_map_img(gradcam_map(model, full_px, emb, target, gc_size), H, W)
            out.class_map[GRADCAM] = gc(cvecs, int(np.searchsorted(cls, pred_class)))
            for c, E in texts.items():
                for n, a in enumerate(attr_ids[c]):
                    out.attr_maps[(GRADCAM, c, a)] = gc(E, n)
        sims = [k for k in (SIM_PLAIN, SIM_SCLIP) if k in kinds]
        if sims:
            specs = {SIM_PLAIN: {"variant": "plain", "block": -1}, SIM_SCLIP: {"variant": "sclip", "block": -1}}
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
def perturbed_batch(arr: np.ndarray, cmap: np.ndarray, steps: int, rng, road_seed: int, baseline: str = "blur",
                    road: bool = True):
    """Deletion and insertion series (``baseline``: blur by default), then (``road``) ROAD MoRF and LeRF
    imputations (grad-cam's noisy linear imputer) at ROAD_FRACTIONS: (2·(steps+1) [+ 6], 3, H, W) floats in [0, 1]."""
    import torch  # heavy: imported on use

    base = baseline_image(arr, baseline)
    order = pixel_order(cmap, rng)
    series = [perturbation_series(arr, base, order, steps, m) for m in ("deletion", "insertion")]
    curves = torch.from_numpy(np.concatenate(series)).permute(0, 3, 1, 2).float() / 255
    if not road:
        return curves
    # heavy: imported on use
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    mask = torch.from_numpy(np.asarray(cmap, np.float32))
    torch.manual_seed(road_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's __array_wrap__ notice from inside grad-cam
        # grad-cam: percentile p keeps the pixels below it, so removing the top f % is percentile 100 - f
        imputed = [RemoveMostRelevantFirst(100 - f, NoisyLinearImputer())(x, mask) for f in ROAD_FRACTIONS]
        imputed += [RemoveLeastRelevantFirst(100 - f, NoisyLinearImputer())(x, mask) for f in ROAD_FRACTIONS]
    return torch.cat([curves, torch.stack(imputed).clamp(0, 1)])


def curve_metrics(probs: np.ndarray, steps: int, n_pixels: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """{deletion, insertion[, road_morf, road_lerf, road]} from the scores of :func:`perturbed_batch`."""
    n = steps + 1
    frac, _ = step_counts(n_pixels, steps)
    out = {"deletion": curve_auc(frac, probs[:n]), "insertion": curve_auc(frac, probs[n : 2 * n])}
    if len(probs) > 2 * n:
        k = len(ROAD_FRACTIONS)
        morf, lerf = float(probs[2 * n : 2 * n + k].mean()), float(probs[2 * n + k :].mean())
        out.update(road_morf=morf, road_lerf=lerf, road=(lerf - morf) / 2)
    return out, frac, probs[:n], probs[n : 2 * n]


@dataclass
class CompareReport:
    faith_run_id: int
    run_id: int
    params: dict
    kinds: list[str]  # the measured kinds, then their random kinds
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

    def lines(self, limit: int | None = None) -> list[str]:
        """The table; every line names the map kind it is about (``limit``: map-kind rows shown)."""
        p = self.params
        measured = [k for k in self.kinds if k in RANDOM_OF]
        out = [f"faithfulness run {self.faith_run_id} on run {self.run_id}, map kinds "
               + ", ".join(f"{k} (vs {RANDOM_OF[k]})" for k in measured)
               + f": {self.images} images, {p['steps']} steps, {p['baseline']} baseline, scorer {p['scorer']}, "
               f"{self.seconds:.1f} s"
               + (f" (occlusion: {self.occlusion_passes} encoder passes on {p['occlusion_images']} images)"
                  if OCCLUSION in self.kinds else "")]
        out.append(f"  {', '.join(measured)}: deletion lower is better; insertion, ROAD, pointing higher is better. "
                   "Δ = mean difference to the random maps of the same kind on the same images [95% bootstrap "
                   "interval]; * = better than random.")
        by = {(r["map_kind"], r["metric"]): r for r in self.summary}
        metrics = [m for m in METRICS if any(mm == m for _, mm in by)]  # only what was measured (ROAD: --road)
        out.append(f"  {'map kind':17s} {'n':>4s}  " + "  ".join(f"{m:>31s}" for m in metrics))
        for k in self.kinds[: limit or None]:
            cells = []
            for m in metrics:
                r = by.get((k, m))
                if r is None:
                    cells.append(f"{'-':>31s}")
                elif r["diff"] is None:
                    cells.append(f"{r['value']:>8.3f}{'':23s}")
                else:
                    cells.append(f"{r['value']:>8.3f} Δ{r['diff']:+.3f} [{r['diff_low']:+.3f},{r['diff_high']:+.3f}]"
                                 f"{'*' if r['better'] else ' '}")
            n = max((r["images"] for (kk, _), r in by.items() if kk == k), default=0)
            out.append(f"  {k:17s} {n:4d}  " + "  ".join(cells))
        if self.chance is not None:
            out.append(f"  {', '.join(measured)} pointing: chance (grown box area / image area) {self.chance:.3f}; "
                       f"tolerance {p['tolerance']} px")
        if self.plot:
            out.append(f"  {', '.join(measured)} curves plot: {self.plot}")
        if self.skipped:
            out.append(f"  {', '.join(measured)} skipped {len(self.skipped)}: " + "; ".join(self.skipped[:5]))
        return out


def sample_targets(targets: list, max_images: int | None) -> list:
    """At most ``max_images`` of the (image_id, class_id) targets, evenly spread over image_id order."""
    if not max_images or len(targets) <= max_images:
        return list(targets)
    pick = np.unique(np.linspace(0, len(targets) - 1, max_images).round().astype(int))
    return [targets[i] for i in pick]


def _scorer_factory(cat: Catalog, model, run, scorer: str):
    """(name, make(boxes of the work image) -> torch module of probabilities over every class, class ids)."""
    from .maps import GlobalScorer, LazslScorer  # heavy: imported on use (torch)

    style = "sentences" if str(run.params.get("texts", {}).get("kind", "")).startswith("sentences") else "descriptors"
    mat = tables.attribute_matrix(cat, model.fingerprint, style)
    if len(mat) == 0:
        raise InputError("The store has no encoded attributes for its model; run `pipeline build-attributes` first.")
    cls = np.unique(mat.class_ids)
    attr_class = np.searchsorted(cls, mat.class_ids)
    if scorer == DCLIP_SCORER:
        glob = GlobalScorer(model, mat.embeddings, attr_class, len(cls))
        return "dclip-global-softmax-all-classes", lambda boxes: glob, cls
    if scorer != "method":
        raise InputError(f"--scorer must be one of {', '.join(SCORERS)} (got {scorer!r}).")
    spec = find_method(run.method)
    if spec is None or not spec.rescores_pixels:
        raise InputError(f"Run {run.run_id} ({run.method}) has no re-scorer of its own method here; "
                         "use --scorer dclip (the global DCLIP probability).")
    theta = float(run.params.get("config", {}).get("theta", 0.8))
    return (f"{run.method}-softmax-all-classes (theta {theta})",
            lambda boxes: LazslScorer(model, mat.embeddings, attr_class, boxes, theta=theta), cls)


def compare_maps(cat: Catalog, model, run_id: int | None = None, *, kinds: list[str] | None = None, steps: int = 10,
                 max_images: int | None = None, occlusion_images: int = 8, boxes_file=None,
                 tolerance: float = 8.0, seed: int = 0, plot: str | Path | None = None, progress: bool = True,
                 max_file_bytes: int | None = None, baseline: str = "blur", scorer: str = "method",
                 road: bool = False, notify=None) -> CompareReport:
    """Measure map kinds against random maps of the same kind (module doc); store
    faithfulness_runs/curves/scores/pointing_game rows with their map_kind, and faithfulness_summary
    rows; write the curves plot to ``plot``. ``max_images`` caps the images of every metric;
    ``notify(line)`` gets the cost estimate when the run looks longer than a minute."""
    from tqdm import tqdm  # heavy: imported on use

    if road or GRADCAM in (kinds or []):
        try:
            # heavy: imported on use (ROAD's imputer, Grad-CAM; an optional extra)
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            raise InputError("--road and gradcam maps need the grad-cam package: "
                             "pip install 'zsl-pipeline[explain]'.") from None
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if cat.read_only:
        raise StoreError("faithfulness writes its results; open the store for writing.")
    if model is None:
        raise StoreError("Measuring maps re-encodes images: the store's model is needed.")
    kinds = [k for k in (kinds or [DEFAULT_KIND]) if k in RANDOM_OF]
    t0 = time.perf_counter()
    run = resolve_run(cat, run_id)
    scorer_name, make_scorer, cls = _scorer_factory(cat, model, run, scorer)
    boxes = read_boxes(boxes_file, max_file_bytes or DEFAULT_MAX_FILE_BYTES) if boxes_file else []
    targets = sample_targets(tables.top1_with_alignments(cat, run.run_id, None), max_images)
    skipped: list[str] = []
    by_image = _boxes_by_image(cat, boxes, {t[0] for t in targets}, skipped)
    all_kinds = kinds + [r for r in dict.fromkeys(RANDOM_OF[k] for k in kinds)]
    params = dict(kinds=kinds, random_kinds={k: RANDOM_OF[k] for k in kinds}, steps=steps, max_images=max_images,
                  seed=seed, baseline=baseline, scorer=scorer_name, road=list(ROAD_FRACTIONS) if road else None, tolerance=tolerance,
                  occlusion_images=min(occlusion_images, len(targets)) if OCCLUSION in kinds else 0,
                  boxes=str(Path(boxes_file).resolve()) if boxes_file else None, work_short_side=WORK_SHORT_SIDE)
    fid = tables.next_faithfulness_run_id(cat)
    rep = CompareReport(fid, run.run_id, params, all_kinds, skipped=skipped)
    rows = tables.FaithfulnessRows(fid, run.run_id, params, model.fingerprint)
    curves_acc: dict[tuple[str, str], list[np.ndarray]] = {}
    chance = []
    for n_img, (image_id, class_id) in enumerate(tqdm(targets, desc="faithfulness", unit="img", disable=not progress)):
        t_img = time.perf_counter()
        if not _measure_image(cat, model, run, image_id, class_id, by_image.get(image_id, []), kinds, rep, rows,
                              curves_acc, chance, make_scorer, cls, steps=steps, seed=seed, baseline=baseline,
                              tolerance=tolerance, occlusion=n_img < occlusion_images, road=road):
            continue
        if n_img == 0 and notify is not None and len(targets) > 1:
            est = (time.perf_counter() - t_img) * len(targets)
            if est > COST_WARN_SECONDS:
                notify(f"faithfulness of {', '.join(kinds)} maps: about {est / 60:.1f} min for {len(targets)} images "
                       f"({time.perf_counter() - t_img:.1f} s for the first); --max-images N measures fewer.")
    rep.chance = float(np.mean(chance)) if chance else None
    _summarise(rep, kinds, seed)
    rows.summary = rep.summary
    rep.mean_curves = {k: {} for k in all_kinds}
    frac, _ = step_counts(100, steps)
    for (kind, mode), ys in curves_acc.items():
        rep.mean_curves[kind][mode] = (frac, np.mean(ys, 0))
    rep.seconds = time.perf_counter() - t0
    tables.insert_faithfulness(cat, rows)
    if plot is not None and curves_acc:
        from .plots import compare_png  # heavy: imported on use (matplotlib)

        aucs = {k: {r["metric"]: r["value"] for r in rep.summary if r["map_kind"] == k} for k in all_kinds}
        rep.plot = files.write_bytes(plot, compare_png(rep.mean_curves, aucs))
    return rep


def _boxes_by_image(cat: Catalog, boxes: list[dict], wanted: set[int], skipped: list[str]) -> dict[int, list[dict]]:
    """The ground-truth boxes of the measured images (only those: --max-images caps pointing too)
    that name a known class and attribute; why any other box is left out goes to ``skipped``."""
    by_image: dict[int, list[dict]] = {}
    if not boxes:
        return by_image
    names = tables.class_ids_by_norm(cat)
    for row in boxes:
        name = Path(str(row["image"])).name
        try:
            iid = resolve_image(cat, row["image"])["image_id"]
        except InputError:
            skipped.append(f"{name}: not indexed")
            continue
        if iid not in wanted:
            continue  # not among the measured images
        cid = names.get(norm_class_name(row["cls"])) if row["cls"] else None
        if cid is None or not row["attribute"]:
            skipped.append(f"{name}: a pointing box needs a known class and an attribute")
            continue
        aid = tables.find_attribute(cat, cid, row["attribute"])
        if aid is None:
            skipped.append(f"{name}: class {row['cls']!r} has no attribute {row['attribute']!r}")
            continue
        by_image.setdefault(iid, []).append(dict(row, class_id=int(cid), attr_id=int(aid)))
    return by_image


def _measure_image(cat, model, run, image_id, class_id, pts, kinds, rep, rows, curves_acc, chance, make_scorer, cls, *,
                   steps, seed, baseline, tolerance, occlusion, road) -> bool:
    """Every kind's (and its random kind's) metrics on one image, appended to ``rep`` and ``rows``."""
    import torch  # heavy: imported on use

    img = resolve_image(cat, image_id)
    try:
        original = load_image(img["path"])
    except InputError as exc:
        rep.skipped.append(str(exc))
        return False
    s = min(1.0, WORK_SHORT_SIDE / min(original.size))
    image = original.resize((round(original.size[0] * s), round(original.size[1] * s)), Image.Resampling.BILINEAR) \
        if s < 1 else original
    W, H = image.size
    rng = np.random.default_rng([seed, image_id % (2**32)])
    maps = image_maps(cat, model, run, img, image, class_id, {p["class_id"] for p in pts}, kinds, rng,
                      occlusion=occlusion)
    rep.occlusion_passes += maps.passes
    arr = np.asarray(image)
    _, _, all_boxes = tables.image_regions(cat, image_id)
    scorer = make_scorer(all_boxes * np.array([W / img["width"], H / img["height"]] * 2))
    for kind, cmap in maps.class_map.items():
        batch = perturbed_batch(arr, cmap, steps, rng, road_seed=seed, baseline=baseline, road=road)
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
        for kind in rep.kinds:
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
    return True


def _summarise(rep: CompareReport, kinds: list[str], seed: int) -> None:
    """One summary row per (kind, metric): the mean, and for measured kinds the paired difference
    to their random kind with a 95% bootstrap interval."""
    for kind in rep.kinds:
        for m in METRICS:
            v = rep.values.get((kind, m))
            if not v:
                continue
            ids = sorted(v)
            a = np.array([v[i] for i in ids])
            row = dict(map_kind=kind, metric=m, images=len(ids), value=float(a.mean()), random_value=None,
                       chance=rep.chance if m == "pointing" else None, diff=None, diff_low=None, diff_high=None, better=None)
            rnd = rep.values.get((RANDOM_OF[kind], m), {}) if kind in kinds else {}
            common = [i for i in ids if i in rnd]
            if len(common) >= 2:
                ci = paired_bootstrap([v[i] for i in common], [rnd[i] for i in common], seed=seed)
                good = ci.low > 0 if HIGHER_IS_BETTER[m] else ci.high < 0
                row.update(random_value=float(np.mean([rnd[i] for i in common])), diff=ci.mean, diff_low=ci.low,
                           diff_high=ci.high, better=bool(good))
            rep.summary.append(row)
