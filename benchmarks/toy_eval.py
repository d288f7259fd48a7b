"""Measure zero-shot top-1 and region alignment of a CLIP on the toy world's held-out classes.

    PYTHONPATH=$PWD python benchmarks/toy_eval.py --weights toy-clip --n-per-class 20

Methods (all on held-out classes, whose attribute combinations never appear in training):

* ``clip``: name only, ``"a photo of a {name}."`` (names are made up: should be near chance).
* ``dclip``: mean cosine of the full image with ``"{name}, which is a red crest"`` (DCLIP rule).
* ``lazsl``: the project's LaZSL (:func:`queries.lazsl.lazsl_scores`) over the full image and
  N (60) random square crops of side U(lo, 0.9)·min(H, W), lo = 0.5 (θ 0.8, ε 0.1).

Pointing game (true class, each attribute): does the region carrying the most transport mass
toward the attribute land in the ground-truth box of the part that carries it?

* ``crop_centre``: centre of the crop with the largest T[m, n] (full image excluded);
  chance = share of kept crops whose centre is in the box.
* ``heat``: every crop spreads the mass it sends to the attribute evenly over its pixels; the
  heat is this attribute's mass density minus the mean density of the class's attributes
  (where this attribute's mass sits *more* than the others'); a hit when its peak is in the
  box. chance = box area / image area; ``object_prior`` = peak of the kept crops' mass
  density, the same point for every attribute (it finds the bird, not the part).
* ``nearest_part``: the heat peak is nearer to this attribute's part than to the bird's three
  other parts (chance 1/4).

Prints one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.toy import world as tw  # noqa: E402
from queries.lazsl import lazsl_scores  # noqa: E402
from queries.regions import random_square_crops  # noqa: E402


def _coverage(boxes, size):
    cov = np.zeros((len(boxes), size, size), dtype=np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cov[i, y0:y1, x0:x1] = 1
    return cov


def _peak(h: np.ndarray) -> tuple[float, float]:
    """Argmax pixel of a heat map; ties -> the tied pixel nearest their centroid. Returns (x, y) centre."""
    mx = h.max()
    ys, xs = np.nonzero(h >= mx - 1e-7)
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return xs[i] + 0.5, ys[i] + 0.5


def _in_box(x, y, b) -> bool:
    return b[0] <= x < b[2] and b[1] <= y < b[3]


def _nearest(x, y, boxes) -> int:
    """Index of the box nearest to the point (0 inside)."""
    d = [max(b[0] - x, 0, x - b[2]) ** 2 + max(b[1] - y, 0, y - b[3]) ** 2 for b in boxes]
    return int(np.argmin(d))


def build_eval_set(setting: str, n_per_class: int, seed: int = 0, split_seed: int = 0):
    """The same scenes ``make_toyworld(..., seed, setting)`` writes, kept in memory."""
    split = tw.make_split(split_seed)
    items = []
    for ci, combo in enumerate(split.heldout):
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, tw.SETTINGS.index(setting), ci, i])
            scene = tw.render_example(combo, setting, split.heldout, rng)
            items.append((ci, scene))
    return split, items


def evaluate(lm, setting: str = "parts", n_per_class: int = 20, seed: int = 0, n_crops: int = 60,
             crop_lo: float = 0.5, theta: float = 0.8, eps: float = 0.1, split_seed: int = 0,
             batch_images: int = 16) -> dict:
    """Top-1 of clip / dclip / lazsl and the pointing game on one setting's held-out classes."""
    import torch

    split, items = build_eval_set(setting, n_per_class, seed, split_seed)
    classes = split.heldout_classes()
    names = list(classes)
    fi = tw.PART_NAMES.index("wings")
    group = [c[:fi] + c[fi + 1 :] for c in split.heldout]
    n_desc = len(next(iter(classes.values())))
    name_emb = torch.from_numpy(lm.encode_texts([f"a photo of a {n}." for n in names]))
    sents = [f"{n}, {tw.dclip_sentence(d)}" for n in names for d in classes[n]]
    D = torch.from_numpy(lm.encode_texts(sents)).view(len(names), n_desc, -1)
    attr_class = torch.arange(len(names)).repeat_interleave(n_desc)
    size = tw.IMAGE_SIZE
    labels, pred = [], {"clip": [], "dclip": [], "lazsl": []}
    pg = {k: [] for k in ("crop_centre", "crop_centre_chance", "heat", "heat_chance", "object_prior", "nearest_part")}
    pg_part = {p: [] for p in tw.PART_NAMES}
    t0 = time.time()
    for start in range(0, len(items), batch_images):
        chunk = items[start : start + batch_images]
        crops_all, views = [], []
        for k, (ci, scene) in enumerate(chunk):
            rng = np.random.default_rng([seed, 99, tw.SETTINGS.index(setting), start + k])
            boxes = random_square_crops(size, size, n_crops, crop_lo, 0.9, rng).astype(int).tolist()
            crops_all.append(boxes)
            views.append(lm.preprocess(scene.image))
            views.extend(lm.preprocess(scene.image.crop(b)) for b in boxes)
        V = lm.encode_images(torch.stack(views)).view(len(chunk), 1 + n_crops, -1)
        res = lazsl_scores(V[:, 0], V[:, 1:], D.reshape(-1, D.shape[-1]), attr_class, theta=theta, eps=eps)
        scores, T, a = res.scores, res.plan, res.crop_mass  # plans (B, C, crops, n_desc), crop masses (B, crops)
        clip_s = V[:, 0] @ name_emb.T
        dclip_s = torch.einsum("bd,cnd->bcn", V[:, 0], D).mean(-1)
        for k, (ci, scene) in enumerate(chunk):
            labels.append(ci)
            pred["clip"].append(int(clip_s[k].argmax()))
            pred["dclip"].append(int(dclip_s[k].argmax()))
            pred["lazsl"].append(int(scores[k].argmax()))
            # pointing game on the true class's plan, crops only (index 0 is the full image)
            bird = scene.birds[0]
            parts = [bird.boxes[p] for p in tw.PART_NAMES]
            boxes = crops_all[k]
            cov = _coverage(boxes, size).reshape(len(boxes), -1)
            density = cov / cov.sum(1, keepdims=True)  # a crop spreads its mass evenly over its pixels
            ak = a[k].numpy()
            kept = ak > 0
            prior_x, prior_y = _peak(((ak / max(ak.sum(), 1e-12)) @ density).reshape(size, size))
            Tk = T[k, ci].numpy()  # [crops, n_desc]
            Tn = Tk / np.maximum(Tk.sum(0, keepdims=True), 1e-12)
            heat = (Tn.T @ density).reshape(-1, size, size)
            heat = heat - heat.mean(0, keepdims=True)  # this attribute's mass density minus the average attribute's
            for n, part in enumerate(tw.PART_NAMES):
                gt = parts[n]
                m = int(Tk[:, n].argmax())
                x0, y0, x1, y1 = boxes[m]
                centres_in = [_in_box((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, gt) for b, kk in zip(boxes, kept) if kk]
                hx, hy = _peak(heat[n])
                pg["crop_centre"].append(_in_box((x0 + x1) / 2, (y0 + y1) / 2, gt))
                pg["crop_centre_chance"].append(float(np.mean(centres_in)) if centres_in else 0.0)
                pg["heat"].append(_in_box(hx, hy, gt))
                pg["heat_chance"].append((gt[2] - gt[0]) * (gt[3] - gt[1]) / (size * size))
                pg["object_prior"].append(_in_box(prior_x, prior_y, gt))
                pg["nearest_part"].append(_nearest(hx, hy, parts) == n)
                pg_part[part].append(_in_box(hx, hy, gt))
    labels = np.array(labels)
    out = {
        "setting": setting,
        "n_images": len(items),
        "n_classes": len(names),
        "chance_top1": round(1 / len(names), 4),
        "top1": {k: round(float((np.array(v) == labels).mean()), 4) for k, v in pred.items()},
        # the predicted class is a sibling of the true one (same crest, tail, legs; any wings)
        "group_top1": {k: round(float(np.mean([group[i] == group[j] for i, j in zip(v, labels)])), 4)
                       for k, v in pred.items()},
        "pointing": {k: round(float(np.mean(v)), 4) for k, v in pg.items()},
        "pointing_heat_by_part": {k: round(float(np.mean(v)), 4) for k, v in pg_part.items()},
        "nearest_part_chance": round(1 / len(tw.PART_NAMES), 4),
        "params": {"n_crops": n_crops, "crop_lo": crop_lo, "theta": theta, "eps": eps, "seed": seed,
                   "n_per_class": n_per_class, "split_seed": split_seed},
        "seconds": round(time.time() - t0, 1),
    }
    return out


def main(argv=None) -> None:
    import argparse

    import torch

    from pipeline.models import load_model

    ap = argparse.ArgumentParser(description="Toy-world zero-shot evaluation (prints JSON).")
    ap.add_argument("--weights", default="toy-clip", help="a name in data/ or a .pt file")
    ap.add_argument("--settings", default="parts,distractors")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--n-crops", type=int, default=60)
    ap.add_argument("--crop-lo", type=float, default=0.5)
    ap.add_argument("--theta", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model("zsl-tiny", a.weights, device="cpu", precision="fp32")
    res = {"weights": a.weights, "fingerprint": lm.fingerprint, "results": []}
    for s in a.settings.split(","):
        res["results"].append(evaluate(lm, s, a.n_per_class, a.seed, a.n_crops, a.crop_lo, a.theta))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
