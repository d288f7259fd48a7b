"""Explanations as arrays: attribution maps, score shares, the attribute that tipped a wrong
prediction and the pointing game. Pure functions, no I/O (deletion/insertion curves are in
:mod:`queries.perturb`).

Conventions
-----------
* Boxes are ``(x0, y0, x1, y1)`` in image pixels (``regions`` rows). Pixel ``(x, y)`` covers
  ``[x, x+1) × [y, y+1)`` and belongs to a box when its centre ``(x+½, y+½)`` lies in
  ``(x0, x1] × (y0, y1]``, i.e. columns ``floor(x0+½) .. floor(x1+½)-1``: integer boxes cover
  exactly what ``PIL.Image.crop`` cuts, and adjacent patch cells tile without gap or overlap.
* Alignment rows are the store's ``alignments``: one ``(region, attribute)`` entry of a class's
  transport plan with its ``mass`` T and fused ``similarity`` F; ``mass * similarity`` is the
  entry's contribution and the contributions of a class sum to its LaZSL score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ---- attribution maps -------------------------------------------------------------------
def box_pixel_bounds(boxes, height: int, width: int) -> np.ndarray:
    """Boxes (R, 4) -> integer pixel bounds (R, 4) ``xs, ys, xe, ye`` (end exclusive), clipped."""
    b = np.floor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + 0.5).astype(np.int64)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def _box_sum(bounds: np.ndarray, values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Σ_r values[r]·1[pixel in box r] as an (H, W) array, in O(R + H·W) (2-D difference array)."""
    acc = np.zeros((height + 1, width + 1), dtype=np.float64)
    xs, ys, xe, ye = bounds.T
    np.add.at(acc, (ys, xs), values)
    np.add.at(acc, (ys, xe), -values)
    np.add.at(acc, (ye, xs), -values)
    np.add.at(acc, (ye, xe), values)
    return acc.cumsum(0).cumsum(1)[:height, :width]


def coverage_count(boxes, height: int, width: int) -> np.ndarray:
    """(H, W) int: how many boxes cover each pixel."""
    b = box_pixel_bounds(boxes, height, width)
    return np.rint(_box_sum(b, np.ones(len(b)), height, width)).astype(np.int64)


PRIOR_FACTOR = 4.0  # prior="auto": pseudo-boxes = PRIOR_FACTOR × median coverage


def attribution_map(boxes, weights, height: int, width: int, prior: float | str = "auto") -> np.ndarray:
    """Spread each region's weight over its box, normalised by how many boxes cover each pixel.

    .. math::  M(p) = \\frac{\\sum_{r \\ni p} w_r + k\\,\\bar w}{n(p) + k}

    where the sum runs over the boxes that contain pixel p, :math:`n(p)` is how many of the
    given boxes cover p, :math:`\\bar w` the mean weight and :math:`k` the ``prior`` (in boxes);
    ``M = 0`` where no box covers p. Pass every region that took part in the plan (weight 0
    for those that carried none of this attribute): they count in :math:`n(p)`.

    * ``prior=0`` is the plain per-pixel average over covering boxes. It removes the centre
      bias of random crops (the centre is in most of them; uniform weights give a flat map),
      but a pixel seen by one or two boxes gets their weight undiluted, so image borders
      covered by a single crop often come out hottest.
    * ``k > 0`` adds k pseudo-boxes of average weight: pixels need support from several
      boxes to stand out. As k grows the ordering tends to :math:`\\sum_{r \\ni p}(w_r - \\bar w)`,
      the mass above what n(p) average boxes would have brought. ``"auto"`` (default) is
      k = 4 × the median coverage of covered pixels.

    The weight is given to every pixel of the box, not divided by the box's area: the mass
    belongs to the view as a whole, and dividing by area makes small crops hot whatever
    they show (docs/explanations.md has the measurement: the hottest pixel fell on the
    object far less often; benchmarks/bench_maps.py reproduces it).

    Parameters: boxes (R, 4), weights (R,), height, width, prior. Returns (H, W) float64.
    """
    b = box_pixel_bounds(boxes, height, width)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(w)} weights")
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, w = b[keep], w[keep]
    if len(b) == 0:
        return np.zeros((height, width))
    total = _box_sum(b, w, height, width)
    count = np.rint(_box_sum(b, np.ones(len(b)), height, width))
    covered = count > 0
    if prior == "auto":
        k = PRIOR_FACTOR * float(np.median(count[covered]))
    else:
        k = float(prior)
        if k < 0:
            raise ValueError("prior must be >= 0")
    out = (total + k * w.mean()) / np.maximum(count + k, 1e-300)
    return np.where(covered, out, 0.0)


def scale_boxes(boxes, sx: float, sy: float) -> np.ndarray:
    """Boxes in an image resized by (sx, sy)."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


# ---- from alignment rows to region weights ----------------------------------------------
@dataclass
class Alignment:
    """The alignment rows of one (run, image, class), as parallel arrays."""

    region_id: np.ndarray  # (E,) int64
    attr_id: np.ndarray  # (E,) int64
    mass: np.ndarray  # (E,) float64, T[region, attribute]
    similarity: np.ndarray  # (E,) float64, F[region, attribute]

    @classmethod
    def from_rows(cls, rows) -> "Alignment":
        """rows: iterable of (region_id, attr_id, mass, similarity)."""
        rows = list(rows)  # ids stay int64: region ids use 60 bits, more than a float64 holds
        return cls(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.float64),
            np.array([r[3] for r in rows], dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.mass)

    @property
    def contribution(self) -> np.ndarray:
        return self.mass * self.similarity

    def regions(self) -> np.ndarray:
        """Regions that carried mass for this class (the ones that took part in the plan)."""
        return np.unique(self.region_id[self.mass > 0])

    def mean_similarity(self) -> float:
        """F̄ = Σ T·F / Σ T, the class's mass-weighted mean fused similarity."""
        m = self.mass.sum()
        return float(self.contribution.sum() / m) if m > 0 else 0.0


def per_region(region_ids: np.ndarray, rows_region: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` of rows onto ``region_ids`` (rows on other regions are dropped)."""
    region_ids = np.asarray(region_ids, dtype=np.int64)
    out = np.zeros(len(region_ids))
    if len(region_ids) == 0 or len(rows_region) == 0:
        return out
    order = np.argsort(region_ids, kind="stable")
    pos = np.searchsorted(region_ids, rows_region, sorter=order).clip(0, len(region_ids) - 1)
    ok = region_ids[order][pos] == rows_region
    np.add.at(out, order[pos[ok]], values[ok])
    return out


def attribute_weights(al: Alignment, region_ids: np.ndarray, attr_id: int) -> np.ndarray:
    """Per region: transport mass toward one attribute (the issue's per-attribute map)."""
    sel = al.attr_id == attr_id
    return per_region(region_ids, al.region_id[sel], al.mass[sel])


def class_weights(al: Alignment, region_ids: np.ndarray) -> np.ndarray:
    """Per region: contribution above the class's average, Σ_a T[r,a]·(F[r,a] − F̄).

    LaZSL gives every kept crop the same total mass (uniform crop marginal), so a class map
    of plain mass would be flat. Weighting by similarity above the class's mass-weighted mean
    F̄ shows where the class's attributes matched better than they did on average; the
    weights sum to zero over the regions, and positive values are the evidence.
    """
    return per_region(region_ids, al.region_id, al.mass * (al.similarity - al.mean_similarity()))


def attribute_contributions(al: Alignment) -> list[tuple[int, float, float, float]]:
    """(attr_id, mass, mass-weighted similarity, contribution) per attribute, by contribution desc."""
    ids = np.unique(al.attr_id)
    out = []
    for a in ids:
        sel = al.attr_id == a
        m = float(al.mass[sel].sum())
        c = float(al.contribution[sel].sum())
        out.append((int(a), m, c / m if m > 0 else 0.0, c))
    out.sort(key=lambda t: (-t[3], t[0]))
    return out


def shares(contributions) -> np.ndarray:
    """Each contribution's share of their sum (the class score for LaZSL); 0 if the sum is 0."""
    c = np.asarray(contributions, dtype=np.float64)
    total = c.sum()
    return c / total if total != 0 else np.zeros_like(c)


def score_parts(score: float, global_score: float | None, local_score: float | None,
                theta: float | None) -> tuple[float, float] | None:
    """(global part, local part) of a LaZSL score: ((1-θ)·global, θ·local), which sum to the score.

    ``predictions.global_score`` is the raw DCLIP score of the full image and ``local_score``
    Σ T·S over the crops; the score mixes them with θ. Without θ, the stored values are taken
    as the parts when they already sum to the score; otherwise None.
    """
    if global_score is None or local_score is None:
        return None
    if theta is not None:
        return (1 - theta) * global_score, theta * local_score
    if abs(global_score + local_score - score) <= 1e-6 * max(1.0, abs(score)):
        return global_score, local_score
    return None


def tipping_margins(pred: Alignment, true: Alignment) -> dict[int, float]:
    """How much each attribute of the predicted class out-earned the true class on the same regions.

    For the true class, ē_t(r) = Σ_b T_t[r,b]·F_t[r,b] / Σ_b T_t[r,b] is what it earned per
    unit of mass on region r (its overall mean F̄_t on regions it gave no mass). Then::

        margin(a) = Σ_r T_p[r,a] · (F_p[r,a] − ē_t(r))

    When both classes give each region the same mass (LaZSL's crop marginal does not depend
    on the class) the margins sum exactly to score_pred − score_true, so the attribute with
    the largest margin is the one that did most to tip the prediction.
    """
    regions = np.unique(np.concatenate([pred.region_id, true.region_id]))
    t_mass = per_region(regions, true.region_id, true.mass)
    t_contrib = per_region(regions, true.region_id, true.contribution)
    e_t = np.where(t_mass > 0, t_contrib / np.where(t_mass > 0, t_mass, 1), true.mean_similarity())
    e_rows = e_t[np.searchsorted(regions, pred.region_id)]
    vals = pred.mass * (pred.similarity - e_rows)
    out: dict[int, float] = {}
    for a, v in zip(pred.attr_id.tolist(), vals.tolist()):
        out[a] = out.get(a, 0.0) + v
    return out


def tipping_attribute(pred: Alignment, true: Alignment) -> tuple[int, float] | None:
    """(attr_id, margin) of the predicted class's attribute with the largest margin; None if no rows."""
    m = tipping_margins(pred, true)
    if not m:
        return None
    a = max(m, key=lambda k: (m[k], -k))
    return a, m[a]


# ---- pointing game ----------------------------------------------------------------------
@dataclass
class PointingResult:
    hit: bool
    x: float  # centroid of the map's maximum (pixels)
    y: float
    energy_inside: float  # SCH: share of the map's mass (above its minimum) inside the box


def pointing_chance(box, height: int, width: int, tolerance: float = 0.0) -> float:
    """The pointing game's chance level for one box: the share of the image the grown box covers
    (a uniformly random hottest point hits it that often).

    >>> pointing_chance((10, 10, 20, 20), 100, 100, tolerance=5)
    0.04
    """
    x0, y0, x1, y1 = box
    return (min(width, x1 + tolerance) - max(0, x0 - tolerance)) * (min(height, y1 + tolerance) - max(0, y0 - tolerance)) \
        / (height * width)


def pointing_game(saliency: np.ndarray, box, tolerance: float = 0.0) -> PointingResult | None:
    """Does the map's maximum fall in the ground-truth box (grown by ``tolerance`` pixels)?

    Piecewise-constant maps have a maximal plateau, not a point: it is a hit when at least
    half of the plateau's pixels are inside. None when the map is flat (no maximum to point with).
    ``energy_inside`` is SCH (Bartak et al.): Σ_box H / Σ H with H = map − min(map).
    """
    s = np.asarray(saliency, dtype=np.float64)
    if s.size == 0 or s.max() - s.min() <= 0:
        return None
    top = s.max()
    h, w = s.shape
    ys, xs = np.nonzero(s >= top - 1e-12 * abs(top))
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = xs + 0.5, ys + 0.5  # pixel centres
    inside = (cx >= x0 - tolerance) & (cx <= x1 + tolerance) & (cy >= y0 - tolerance) & (cy <= y1 + tolerance)
    pos = s - s.min()  # maps carry an arbitrary offset (the prior, negative class weights)
    b = box_pixel_bounds([[x0, y0, x1, y1]], h, w)[0]
    energy = pos[b[1] : b[3], b[0] : b[2]].sum() / pos.sum() if pos.sum() > 0 else 0.0
    return PointingResult(bool(inside.mean() >= 0.5), float(cx.mean()), float(cy.mean()), float(energy))
