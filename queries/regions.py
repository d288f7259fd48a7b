"""Where the regions of an image are: pure functions from (size, seed) to boxes.

Boxes are ``(x0, y0, x1, y1)`` in the original image's pixels. Row 0 is always the full image.
The settings (``pipeline.config.RegionConfig``) are stored with every index run, so the
boxes of any image can be re-derived from the store.

Region kinds (``regions.kind``): ``full``; ``crop`` / ``grid`` / ``patch`` (LaZSL's and WCA's
regions); ``part`` (smaller random squares, the parts of the object-bound method's candidate
objects); ``view`` / ``view-flip`` (AWT's random resized crops, stretched to the model's square
input and, for ``view-flip``, mirrored left-right: :func:`pipeline.imaging.render_view`).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

REGION_SOURCES = ("crops", "grid", "patches")
#: Per-image random streams besides the crops' (which keep the plain per-image seed).
_PART_STREAM, _VIEW_STREAM = 1, 2


def image_seed(sha256_hex: str, seed: int) -> int:
    """A per-image seed from its content hash, so boxes do not depend on run order (LaZSL's do)."""
    return int(hashlib.sha256(f"{sha256_hex}:{seed}".encode()).hexdigest()[:16], 16)


def random_square_crops(width: int, height: int, n: int, lo: float, hi: float, rng: np.random.Generator,
                        sides: str = "uniform") -> np.ndarray:
    """WCA/LaZSL ``random_crop``: square side U(lo, hi)·min(H, W) at a uniform random position.

    ``sides="log-uniform"`` draws the side as exp U(log lo, log hi)·min(H, W) instead: every
    scale (octave) between lo and hi equally often, a prior that favours no object size.
    Same number of draws either way.
    """
    short = min(width, height)
    if sides == "log-uniform":
        frac = np.exp(rng.uniform(math.log(lo), math.log(hi), size=n))
    elif sides == "uniform":
        frac = rng.uniform(lo, hi, size=n)
    else:
        raise ValueError(f"sides must be 'uniform' or 'log-uniform', not {sides!r}")
    side = np.maximum(1, np.floor(frac * short)).astype(np.int64)
    x0 = np.floor(rng.uniform(0, 1, size=n) * (width - side + 1)).astype(np.int64)
    y0 = np.floor(rng.uniform(0, 1, size=n) * (height - side + 1)).astype(np.int64)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.float32)


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


def random_resized_crop_boxes(
    width: int,
    height: int,
    n: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    attempts: int = 10,
) -> np.ndarray:
    """``n`` boxes drawn as torchvision's ``RandomResizedCrop.get_params`` draws them (AWT's views).

    Each box: up to ``attempts`` tries of ``target_area = area * U(scale)``,
    ``aspect = exp(U(log ratio))``, ``w = round(sqrt(target_area * aspect))``,
    ``h = round(sqrt(target_area / aspect))``; the first that fits the image is placed at a
    uniform integer position. If none fits, the central crop whose ratio is the image's
    clamped into ``ratio``. The same distribution as torchvision's, drawn from ``rng``
    (numpy) instead of torch's global generator.

    Returns float32 (n, 4) boxes ``(x0, y0, x1, y1)``.

    >>> b = random_resized_crop_boxes(200, 100, 3, np.random.default_rng(0))
    >>> b.shape, bool((b[:, 2] <= 200).all() and (b[:, 3] <= 100).all())
    ((3, 4), True)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    area = float(width * height)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    boxes = np.empty((n, 4), dtype=np.float32)
    for k in range(n):
        for _ in range(attempts):
            target = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                y0 = int(rng.integers(0, height - h + 1))
                x0 = int(rng.integers(0, width - w + 1))
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                w, h = int(round(height * max(ratio))), height
            else:
                w, h = width, height
            y0, x0 = (height - h) // 2, (width - w) // 2
        boxes[k] = (x0, y0, x0 + w, y0 + h)
    return boxes


def augmented_view_boxes(
    width: int,
    height: int,
    sha256_hex: str,
    n_views: int,
    *,
    seed: int = 0,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """AWT's random views of one image: (boxes (n_views, 4), flips (n_views,) bool).

    AWT (Zhu et al., NeurIPS 2024; ``AWT_zero_shot/pre_extract.py``) encodes the original plus
    50 views ``RandomResizedCrop(224)`` (torchvision's defaults ``scale=(0.08, 1)``,
    ``ratio=(3/4, 4/3)``) then ``RandomHorizontalFlip(p=0.5)``. Each box is stretched to the
    model's square input, not centre-cropped (:func:`pipeline.imaging.render_view`). A pure
    function of (size, content hash, seed, settings), drawn from a stream of its own, so
    adding views to an index leaves its crops unchanged.

    >>> boxes, flips = augmented_view_boxes(64, 48, "ab" * 32, 4)
    >>> boxes.shape, flips.shape
    ((4, 4), (4,))
    """
    rng = np.random.default_rng([image_seed(sha256_hex, seed), _VIEW_STREAM])
    boxes = random_resized_crop_boxes(width, height, n_views, rng, scale=tuple(scale), ratio=tuple(ratio))
    flips = rng.random(n_views) < flip
    return boxes, flips


def region_boxes(
    width: int,
    height: int,
    sha256_hex: str,
    *,
    source: str = "crops",
    n_crops: int = 90,
    crop_min: float = 0.6,
    crop_max: float = 0.9,
    crop_sides: str = "uniform",
    seed: int = 0,
    grid_scales: tuple[int, ...] = (2, 3),
    patch_grid: int = 0,
    n_parts: int = 0,
    part_min: float = 0.3,
    part_max: float = 0.5,
    n_views: int = 0,
    view_scale: tuple[float, float] = (0.08, 1.0),
    view_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    view_flip: float = 0.5,
) -> tuple[list[str], np.ndarray]:
    """(kinds, boxes [R, 4]) for one image; row 0 is the full image.

    ``crops``: ``n_crops`` random squares of side U(crop_min, crop_max)·min(H, W) (log-uniform
    with ``crop_sides="log-uniform"``, for parts too), seeded by
    the image's content hash and ``seed``; ``grid``: the k×k tiles for each k in
    ``grid_scales``; ``patches``: the ``patch_grid``² ViT patch cells. Then, in this order,
    ``n_parts`` random squares of side U(part_min, part_max)·min(H, W) (kind ``part``) and
    ``n_views`` AWT views (kind ``view`` or ``view-flip``, :func:`augmented_view_boxes`);
    each set has its own random stream, so adding one leaves the others' boxes unchanged.

    >>> kinds, boxes = region_boxes(64, 48, "ab" * 32, n_crops=2, n_parts=1, n_views=2)
    >>> kinds[:4], boxes.shape
    (['full', 'crop', 'crop', 'part'], (6, 4))
    """
    full = np.array([[0, 0, width, height]], dtype=np.float32)
    if source == "crops":
        rng = np.random.default_rng(image_seed(sha256_hex, seed))
        other = random_square_crops(width, height, n_crops, crop_min, crop_max, rng, crop_sides)
        kind = "crop"
    elif source == "grid":
        other, kind = grid_boxes(width, height, tuple(grid_scales)), "grid"
    elif source == "patches":
        other, kind = patch_boxes(width, height, patch_grid), "patch"
    else:
        raise ValueError(f"Unknown region source {source!r}; use one of {', '.join(REGION_SOURCES)}.")
    kinds = ["full"] + [kind] * len(other)
    parts = [full, other]
    if n_parts:
        rng = np.random.default_rng([image_seed(sha256_hex, seed), _PART_STREAM])
        parts.append(random_square_crops(width, height, n_parts, part_min, part_max, rng, crop_sides))
        kinds += ["part"] * n_parts
    if n_views:
        boxes, flips = augmented_view_boxes(width, height, sha256_hex, n_views, seed=seed, scale=view_scale,
                                            ratio=view_ratio, flip=view_flip)
        parts.append(boxes)
        kinds += ["view-flip" if f else "view" for f in flips]
    return kinds, np.concatenate(parts)
