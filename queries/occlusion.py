"""Perturbation maps of a class score: occlusion (sliding window) and RISE (random masks).

Both are faithful by construction: a pixel is hot because hiding it lowered the score. The
model is not called here; the caller scores the perturbed images (the masks say what to hide)
and passes the scores back.

* **Occlusion** (Zeiler & Fergus, 2014). Windows ``k`` of side ``window`` every ``stride``
  pixels (:func:`sliding_windows`); each is replaced by a baseline and the image re-scored:

  .. math::  M(p) = \\frac{1}{|K_p|} \\sum_{k \\in K_p} \\big(f(x) - f(x_{\\setminus k})\\big)

  over the windows ``K_p`` that contain p (:func:`occlusion_map`). Cost: one score per window,
  ``⌈(H-w)/s+1⌉·⌈(W-w)/s+1⌉`` of them (for LaZSL each score re-encodes the full view and the
  crops that meet the window).
* **RISE** (Petsiuk et al., 2018). N random binary ``grid × grid`` masks, each cell kept
  with probability ``p``, upsampled bilinearly to ``(H + cell)·(W + cell)`` and randomly
  shifted by up to one cell (:func:`rise_masks`); the image is multiplied by each mask (or
  blended toward a baseline) and scored:

  .. math::  M(p) = \\frac{1}{N\\,\\mathbb E[m]} \\sum_i f(x \\odot m_i)\\, m_i(p)

  (:func:`rise_map`). Cost: N scores (RISE uses thousands; the map's noise falls as 1/√N).

>>> import numpy as np
>>> win = sliding_windows(8, 8, window=4, stride=4)
>>> len(win)
4
>>> m = occlusion_map(1.0, np.array([0.9, 1.0, 1.0, 0.2]), win, 8, 8)
>>> round(float(m[0, 0]), 6), round(float(m[7, 7]), 6)
(0.1, 0.8)
"""
from __future__ import annotations

import numpy as np

from queries.attribution import _box_sum, box_pixel_bounds

__all__ = ["sliding_windows", "occlusion_map", "rise_masks", "rise_map"]


def _starts(n: int, window: int, stride: int) -> np.ndarray:
    if window >= n:
        return np.array([0])
    s = list(range(0, n - window + 1, stride))
    if s[-1] != n - window:  # the last window sits flush with the border: every pixel is covered
        s.append(n - window)
    return np.array(s)


def sliding_windows(height: int, width: int, *, window: int, stride: int) -> np.ndarray:
    """(K, 4) occluder boxes ``x0, y0, x1, y1`` covering every pixel, row-major."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be >= 1")
    ys = _starts(height, window, stride)
    xs = _starts(width, window, stride)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    x0, y0 = x0.reshape(-1), y0.reshape(-1)
    return np.stack([x0, y0, np.minimum(x0 + window, width), np.minimum(y0 + window, height)], 1).astype(np.float64)


def occlusion_map(base_score: float, scores, windows, height: int, width: int) -> np.ndarray:
    """Mean score drop over the windows covering each pixel (0 where none does). (H, W) float64."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    b = box_pixel_bounds(windows, height, width)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} windows but {len(s)} scores")
    drop = _box_sum(b, float(base_score) - s, height, width)
    count = np.rint(_box_sum(b, np.ones(len(b)), height, width))
    return np.where(count > 0, drop / np.maximum(count, 1), 0.0)


def rise_masks(n: int, height: int, width: int, *, grid: int = 8, p: float = 0.5,
               rng: np.random.Generator) -> np.ndarray:
    """N soft masks (N, H, W) in [0, 1], as RISE draws them (module doc)."""
    # heavy: imported on use
    import torch
    import torch.nn.functional as F

    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")
    cell_h, cell_w = int(np.ceil(height / grid)), int(np.ceil(width / grid))
    up_h, up_w = (grid + 1) * cell_h, (grid + 1) * cell_w
    cells = (rng.random((n, 1, grid, grid)) < p).astype(np.float32)
    up = F.interpolate(torch.from_numpy(cells), size=(up_h, up_w), mode="bilinear", align_corners=False)[:, 0].numpy()
    dx = rng.integers(0, cell_w, n)
    dy = rng.integers(0, cell_h, n)
    out = np.stack([up[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(n)]).astype(np.float64)
    return out.clip(0.0, 1.0)  # bilinear weights of 0/1 cells, up to float32 rounding


def rise_map(scores, masks, p: float) -> np.ndarray:
    """Σ_i f(x ⊙ m_i)·m_i / (N·p): the expected score given that a pixel was kept. (H, W)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(masks, dtype=np.float64)
    if len(m) != len(s):
        raise ValueError(f"{len(m)} masks but {len(s)} scores")
    return np.tensordot(s, m, axes=1) / (len(s) * p)
