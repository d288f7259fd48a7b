"""Where the regions of an image are: pure functions from (size, seed) to boxes.

Boxes are ``(x0, y0, x1, y1)`` in the original image's pixels. Row 0 is always the full image.
The settings (``pipeline.config.RegionConfig``) are stored with every index run, so the
boxes of any image can be re-derived from the store.
"""
from __future__ import annotations

import hashlib

import numpy as np

REGION_SOURCES = ("crops", "grid", "patches")


def image_seed(sha256_hex: str, seed: int) -> int:
    """A per-image seed from its content hash, so boxes do not depend on run order (LaZSL's do)."""
    return int(hashlib.sha256(f"{sha256_hex}:{seed}".encode()).hexdigest()[:16], 16)


def random_square_crops(width: int, height: int, n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """WCA/LaZSL ``random_crop``: square side U(lo, hi)·min(H, W) at a uniform random position."""
    short = min(width, height)
    sides = np.maximum(1, np.floor(rng.uniform(lo, hi, size=n) * short)).astype(np.int64)
    x0 = np.floor(rng.uniform(0, 1, size=n) * (width - sides + 1)).astype(np.int64)
    y0 = np.floor(rng.uniform(0, 1, size=n) * (height - sides + 1)).astype(np.int64)
    return np.stack([x0, y0, x0 + sides, y0 + sides], axis=1).astype(np.float32)


def grid_boxes(width: int, height: int, scales: tuple[int, ...]) -> np.ndarray:
    """A fixed multi-scale grid: for each k, the k×k tiles of the image."""
    boxes = []
    for k in scales:
        xs = np.linspace(0, width, k + 1)
        ys = np.linspace(0, height, k + 1)
        for i in range(k):
            for j in range(k):
                boxes.append((xs[j], ys[i], xs[j + 1], ys[i + 1]))
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def patch_boxes(width: int, height: int, grid: int) -> np.ndarray:
    """The cell of each ViT patch token, mapped back through resize + centre crop."""
    short = min(width, height)
    left, top = (width - short) / 2.0, (height - short) / 2.0
    step = short / grid
    boxes = [
        (left + j * step, top + i * step, left + (j + 1) * step, top + (i + 1) * step)
        for i in range(grid)
        for j in range(grid)
    ]
    return np.array(boxes, dtype=np.float32)


def region_boxes(
    width: int,
    height: int,
    sha256_hex: str,
    *,
    source: str = "crops",
    n_crops: int = 90,
    crop_min: float = 0.6,
    crop_max: float = 0.9,
    seed: int = 0,
    grid_scales: tuple[int, ...] = (2, 3),
    patch_grid: int = 0,
) -> tuple[list[str], np.ndarray]:
    """(kinds, boxes [R, 4]) for one image; row 0 is the full image.

    ``crops``: ``n_crops`` random squares of side U(crop_min, crop_max)·min(H, W), seeded by
    the image's content hash and ``seed``; ``grid``: the k×k tiles for each k in
    ``grid_scales``; ``patches``: the ``patch_grid``² ViT patch cells.
    """
    full = np.array([[0, 0, width, height]], dtype=np.float32)
    if source == "crops":
        rng = np.random.default_rng(image_seed(sha256_hex, seed))
        other = random_square_crops(width, height, n_crops, crop_min, crop_max, rng)
        kind = "crop"
    elif source == "grid":
        other, kind = grid_boxes(width, height, tuple(grid_scales)), "grid"
    elif source == "patches":
        other, kind = patch_boxes(width, height, patch_grid), "patch"
    else:
        raise ValueError(f"Unknown region source {source!r}; use one of {', '.join(REGION_SOURCES)}.")
    return ["full"] + [kind] * len(other), np.concatenate([full, other])
