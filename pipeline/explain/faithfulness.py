"""Deletion/insertion of the run's crop-box maps with a pluggable scorer, and the boxes reader.

``pipeline faithfulness`` measures the maps ``explain`` draws (:mod:`pipeline.explain.compare`);
this module keeps the per-region library function (its rows are stored with map_kind
``crop-boxes`` and ``random-crop-boxes``; tests pass synthetic scorers to check the metric
itself) and :func:`read_boxes`, which both use. Do the attribution maps point at what the model uses?

Deletion and insertion (RISE; the Ins/Del AUC reported by LICO): order the pixels by the
predicted class's attribution map (``pipeline.explain``), then in ``steps`` equal steps

* deletion: replace the most attributed pixels of the image by a baseline,
* insertion: start from the baseline and reveal the most attributed pixels,

re-encode each perturbed image, re-score the class, and take the area under the score curve
(trapezoid rule over the fraction of pixels, in [0, 1]). Lower deletion AUC and higher
insertion AUC mean a more faithful map. The same is done with a random map of the same
regions (each region gets a U(0, 1) weight, seeded by ``--seed`` and the image), so a map
can be judged against chance at the same spatial granularity.

Choices, and why:

* Baseline (``--baseline``): ``blur`` (default): a Gaussian blur of the image with σ = 1/20
  of its short side; it keeps colours and layout and removes detail, so deleted images stay
  closer to natural images than a black hole would. ``mean`` (per-channel mean colour) and
  ``black`` (zeros, what RISE and the LICO reproductions use for deletion) are offered too.
* Re-scoring: the perturbed image's full view is re-encoded and scored with the class's
  global score, the DCLIP score mean_a cos(image, attribute) over the attributes the run
  used; the curve value is its softmax probability over the run's candidate classes for
  that image, at the model's logit scale (CLIP's zero-shot probability). Re-running LaZSL
  would re-encode every crop at every step (≈ 90× the encoder cost: 3,600 passes per image
  for 10 steps), which CPUs cannot afford; the global score is what the LaZSL score mixes
  in with weight 1-θ, and it needs the image alone. A different ``scorer`` can be passed
  to :func:`faithfulness` (tests use synthetic ones to check the metric itself).
* Work size: images are scaled down so that the short side is at most 256 px before they
  are perturbed (the encoder sees 224 px or less anyway); boxes are scaled to match.

The pointing game (``--boxes FILE``): for each ground-truth box (JSON or JSONL rows with an
image path, optionally a class and an attribute, and ``x0, y0, x1, y1`` or ``box``), is the
maximum of the attribute's map (the class map when no attribute is given) inside the box?
Also stored: the share of the map's positive mass inside the box (SCH).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from queries.attribution import (
    attribute_weights,
    attribution_map,
    class_weights,
    coverage_count,
    pointing_game,
    scale_boxes,
)
from queries.perturb import curve_auc, perturbation_series, pixel_order, softmax, step_counts
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..errors import InputError
from ..inputs import DEFAULT_MAX_FILE_BYTES, JSONTooDeep, loads_json, read_text_bounded
from ..names import norm_class_name
from .map_kinds import CROP_BOXES, RANDOM_OF
from .resolve import BASELINES, baseline_image, load_image, prepare_image, resolve_image, resolve_run  # noqa: F401

KINDS = ("deletion", "insertion", "random_deletion", "random_insertion")
WORK_SHORT_SIDE = 256
MAX_STEPS = 200
POINTING_MAX_SIDE = 1024


@dataclass
class ScoreTarget:
    """What a scorer is asked: the image and class being explained, among which candidates."""

    image_id: int
    class_id: int
    candidates: np.ndarray  # class ids the run ranked for this image
    boxes: np.ndarray | None = None  # every crop/grid region of the image, in the perturbed image's pixels


Scorer = Callable[[np.ndarray, ScoreTarget], np.ndarray]  # (S, H, W, 3) uint8 -> (S,) scores


def _run_attributes(cat: Catalog, model, run_params: dict) -> tuple[str, tables.TextMatrix]:
    """(style, encoded attributes) the scored run used."""
    if model.fingerprint != cat.model:
        raise StoreError(f"Model {model.fingerprint} is not the store's ({cat.model}).")
    style = "sentences" if str(run_params.get("texts", {}).get("kind", "")).startswith("sentences") else "descriptors"
    attrs = tables.attribute_matrix(cat, model.fingerprint, style)
    if len(attrs) == 0:
        raise StoreError("No encoded attributes for this model; run `pipeline build-attributes` first.")
    return style, attrs


class GlobalDescriptorScorer:
    """Softmax probability of the class's global DCLIP score among the candidates (see module doc)."""

    name = "global-dclip-softmax"

    def __init__(self, cat: Catalog, model, run_params: dict):
        style, attrs = _run_attributes(cat, model, run_params)
        by_class: dict[int, list] = {}
        for cid, emb in zip(attrs.class_ids.tolist(), attrs.embeddings):
            by_class.setdefault(int(cid), []).append(emb)
        # mean_a cos(x, t_a) = x · mean_a(t_a) for unit x and t_a: one vector per class
        self.class_vec = {c: np.asarray(v, np.float32).mean(0) for c, v in by_class.items()}
        self.all_classes = np.array(sorted(self.class_vec), np.int64)
        self.model = model
        self.logit_scale = float(model.model.logit_scale.exp().item()) if hasattr(model.model, "logit_scale") else 100.0
        self.params = {"scorer": self.name, "attribute_style": style, "logit_scale": self.logit_scale}

    def __call__(self, images: np.ndarray, target: ScoreTarget) -> np.ndarray:
        import torch  # heavy: imported on use

        cand = [c for c in target.candidates.tolist() if c in self.class_vec]
        if len(cand) < 2:  # a softmax over one class is always 1: use every class instead
            cand = self.all_classes.tolist()
        pixels = torch.stack([self.model.preprocess(Image.fromarray(a)) for a in images])
        feats = self.model.encode_images(pixels).numpy()
        mat = np.stack([self.class_vec[c] for c in cand])
        prob = softmax(self.logit_scale * (feats @ mat.T), axis=1)
        return prob[:, cand.index(target.class_id)]


class LazslScorer:
    """Softmax probability of the class's LaZSL score, re-running LaZSL on the perturbed image:
    its full view and its crops at the stored boxes are re-encoded at every step (costly)."""

    name = "lazsl-softmax"

    def __init__(self, cat: Catalog, model, run_params: dict):
        style, attrs = _run_attributes(cat, model, run_params)
        self.attr_class, self.attr = attrs.class_ids, attrs.embeddings
        self.classes = np.unique(self.attr_class)
        config = run_params.get("config", {})
        self.knobs = {k: config[k] for k in ("theta", "eps", "gamma", "max_iter", "tol") if k in config}
        self.model = model
        self.logit_scale = float(model.model.logit_scale.exp().item()) if hasattr(model.model, "logit_scale") else 100.0
        self.params = {"scorer": self.name, "attribute_style": style, "logit_scale": self.logit_scale, **self.knobs}

    def __call__(self, images: np.ndarray, target: ScoreTarget) -> np.ndarray:
        # heavy: imported on use
        import torch

        from queries.lazsl import lazsl_scores

        if target.boxes is None or len(target.boxes) == 0:
            raise StoreError("LaZSL re-scoring needs the image's crops; index with --regions crops|grid.")
        cand = [c for c in target.candidates.tolist() if c in set(self.classes.tolist())]
        if len(cand) < 2:
            cand = self.classes.tolist()
        boxes = [tuple(int(round(v)) for v in b) for b in target.boxes]
        views = []
        for a in images:
            im = Image.fromarray(a)
            views.append(self.model.preprocess(im))
            views += [self.model.preprocess(im.crop(b)) for b in boxes]
        pixels = torch.stack(views)
        feats = torch.cat([self.model.encode_images(pixels[i : i + 512]) for i in range(0, len(pixels), 512)]).numpy()
        feats = feats.reshape(len(images), 1 + len(boxes), -1)
        cls_index = np.searchsorted(self.classes, self.attr_class)
        cand_idx = np.searchsorted(self.classes, np.array(cand))
        res = lazsl_scores(feats[:, 0], feats[:, 1:], self.attr, cls_index, np.tile(cand_idx, (len(images), 1)),
                           return_plan=False, **self.knobs)
        prob = softmax(self.logit_scale * np.asarray(res.scores, np.float64), axis=1)
        return prob[:, cand.index(target.class_id)]


SCORERS = {"global": GlobalDescriptorScorer, "lazsl": LazslScorer}


@dataclass
class FaithReport:
    faith_run_id: int
    run_id: int
    method: str
    params: dict
    images: int = 0
    aucs: dict[str, list[float]] = field(default_factory=dict)
    pointing: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def mean_auc(self, kind: str) -> float | None:
        v = self.aucs.get(kind)
        return float(np.mean(v)) if v else None

    def records(self) -> list[dict]:
        """One row per curve kind (mean AUC) and one for the pointing game, for --format."""
        rows = [dict(faith_run_id=self.faith_run_id, run_id=self.run_id, metric=k, images=len(v), value=self.mean_auc(k))
                for k, v in self.aucs.items() if v]
        if self.pointing:
            rows.append(dict(faith_run_id=self.faith_run_id, run_id=self.run_id, metric="pointing_game",
                             images=len(self.pointing), value=float(np.mean([r["hit"] for r in self.pointing]))))
        return rows

    def lines(self) -> list[str]:
        p = self.params
        out = [f"faithfulness run {self.faith_run_id} on run {self.run_id} ({self.method}), {CROP_BOXES} maps vs "
               f"random-{CROP_BOXES}: {self.images} images, "
               f"{p['steps']} steps, baseline {p['baseline']}, scorer {p.get('scorer', '?')}, {self.seconds:.1f} s"]
        if self.images:
            out.append(f"  {'curve':18s} {'images':>6s} {'mean AUC':>9s}")
            notes = {"deletion": "lower is better", "insertion": "higher is better"}
            for k in KINDS:
                if self.aucs.get(k):
                    out.append(f"  {k:18s} {len(self.aucs[k]):6d} {self.mean_auc(k):9.4f}  {notes.get(k, '')}".rstrip())
            d, rd = self.mean_auc("deletion"), self.mean_auc("random_deletion")
            i, ri = self.mean_auc("insertion"), self.mean_auc("random_insertion")
            if None not in (d, rd, i, ri):
                out.append(f"  overall (ins - del): maps {i - d:+.4f}, random {ri - rd:+.4f}")
        if self.pointing:
            hits = sum(r["hit"] for r in self.pointing)
            out.append(f"  pointing game: {hits}/{len(self.pointing)} hits ({100 * hits / len(self.pointing):.1f}%), "
                       f"mean share of map inside the box {np.mean([r['energy_inside'] for r in self.pointing]):.3f}")
        if self.skipped:
            out.append(f"  skipped {len(self.skipped)}: " + "; ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        return out


# ---- ground-truth boxes -----------------------------------------------------------------
def _finite_coordinate(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e9 and math.isfinite(v)


def read_boxes(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[dict]:
    """Rows ``{image, class, attribute, box}`` from JSON (a list, or {"boxes": [...]}) or JSONL.

    Accepted keys: image | path | image_path | file; class | label | class_name; attribute |
    attr | descriptor | text; and either x0, y0, x1, y1 or box | bbox = [x0, y0, x1, y1]
    (pixels of the original image). Relative image paths are relative to the file's folder.
    The file is at most ``max_bytes`` (checked before reading), nested a few levels at most,
    and every box value a finite number.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--boxes {path}: no such file (JSON or JSONL with image, x0, y0, x1, y1).")
    text = read_text_bounded(p, max_bytes, what="--boxes")
    try:
        data = loads_json(text)
        rows = data.get("boxes", data) if isinstance(data, dict) else data
        if isinstance(rows, dict):
            rows = [rows]
    except JSONTooDeep as exc:
        raise InputError(f"{p}: JSON {exc}; expected rows of boxes.") from None
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(loads_json(line))
                except (json.JSONDecodeError, JSONTooDeep) as exc:
                    raise InputError(f"{p}:{n}: not a JSON row ({getattr(exc, 'msg', exc)}).") from None
    if not isinstance(rows, list):
        raise InputError(f"{p}: expected a list of box rows (or JSON lines), not a JSON {type(rows).__name__}.")
    out = []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise InputError(f"{p}: row {n} is not an object.")
        image = next((r[k] for k in ("image", "path", "image_path", "file") if r.get(k) is not None), None)
        if image is None and r.get("image_id") is None:
            raise InputError(f"{p}: row {n} has no image (keys image/path) or image_id.")
        box = r.get("box", r.get("bbox"))
        if box is None:
            try:
                box = [r["x0"], r["y0"], r["x1"], r["y1"]]
            except KeyError:
                raise InputError(f"{p}: row {n} has no box (x0, y0, x1, y1 or box: [x0, y0, x1, y1]).") from None
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                _finite_coordinate(v) for v in box):
            raise InputError(f"{p}: row {n}: a box is [x0, y0, x1, y1], four finite numbers.")
        if image is None and not (isinstance(r["image_id"], int) and 0 <= r["image_id"] < 2**63):
            raise InputError(f"{p}: row {n}: image_id must be a non-negative integer.")
        if image is not None and not Path(str(image)).is_absolute():
            image = str((p.parent / str(image)).resolve())
        out.append(dict(
            image=image if image is not None else int(r["image_id"]),
            cls=next((r[k] for k in ("class", "label", "class_name") if r.get(k)), None),
            attribute=next((r[k] for k in ("attribute", "attr", "descriptor", "text") if r.get(k)), None),
            box=[float(v) for v in box],
        ))
    return out


# ---- the stage --------------------------------------------------------------------------
def _curves(arr, cmap, rmaps, base, steps, rng, scorer, target):
    """Scores for every kind: {kind: (steps+1,)}; random kinds averaged over the random maps."""
    series, index = [], []
    for kind_maps, prefix in (([cmap], ""), (rmaps, "random_")):
        for mi, m in enumerate(kind_maps):
            order = pixel_order(m, rng)
            for mode in ("deletion", "insertion"):
                series.append(perturbation_series(arr, base, order, steps, mode))
                index.append(prefix + mode)
    scores = np.asarray(scorer(np.concatenate(series), target), dtype=np.float64).reshape(len(series), steps + 1)
    out: dict[str, list] = {}
    for k, s in zip(index, scores):
        out.setdefault(k, []).append(s)
    return {k: np.mean(v, axis=0) for k, v in out.items()}


def faithfulness(
    cat: Catalog,
    model=None,
    run_id: int | None = None,
    *,
    steps: int = 10,
    limit: int | None = None,
    boxes_file: str | Path | None = None,
    seed: int = 0,
    baseline: str = "blur",
    n_random: int = 1,
    tolerance: float = 0.0,
    rescore: str = "global",
    scorer: Scorer | None = None,
    scorer_name: str | None = None,
    progress: bool = True,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> FaithReport:
    """Score the run's attribution maps; store faithfulness_runs/curves/scores and pointing_game rows."""
    from tqdm import tqdm  # heavy: imported on use

    if not 1 <= steps <= MAX_STEPS:  # memory grows with steps: 201 perturbed copies of each image at most
        raise InputError(f"--steps must be in [1, {MAX_STEPS}] (got {steps}).")
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if cat.read_only:
        raise StoreError("faithfulness writes its results; open the store for writing.")
    t0 = time.perf_counter()
    run = resolve_run(cat, run_id)
    run_id, method, run_params = run.run_id, run.method, run.params
    params = {"steps": steps, "limit": limit, "seed": seed, "baseline": baseline, "n_random": n_random,
              "work_short_side": WORK_SHORT_SIDE, "tolerance": tolerance,
              "boxes": str(Path(boxes_file).resolve()) if boxes_file else None,
              "map_kind": CROP_BOXES, "random_map": "random-crop-boxes: U(0,1) weight per region of the plan, same boxes"}
    if scorer is None:
        if model is None:
            raise StoreError("Re-scoring perturbed images needs the model; pass --model/--pretrained of this store.")
        if rescore not in SCORERS:
            raise InputError(f"Unknown --rescore {rescore!r}; use one of {', '.join(SCORERS)}.")
        scorer = SCORERS[rescore](cat, model, run_params)
        params.update(scorer.params)
    else:
        params["scorer"] = scorer_name or getattr(scorer, "name", "custom")
    boxes = read_boxes(boxes_file, max_file_bytes) if boxes_file else []
    fid = tables.next_faithfulness_run_id(cat)
    rep = FaithReport(fid, run_id, method, params)
    rows = tables.FaithfulnessRows(fid, run_id, params, getattr(model, "fingerprint", None))

    targets = tables.top1_with_alignments(cat, run_id, limit)
    for image_id, class_id in tqdm(targets, desc="faithfulness", unit="img", disable=not progress):
        img = resolve_image(cat, image_id)
        short = min(img["width"], img["height"])
        max_side = round(max(img["width"], img["height"]) * min(1.0, WORK_SHORT_SIDE / short))
        als, region_ids, rboxes, (w, h), _, _ = prepare_image(cat, run_id, img, [class_id], max_side=max_side)
        try:
            arr = np.asarray(load_image(img["path"], (w, h)))
        except InputError as exc:
            rep.skipped.append(str(exc))
            continue
        rng = np.random.default_rng([seed, image_id % (2**32)])
        # pixels no region covers have no attribution: they go last, in random order
        uncovered = coverage_count(rboxes, h, w) == 0
        cmap = np.where(uncovered, -np.inf, attribution_map(rboxes, class_weights(als[class_id], region_ids), h, w))
        rmaps = [np.where(uncovered, -np.inf, attribution_map(rboxes, rng.random(len(region_ids)), h, w))
                 for _ in range(n_random)]
        cands = np.array([p["class_id"] for p in tables.image_predictions(cat, run_id, image_id)], np.int64)
        all_ids, _, all_boxes = tables.image_regions(cat, image_id)
        all_boxes = scale_boxes(all_boxes, w / img["width"], h / img["height"])
        res = _curves(arr, cmap, rmaps, baseline_image(arr, baseline), steps, rng, scorer,
                      ScoreTarget(image_id, class_id, cands, all_boxes))
        frac, _ = step_counts(h * w, steps)
        for kind in KINDS:
            y = res[kind]
            map_kind = RANDOM_OF[CROP_BOXES] if kind.startswith("random_") else CROP_BOXES
            rows.curves += [dict(image_id=image_id, class_id=class_id, kind=kind, step=i, fraction=float(frac[i]),
                                 score=float(y[i]), map_kind=map_kind) for i in range(steps + 1)]
            auc = curve_auc(frac, y)
            rows.scores.append(dict(image_id=image_id, class_id=class_id, kind=kind, auc=auc, map_kind=map_kind))
            rep.aucs.setdefault(kind, []).append(auc)
        rep.images += 1

    for row in boxes:
        r = _point(cat, run, row, tolerance, rep.skipped)
        if r is not None:
            rows.pointing.append(r)
            rep.pointing.append(r)

    rep.seconds = time.perf_counter() - t0
    tables.insert_faithfulness(cat, rows)
    return rep


def _point(cat: Catalog, run: tables.RunRecord, row: dict, tolerance: float, skipped: list[str]) -> dict | None:
    """One pointing-game row, or None (reason appended to ``skipped``)."""
    try:
        img = resolve_image(cat, row["image"])
    except InputError:
        skipped.append(f"{row['image']}: not indexed")
        return None
    run_id = run.run_id
    preds = tables.image_predictions(cat, run_id, img["image_id"])
    if row["cls"]:
        cid = tables.class_ids_by_norm(cat).get(norm_class_name(row["cls"]))
        if cid is None:
            skipped.append(f"{row['image']}: unknown class {row['cls']!r}")
            return None
        class_id = int(cid)
    elif preds:
        class_id = preds[0]["class_id"]
    else:
        skipped.append(f"{row['image']}: no predictions in run {run_id}")
        return None
    als, region_ids, rboxes, (w, h), scale, _ = prepare_image(cat, run_id, img, [class_id], max_side=POINTING_MAX_SIDE)
    al = als[class_id]
    if len(al) == 0:
        skipped.append(f"{Path(str(row['image'])).name}: no alignments for class {class_id} (not a candidate?)")
        return None
    attr_id = None
    if row["attribute"]:
        attr_id = tables.find_attribute(cat, class_id, row["attribute"])
        if attr_id is None:
            skipped.append(f"{Path(str(row['image'])).name}: class {class_id} has no attribute {row['attribute']!r}")
            return None
        weights = attribute_weights(al, region_ids, attr_id)
    else:
        weights = class_weights(al, region_ids)
    heat = attribution_map(rboxes, weights, h, w)
    sx, sy = w / img["width"], h / img["height"]
    box = [row["box"][0] * sx, row["box"][1] * sy, row["box"][2] * sx, row["box"][3] * sy]
    res = pointing_game(heat, box, tolerance * sx)
    if res is None:
        skipped.append(f"{Path(str(row['image'])).name}: empty map")
        return None
    return dict(image_id=img["image_id"], class_id=class_id, attr_id=attr_id, attribute=row["attribute"], hit=res.hit,
                map_kind=CROP_BOXES,
                energy_inside=res.energy_inside, x=res.x / sx, y=res.y / sy, x0=row["box"][0], y0=row["box"][1],
                x1=row["box"][2], y1=row["box"][3])
