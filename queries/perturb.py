"""Deletion and insertion curves (RISE; Petsiuk et al., BMVC 2018): which pixels to perturb,
in what order, and the area under the resulting score curve. Pure functions, no I/O."""
from __future__ import annotations

import numpy as np


# ---- deletion / insertion ---------------------------------------------------------------
def pixel_order(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices, most salient first; ties (flat map areas) in random order, not raster order."""
    s = np.asarray(saliency, dtype=np.float64).reshape(-1)
    return np.lexsort((rng.permutation(s.size), -s))


def step_counts(n_pixels: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(fractions (steps+1,), pixel counts (steps+1,)) from 0 to all pixels."""
    frac = np.linspace(0.0, 1.0, steps + 1)
    return frac, np.rint(frac * n_pixels).astype(np.int64)


def perturbation_series(image: np.ndarray, baseline: np.ndarray, order: np.ndarray, steps: int, mode: str) -> np.ndarray:
    """The perturbed images of a deletion or insertion curve, (steps+1, H, W, C) uint8.

    deletion: start from ``image`` and replace the most salient pixels by ``baseline``;
    insertion: start from ``baseline`` and reveal the most salient pixels of ``image``.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(mode)
    h, w = image.shape[:2]
    _, counts = step_counts(h * w, steps)
    rank = np.empty(h * w, dtype=np.int64)
    rank[order] = np.arange(h * w)
    rank = rank.reshape(h, w)
    src, dst = (image, baseline) if mode == "deletion" else (baseline, image)
    out = np.empty((steps + 1, *image.shape), dtype=np.uint8)
    for i, k in enumerate(counts):
        changed = (rank < k)[..., None]
        out[i] = np.where(changed, dst, src)
    return out


def curve_auc(fractions, scores) -> float:
    """Area under a deletion/insertion curve by the trapezoid rule (x in [0, 1])."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
