"""``pipeline faithfulness``: do the attribution maps point at what the model uses?

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter

from queries.explain import (
    attribute_weights,
    attribution_map,
    class_weights,
    coverage_count,
    curve_auc,
    perturbation_series,
    pixel_order,
    pointing_game,
    scale_boxes,
    softmax,
    step_counts,
)
from stores.catalog import Catalog, StoreError, dumps, now_utc

from .attributes import InputError, norm_class_name
from .explain import image_predictions, image_regions, load_image, prepare_image, resolve_image, resolve_run

BASELINES = ("blur", "mean", "black")
KINDS = ("deletion", "insertion", "random_deletion", "random_insertion")
WORK_SHORT_SIDE = 256
POINTING_MAX_SIDE = 1024


@dataclass
class ScoreTarget:
    """What a scorer is asked: the image and class being explained, among which candidates."""

    image_id: int
    class_id: int
    candidates: np.ndarray  # class ids the run ranked for this image
    boxes: np.ndarray | None = None  # every crop/grid region of the image, in the perturbed image's pixels


Scorer = Callable[[np.ndarray, ScoreTarget], np.ndarray]  # (S, H, W, 3) uint8 -> (S,) scores


def _run_attributes(cat: Catalog, model, run_params: dict) -> tuple[str, list]:
    """(style, [(class_id, embedding)]) of the attributes the scored run used."""
    if model.fingerprint != cat.model:
        raise StoreError(f"Model {model.fingerprint} is not the store's ({cat.model}).")
    style = "sentences" if str(run_params.get("attribute_source", "")).startswith("sentences") else "descriptors"
    rows = cat.query(
        "SELECT a.class_id, e.embedding FROM attributes a JOIN attribute_embeddings e USING (attr_id) "
        "WHERE e.model = ? AND a.style = ? AND NOT starts_with(a.source, 'template:') ORDER BY a.attr_id",
        [model.fingerprint, style],
    ).fetchall()
    if not rows:
        raise StoreError("No encoded attributes for this model; run `pipeline build-attributes` first.")
    return style, rows


class GlobalDescriptorScorer:
    """Softmax probability of the class's global DCLIP score among the candidates (see module doc)."""

    name = "global-dclip-softmax"

    def __init__(self, cat: Catalog, model, run_params: dict):
        style, rows = _run_attributes(cat, model, run_params)
        by_class: dict[int, list] = {}
        for cid, emb in rows:
            by_class.setdefault(int(cid), []).append(emb)
        # mean_a cos(x, t_a) = x · mean_a(t_a) for unit x and t_a: one vector per class
        self.class_vec = {c: np.asarray(v, np.float32).mean(0) for c, v in by_class.items()}
        self.all_classes = np.array(sorted(self.class_vec), np.int64)
        self.model = model
        self.logit_scale = float(model.model.logit_scale.exp().item()) if hasattr(model.model, "logit_scale") else 100.0
        self.params = {"scorer": self.name, "attribute_style": style, "logit_scale": self.logit_scale}

    def __call__(self, images: np.ndarray, target: ScoreTarget) -> np.ndarray:
        import torch

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
        style, rows = _run_attributes(cat, model, run_params)
        self.attr_class = np.array([r[0] for r in rows], np.int64)
        self.attr = np.asarray([r[1] for r in rows], np.float32)
        self.classes = np.unique(self.attr_class)
        self.knobs = {k: run_params[k] for k in ("theta", "eps", "gamma", "max_iter", "tol") if k in run_params}
        self.model = model
        self.logit_scale = float(model.model.logit_scale.exp().item()) if hasattr(model.model, "logit_scale") else 100.0
        self.params = {"scorer": self.name, "attribute_style": style, "logit_scale": self.logit_scale, **self.knobs}

    def __call__(self, images: np.ndarray, target: ScoreTarget) -> np.ndarray:
        import torch

        from queries.scoring import lazsl_scores

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


def baseline_image(arr: np.ndarray, kind: str) -> np.ndarray:
    if kind == "blur":
        sigma = max(1.0, min(arr.shape[:2]) / 20)
        return np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(sigma)))
    if kind == "mean":
        return np.broadcast_to(arr.reshape(-1, 3).mean(0).round().astype(np.uint8), arr.shape).copy()
    if kind == "black":
        return np.zeros_like(arr)
    raise InputError(f"Unknown baseline {kind!r}; use one of {', '.join(BASELINES)}.")


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

    def lines(self) -> list[str]:
        p = self.params
        out = [f"faithfulness run {self.faith_run_id} on run {self.run_id} ({self.method}): {self.images} images, "
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
def read_boxes(path: str | Path) -> list[dict]:
    """Rows ``{image, class, attribute, box}`` from JSON (a list, or {"boxes": [...]}) or JSONL.

    Accepted keys: image | path | image_path | file; class | label | class_name; attribute |
    attr | descriptor | text; and either x0, y0, x1, y1 or box | bbox = [x0, y0, x1, y1]
    (pixels of the original image). Relative image paths are relative to the file's folder.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--boxes {path}: no such file (JSON or JSONL with image, x0, y0, x1, y1).")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        rows = data.get("boxes", data) if isinstance(data, dict) else data
        if isinstance(rows, dict):
            rows = [rows]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p}:{n}: not JSON ({exc.msg}).") from None
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
        if len(box) != 4:
            raise InputError(f"{p}: row {n}: a box is [x0, y0, x1, y1].")
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
def _target_images(cat: Catalog, run_id: int, limit: int | None) -> list[tuple[int, int]]:
    rows = cat.query(
        "SELECT p.image_id, p.class_id FROM predictions p WHERE p.run_id = ? AND p.rank = 1 AND EXISTS "
        "(SELECT 1 FROM alignments a WHERE a.run_id = p.run_id AND a.image_id = p.image_id AND a.class_id = p.class_id) "
        "ORDER BY p.image_id" + (" LIMIT ?" if limit else ""),
        [run_id, limit] if limit else [run_id],
    ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


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
) -> FaithReport:
    """Score the run's attribution maps; store faithfulness_runs/curves/scores and pointing_game rows."""
    from tqdm import tqdm

    if steps < 1:
        raise InputError("--steps must be at least 1.")
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if cat.read_only:
        raise StoreError("faithfulness writes its results; open the store for writing.")
    t0 = time.perf_counter()
    run_id, method = resolve_run(cat, run_id)
    run_params = json.loads(cat.query("SELECT params FROM runs WHERE run_id = ?", [run_id]).fetchone()[0])
    params = {"steps": steps, "limit": limit, "seed": seed, "baseline": baseline, "n_random": n_random,
              "work_short_side": WORK_SHORT_SIDE, "tolerance": tolerance,
              "boxes": str(Path(boxes_file).resolve()) if boxes_file else None,
              "random_map": "U(0,1) weight per region of the plan, same boxes"}
    if scorer is None:
        if model is None:
            raise StoreError("Re-scoring perturbed images needs the model; pass --model/--pretrained of this store.")
        if rescore not in SCORERS:
            raise InputError(f"Unknown --rescore {rescore!r}; use one of {', '.join(SCORERS)}.")
        scorer = SCORERS[rescore](cat, model, run_params)
        params.update(scorer.params)
    else:
        params["scorer"] = scorer_name or getattr(scorer, "name", "custom")
    boxes = read_boxes(boxes_file) if boxes_file else []
    fid = cat.next_id("faithfulness_runs", "faith_run_id")
    rep = FaithReport(fid, run_id, method, params)
    curves, scores, pointing = [], [], []

    targets = _target_images(cat, run_id, limit)
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
        cands = np.array([p["class_id"] for p in image_predictions(cat, run_id, image_id)], np.int64)
        all_ids, _, all_boxes = image_regions(cat, image_id)
        all_boxes = scale_boxes(all_boxes, w / img["width"], h / img["height"])
        res = _curves(arr, cmap, rmaps, baseline_image(arr, baseline), steps, rng, scorer,
                      ScoreTarget(image_id, class_id, cands, all_boxes))
        frac, _ = step_counts(h * w, steps)
        for kind in KINDS:
            y = res[kind]
            curves += [(fid, run_id, image_id, class_id, kind, i, float(frac[i]), float(y[i])) for i in range(steps + 1)]
            auc = curve_auc(frac, y)
            scores.append((fid, run_id, image_id, class_id, kind, auc))
            rep.aucs.setdefault(kind, []).append(auc)
        rep.images += 1

    for row in boxes:
        r = _point(cat, run_id, row, tolerance, rep.skipped)
        if r is not None:
            pointing.append((fid, run_id, *r.values()))
            rep.pointing.append(r)

    rep.seconds = time.perf_counter() - t0
    with cat.transaction():
        cat.query("INSERT INTO faithfulness_runs VALUES (?, ?, ?, ?, ?)",
                  [fid, run_id, dumps(params), getattr(model, "fingerprint", None), now_utc()])
        _insert(cat, "faithfulness_curves", curves,
                ["faith_run_id", "run_id", "image_id", "class_id", "kind", "step", "fraction", "score"])
        _insert(cat, "faithfulness_scores", scores, ["faith_run_id", "run_id", "image_id", "class_id", "kind", "auc"])
        _insert(cat, "pointing_game", pointing,
                ["faith_run_id", "run_id", "image_id", "class_id", "attr_id", "attribute", "hit", "energy_inside",
                 "x", "y", "x0", "y0", "x1", "y1"])
    return rep


def _insert(cat: Catalog, table: str, rows: list[tuple], names: list[str]) -> None:
    if not rows:
        return
    tbl = pa.table([pa.array(list(c)) for c in zip(*rows)], names=names)  # noqa: F841 (DuckDB reads it by name)
    cat.con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(names)} FROM tbl")


def _point(cat: Catalog, run_id: int, row: dict, tolerance: float, skipped: list[str]) -> dict | None:
    """One pointing-game row, or None (reason appended to ``skipped``)."""
    try:
        img = resolve_image(cat, row["image"])
    except InputError:
        skipped.append(f"{row['image']}: not indexed")
        return None
    preds = image_predictions(cat, run_id, img["image_id"])
    if row["cls"]:
        cid = cat.query("SELECT class_id FROM classes WHERE norm_name = ?", [norm_class_name(row["cls"])]).fetchone()
        if cid is None:
            skipped.append(f"{row['image']}: unknown class {row['cls']!r}")
            return None
        class_id = int(cid[0])
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
        want = row["attribute"].strip().lower()
        hit = cat.query(
            "SELECT attr_id FROM attributes WHERE class_id = ? AND lower(trim(text)) = ? ORDER BY attr_id LIMIT 1",
            [class_id, want],
        ).fetchone()
        if hit is None:
            skipped.append(f"{Path(str(row['image'])).name}: class {class_id} has no attribute {row['attribute']!r}")
            return None
        attr_id = int(hit[0])
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
                energy_inside=res.energy_inside, x=res.x / sx, y=res.y / sy, x0=row["box"][0], y0=row["box"][1],
                x1=row["box"][2], y1=row["box"][3])
