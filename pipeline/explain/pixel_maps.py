"""Maps of one (image, class) in the image's own pixels, for ``explain``, ``report`` and ``faithfulness``.

Three kinds (``--maps``; the names are :mod:`pipeline.explain.map_kinds`):

* ``plan-dense`` (default): the stored LaZSL plan's crop masses placed inside each crop
  by the crop's own dense patch tokens (SCLIP-style attention at the last two blocks, one
  forward pass per crop; :func:`pipeline.explain.maps.plan_maps`, the math in
  :mod:`queries.plan_maps`). Each crop keeps exactly its plan mass; an attribute map integrates
  to the attribute's plan mass, the class map to the class's LaZSL local part Σ T·F.
* ``crop-boxes``: the plan's mass spread over whole crop boxes (``queries.attribution.attribution_map``,
  the map shipped before; for ``--regions patches`` the boxes are the patch cells, already at
  the resolution of the evidence).
* ``occlusion``: the drop of the class's LaZSL softmax probability when a window of the image
  is blurred (the slow reference, faithful by construction; attribute maps: the drop of each
  attribute's contribution Σ_r T·F). LaZSL is re-run on the full view and every crop that meets
  the window: ``cost`` says how many encoder passes that took.

All maps are float64 arrays of shape (height, width) of the original image; the peak is the
argmax ``[x, y]`` (column, row) in those pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from queries.attribution import Alignment, attribute_weights, attribution_map, class_weights, scale_boxes
from queries.occlusion import sliding_windows
from queries.plan_maps import plan_density_map
from stores import tables
from stores.errors import StoreError

from ..errors import InputError
from ..imaging import region_image
from ..models import ModelLoadError
from .map_kinds import CROP_BOXES, OCCLUSION, PLAN_DENSE, RANDOM_OF, check_drawn_kind
from .resolve import baseline_image

OCCLUSION_WORK_SIDE = 256  # occlusion runs on a copy whose short side is at most this (then upsampled)


@dataclass
class ClassMaps:
    kind: str  # a name of pipeline.explain.map_kinds.DRAWN_KINDS (what was actually drawn)
    class_map: np.ndarray = field(repr=False)  # (H, W) original pixels
    attr_ids: list[int] = field(default_factory=list)
    attribute_maps: np.ndarray | None = field(default=None, repr=False)  # (N, H, W), attr_ids order
    note: str | None = None  # e.g. why another kind than asked was drawn
    cost: dict | None = None  # occlusion: windows, encoder passes, seconds
    boxes: np.ndarray | None = field(default=None, repr=False)  # plan-dense, crop-boxes: the crops with mass (R, 4)
    grid: tuple[int, int] | None = None  # plan-dense: the patch grid inside each crop

    def attribute_map(self, attr_id: int) -> np.ndarray | None:
        if self.attribute_maps is None or attr_id not in self.attr_ids:
            return None
        return self.attribute_maps[self.attr_ids.index(attr_id)]


def peak(heat: np.ndarray) -> list[int]:
    """[x, y] of the map's maximum (the first in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return [int(x), int(y)]


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> (h, w) = size[::-1] by bilinear interpolation (display and work copies)."""
    h, w = size[1], size[0]
    if heat.shape == (h, w):
        return heat
    # heavy: imported on use
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(heat, np.float32))[None, None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float64)


def plan_matrix(al: Alignment, region_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(regions (R,), attr_ids (N,), T (R, N), F (R, N)) of one class's alignment rows over the
    regions that carried mass (zeros where no row was stored)."""
    keep = al.mass > 0
    regions = np.unique(al.region_id[keep])
    regions = regions[np.isin(regions, region_ids)]
    attr_ids = np.unique(al.attr_id)
    T = np.zeros((len(regions), len(attr_ids)))
    Fm = np.zeros_like(T)
    ri = np.searchsorted(regions, al.region_id)
    ok = (ri < len(regions)) & (regions[np.minimum(ri, len(regions) - 1)] == al.region_id) if len(regions) else \
        np.zeros(len(al), bool)
    ai = np.searchsorted(attr_ids, al.attr_id)
    T[ri[ok], ai[ok]] = al.mass[ok]
    Fm[ri[ok], ai[ok]] = al.similarity[ok]
    return regions, attr_ids, T, Fm


def _attr_embeddings(cat, model, attr_ids: np.ndarray) -> np.ndarray:
    mat = tables.attribute_matrix(cat, model.fingerprint)
    pos = np.searchsorted(mat.ids, attr_ids)
    if len(mat) == 0 or np.any(pos >= len(mat.ids)) or np.any(mat.ids[np.minimum(pos, len(mat.ids) - 1)] != attr_ids):
        raise InputError("The store has no embeddings of this run's attributes for its model; run `pipeline build-attributes`.")
    return np.asarray(mat.embeddings[pos], np.float32)


def plan_dense(cat, model, image: Image.Image, al: Alignment, all_ids: np.ndarray, all_boxes: np.ndarray,
               kinds: list[str]) -> ClassMaps:
    """The default maps at the image's size (see the module doc). ``image`` is the original
    (EXIF-rotated RGB); ``all_ids``/``all_boxes``/``kinds`` the image's regions (original pixels)."""
    # heavy: imported on use
    import torch

    from .maps import crop_attribute_sims, logit_scale, plan_maps

    W, H = image.size
    regions, attr_ids, T, Fm = plan_matrix(al, all_ids)
    if len(regions) == 0:
        raise InputError("No region carried mass for this class; nothing to map.")
    pos = np.searchsorted(all_ids, regions)
    boxes = np.asarray(all_boxes, np.float64)[pos]
    size = int(model.image_size)
    pixels = torch.stack([model.preprocess(region_image(image, kinds[p], b, size)) for p, b in zip(pos, boxes)])
    sims, grid = crop_attribute_sims(model, pixels, _attr_embeddings(cat, model, attr_ids))
    m = plan_maps(boxes, T, Fm, sims, grid, H, W, tau=1.0 / logit_scale(model))
    return ClassMaps(PLAN_DENSE, m.class_map, attr_ids.tolist(), m.attribute_maps, boxes=boxes, grid=tuple(grid))


def box_maps(al: Alignment, all_ids: np.ndarray, all_boxes: np.ndarray, height: int, width: int,
             note: str | None = None) -> ClassMaps:
    """The crop-box maps at the image's size (``explain --maps boxes``)."""
    used = np.unique(al.region_id[al.mass > 0])
    keep = np.isin(all_ids, used)
    ids, boxes = all_ids[keep], np.asarray(all_boxes, np.float64)[keep]
    attr_ids = np.unique(al.attr_id)
    am = np.stack([attribution_map(boxes, attribute_weights(al, ids, int(a)), height, width) for a in attr_ids]) \
        if len(attr_ids) else np.zeros((0, height, width))
    return ClassMaps(CROP_BOXES, attribution_map(boxes, class_weights(al, ids), height, width), attr_ids.tolist(), am, note,
                     boxes=boxes)


def random_map(cm: ClassMaps, rng: np.random.Generator, height: int, width: int) -> tuple[str, np.ndarray]:
    """A random map of the same kind as ``cm`` (``map_kinds.RANDOM_OF``): (its kind name, (H, W)).

    plan-dense: U(0, 1) mass per crop, spread over the crop's patch cells by U(0, 1) weights
    (the same crops and grid); crop-boxes: U(0, 1) mass per crop over the same whole boxes;
    any other kind: U(0, 1) on an 8x8 grid, bilinear. A fresh draw on every call."""
    kind = RANDOM_OF[cm.kind]
    if cm.kind == PLAN_DENSE:
        R, L = len(cm.boxes), cm.grid[0] * cm.grid[1]
        within = rng.random((R, L, 1))
        within /= within.sum(1, keepdims=True)
        return kind, plan_density_map(cm.boxes, rng.random((R, 1)), within, cm.grid, height, width).maps[0]
    if cm.kind == CROP_BOXES:
        return kind, attribution_map(cm.boxes, rng.random(len(cm.boxes)), height, width)
    return kind, resize_map(rng.random((8, 8)), (width, height))


def occlusion(cat, model, run, image: Image.Image, class_id: int, all_boxes: np.ndarray, *,
              window_at_128: int = 16) -> ClassMaps:
    """Occlusion maps of the class's LaZSL probability (and of each attribute's contribution).

    Windows of ``window_at_128`` px per 128 px of the short side, stride = window, on a copy whose
    short side is at most 256 px, blurred fill; upsampled back to the image's size."""
    # heavy: imported on use
    import torch

    from .maps import LazslScorer, occlusion_maps

    t0 = time.perf_counter()
    W, H = image.size
    s = min(1.0, OCCLUSION_WORK_SIDE / min(W, H))
    w, h = max(1, round(W * s)), max(1, round(H * s))
    arr = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR) if s < 1 else image)
    boxes = scale_boxes(all_boxes, w / W, h / H)
    style = "sentences" if str(run.params.get("texts", {}).get("kind", "")).startswith("sentences") else "descriptors"
    mat = tables.attribute_matrix(cat, model.fingerprint, style)
    classes = np.unique(mat.class_ids)
    if class_id not in set(classes.tolist()):
        raise InputError(f"Class {class_id} has no encoded {style}; occlusion needs them.")
    ci = int(np.searchsorted(classes, class_id))
    theta = float(run.params.get("config", {}).get("theta", 0.8))
    scorer = LazslScorer(model, mat.embeddings, np.searchsorted(classes, mat.class_ids), boxes, theta=theta)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    b = torch.from_numpy(baseline_image(arr, "blur").copy()).permute(2, 0, 1).float() / 255
    win = max(4, round(window_at_128 * min(w, h) / 128))
    cmap, amaps, passes = occlusion_maps(scorer, x, b, ci, window=win, stride=win)
    r = scorer.scores(scorer.encode(x[None]), candidates=np.array([[ci]]))
    cols = np.asarray(r.attr_index)[0, 0]
    cols = cols[cols >= 0]
    attr_ids = mat.ids[cols].tolist()
    n_win = len(sliding_windows(h, w, window=win, stride=win))
    cost = dict(windows=n_win, window_px=win, encoder_passes=int(passes), seconds=round(time.perf_counter() - t0, 2))
    amaps = np.stack([resize_map(a, (W, H)) for a in amaps]) if len(amaps) else np.zeros((0, H, W))
    return ClassMaps(OCCLUSION, resize_map(cmap, (W, H)), attr_ids, amaps, cost=cost)


def class_maps(cat, run, img: dict, image: Image.Image, class_id: int, al: Alignment, *, kind: str = PLAN_DENSE,
               model=None) -> ClassMaps:
    """The maps of ``kind`` for one (image, class) at the image's size. ``model`` may be a
    zero-argument loader (called only when the kind needs the encoder)."""
    check_drawn_kind(kind)
    all_ids, kinds, all_boxes = tables.image_regions(cat, img["image_id"])
    W, H = image.size
    sx, sy = W / img["width"], H / img["height"]
    all_boxes = scale_boxes(all_boxes, sx, sy) if (sx, sy) != (1.0, 1.0) else all_boxes
    used = np.unique(al.region_id[al.mass > 0])
    used_kinds = {kinds[i] for i in np.flatnonzero(np.isin(all_ids, used))}
    if kind != CROP_BOXES and used_kinds & {"patch"}:
        return box_maps(al, all_ids, all_boxes, H, W, note=f"{kind} maps need crop regions; the patch "
                        "regions' boxes are the patch cells, drawn as they are")
    if kind == CROP_BOXES:
        return box_maps(al, all_ids, all_boxes, H, W)
    if callable(model) and not hasattr(model, "encode_images"):
        try:
            model = model()
        except (ModelLoadError, StoreError):
            model = None
    if model is None:
        return box_maps(al, all_ids, all_boxes, H, W, note=f"{kind} maps need the store's model, which "
                        "could not be loaded; crop-box maps drawn instead")
    if kind == OCCLUSION:
        return occlusion(cat, model, run, image, class_id, all_boxes)
    return plan_dense(cat, model, image, al, all_ids, all_boxes, kinds)
