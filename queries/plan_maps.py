"""Pixel maps from a LaZSL transport plan, placed inside each crop by dense patch features.

LaZSL's plan ``T[r, n]`` says how much of attribute n's mass crop r carried; it says nothing
about *where in the crop* the attribute is. The crop's own forward pass also yields dense
patch features (:mod:`pipeline.dense_features`: SCLIP-style tokens, one per patch cell of the
crop), whose similarity to the attribute text says where inside the crop it matches. The
rule that turns plan mass into pixels:

1. **Where inside crop r** (:func:`within_region_weights`). With ``s[v, r, j, n]`` the cosine of
   patch j's token (token set v, e.g. two blocks) to attribute n of the class,

   .. math::  \\pi_{r}(j \\mid n) = \\frac1V \\sum_v \\operatorname{softmax}_j
              \\Big(\\frac{s_{v,r,j,n} - \\frac1N\\sum_{n'} s_{v,r,j,n'}}{\\tau}\\Big)

   a distribution over the crop's L patches: the patches where n matches *better than the
   class's other attributes do* (contrast over attributes, as open-vocabulary segmentation
   takes a softmax over classes), at the model's own temperature ``τ = 1 / logit_scale``.
2. **Mass to pixels** (:func:`plan_density_map`): crop r's mass toward n is spread over its
   patch cells by π and divided by each cell's pixel count, so the map is a mass density:

   .. math::  M_n(p) = \\sum_r T[r,n] \\sum_j \\pi_r(j \\mid n)\\,
              \\frac{\\mathbb 1[p \\in \\mathrm{cell}_{r,j}]}{|\\mathrm{cell}_{r,j}|}

   and :math:`\\sum_p M_n(p) = \\sum_r T[r,n]` exactly (the attribute's plan mass; cells
   outside the image excepted). The map is faithful to the plan at crop level (each crop
   keeps exactly its mass) and localised within the crop by the same forward pass.
3. **Class map**: the same with each entry weighted by its contribution
   ``T[r,n]·F[r,n]`` (:func:`plan_class_map`); it integrates to the class's LaZSL score.

Cells are the ViT patch grid of the crop mapped back to image pixels through the preprocess
(resize of the short side, centre crop), as :func:`cell_boxes` computes.

>>> import numpy as np
>>> boxes = np.array([[0, 0, 8, 8], [4, 4, 12, 12]], float)
>>> plan = np.array([[0.3, 0.2], [0.1, 0.4]])
>>> sims = np.random.default_rng(0).normal(size=(2, 4, 2))  # 2 crops, 2x2 patches, 2 attributes
>>> res = plan_density_map(boxes, plan, within_region_weights(sims, tau=0.05), (2, 2), 12, 12)
>>> res.maps.shape, np.round(res.maps.sum((1, 2)), 6).tolist()
((2, 12, 12), [0.4, 0.6])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from queries.attribution import _box_sum, box_pixel_bounds

__all__ = ["PlanMaps", "cell_boxes", "within_region_weights", "plan_density_map", "plan_class_map"]


def cell_boxes(boxes, grid: tuple[int, int]) -> np.ndarray:
    """Patch cells of each region in image pixels: (R, 4) boxes -> (R, gh·gw, 4), row-major.

    The encoder sees the region resized so its short side fits, then centre-cropped to a
    square: the cells tile that centred square of the box (the whole box for square crops).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gh, gw = grid
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    side = np.minimum(w, h)
    x0 = b[:, 0] + (w - side) / 2
    y0 = b[:, 1] + (h - side) / 2
    fx = np.arange(gw + 1) / gw
    fy = np.arange(gh + 1) / gh
    xs = x0[:, None] + side[:, None] * fx[None]  # (R, gw+1)
    ys = y0[:, None] + side[:, None] * fy[None]
    cx0 = np.broadcast_to(xs[:, None, :-1], (len(b), gh, gw))
    cx1 = np.broadcast_to(xs[:, None, 1:], (len(b), gh, gw))
    cy0 = np.broadcast_to(ys[:, :-1, None], (len(b), gh, gw))
    cy1 = np.broadcast_to(ys[:, 1:, None], (len(b), gh, gw))
    return np.stack([cx0, cy0, cx1, cy1], -1).reshape(len(b), gh * gw, 4)


def within_region_weights(sims, *, tau: float, contrast: bool = True) -> np.ndarray:
    """π_r(j | n): where inside each region each attribute matches (module doc, step 1).

    Parameters
    ----------
    sims : (R, L, N) or (V, R, L, N)
        Cosine of each region's L patch tokens to the class's N attributes, for V token sets
        (e.g. SCLIP tokens of the last two blocks); the V distributions are averaged.
    tau : softmax temperature over patches (the model's ``1 / logit_scale``)
    contrast : subtract, at each patch, the mean similarity over the N attributes first

    Returns (R, L, N) float64; each ``[r, :, n]`` sums to 1.
    """
    s = np.asarray(sims, dtype=np.float64)
    if s.ndim == 3:
        s = s[None]
    if s.ndim != 4:
        raise ValueError(f"sims must be (R, L, N) or (V, R, L, N), got shape {s.shape}")
    if tau <= 0:
        raise ValueError("tau must be > 0")
    if contrast:
        s = s - s.mean(-1, keepdims=True)
    z = s / tau
    z = z - z.max(2, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(2, keepdims=True)).mean(0)


@dataclass
class PlanMaps:
    """maps (N, H, W) float64: one mass density per attribute column; mass (N,): Σ_r T[r, n]."""

    maps: np.ndarray
    mass: np.ndarray


def _density(cells_px: np.ndarray, area: np.ndarray, vals: np.ndarray, height: int, width: int) -> np.ndarray:
    return _box_sum(cells_px, vals / area, height, width)


def plan_density_map(boxes, plan, within, grid: tuple[int, int], height: int, width: int) -> PlanMaps:
    """Plan mass as pixel density, placed inside each region by ``within`` (module doc, step 2).

    boxes (R, 4) region boxes in image pixels; plan (R, N) transport plan T (regions that
    carried no mass may be passed or left out); within (R, L, N) from
    :func:`within_region_weights` with ``L = gh·gw``; grid (gh, gw). Returns :class:`PlanMaps`.
    """
    T = np.asarray(plan, dtype=np.float64)
    P = np.asarray(within, dtype=np.float64)
    R, N = T.shape
    L = grid[0] * grid[1]
    if P.shape != (R, L, N):
        raise ValueError(f"within must be {(R, L, N)}, got {P.shape}")
    cells = cell_boxes(boxes, grid).reshape(-1, 4)
    px = box_pixel_bounds(cells, height, width)
    area = np.maximum((px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1]), 1).astype(np.float64)
    maps = np.empty((N, height, width))
    for n in range(N):
        maps[n] = _density(px, area, (T[:, n, None] * P[:, :, n]).reshape(-1), height, width)
    return PlanMaps(maps=maps, mass=T.sum(0))


def plan_class_map(boxes, plan, fused, within, grid: tuple[int, int], height: int, width: int,
                   *, centre: bool = False) -> np.ndarray:
    """Class map: Σ_n of the attribute densities weighted by the fused similarity.

    .. math::  M(p) = \\sum_{r,n} T[r,n]\\,(F[r,n] - c) \\sum_j \\pi_r(j\\mid n)\\,
               \\mathbb 1[p \\in \\mathrm{cell}_{r,j}] / |\\mathrm{cell}_{r,j}|

    with ``c = 0`` (default; the map integrates to the LaZSL score Σ T·F) or, with
    ``centre=True``, ``c = F̄ = Σ T·F / Σ T`` (evidence above the class's average similarity,
    integrating to 0). fused (R, N) is F. Returns (H, W) float64.
    """
    T = np.asarray(plan, dtype=np.float64)
    F = np.asarray(fused, dtype=np.float64)
    if F.shape != T.shape:
        raise ValueError("fused must have the plan's shape")
    c = float((T * F).sum() / T.sum()) if centre and T.sum() > 0 else 0.0
    P = np.asarray(within, dtype=np.float64)
    cells = cell_boxes(boxes, grid).reshape(-1, 4)
    px = box_pixel_bounds(cells, height, width)
    area = np.maximum((px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1]), 1).astype(np.float64)
    vals = np.einsum("rn,rln->rl", T * (F - c), P).reshape(-1)
    return _density(px, area, vals, height, width)
