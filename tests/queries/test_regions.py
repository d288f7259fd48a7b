"""queries.regions: AWT's random resized crops + flips and the part crops, as pure box generators."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import RegionConfig
from queries.regions import (
    augmented_view_boxes,
    image_seed,
    random_resized_crop_boxes,
    random_square_crops,
    region_boxes,
)


def test_views_are_a_function_of_hash_and_seed():
    b1, f1 = augmented_view_boxes(320, 240, "a" * 64, 50)
    b2, f2 = augmented_view_boxes(320, 240, "a" * 64, 50)
    b3, _ = augmented_view_boxes(320, 240, "b" * 64, 50)
    b4, _ = augmented_view_boxes(320, 240, "a" * 64, 50, seed=1)
    assert np.array_equal(b1, b2) and np.array_equal(f1, f2)
    assert not np.array_equal(b1, b3) and not np.array_equal(b1, b4)
    assert b1.shape == (50, 4)
    # about half of the views are mirrored (p = 0.5; 50 draws)
    assert 10 <= int(f1.sum()) <= 40
    assert not augmented_view_boxes(320, 240, "a" * 64, 50, flip=0.0)[1].any()


def test_boxes_follow_torchvision_sampling_rules():
    rng = np.random.default_rng(0)
    W, H = 500, 375
    boxes = random_resized_crop_boxes(W, H, 2000, rng)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    # width/height are the rounded sqrt(area*ratio), sqrt(area/ratio): within rounding of the bounds
    area = w * h / (W * H)
    ratio = w / h
    assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.9 and ratio.max() <= (4 / 3) * 1.1
    # area fraction is uniform on (0.08, 1) before the "fits" rejection: its median is near
    # the uniform's for a landscape image that accepts most draws
    assert 0.4 < float(np.median(area)) < 0.6


def test_fallback_is_the_central_crop_with_clamped_ratio():
    # a very wide image where no draw of area in [0.9, 1] fits: the central crop, ratio 4/3
    boxes = random_resized_crop_boxes(400, 100, 5, np.random.default_rng(0), scale=(0.9, 1.0))
    h = 100
    w = int(round(h * 4 / 3))
    x0 = (400 - w) // 2
    assert boxes.tolist() == [[x0, 0, x0 + w, h]] * 5


def test_parts_and_views_leave_the_crops_unchanged():
    """Each region set has its own random stream: adding parts or views to an index keeps the
    crops (and so the region ids and LaZSL's scores) of an index without them."""
    sha = "cd" * 32
    k0, b0 = region_boxes(200, 150, sha, **RegionConfig(n_crops=7).geometry())
    k1, b1 = region_boxes(200, 150, sha, **RegionConfig(n_crops=7, n_parts=5, n_views=4).geometry())
    assert np.array_equal(b1[:8], b0) and k1[:8] == k0
    assert k1[8:13] == ["part"] * 5 and set(k1[13:]) <= {"view", "view-flip"} and len(k1) == 17
    # parts: squares of side U(part_min, part_max)·short side, from their own stream
    side = b1[8:13, 2] - b1[8:13, 0]
    assert np.array_equal(side, b1[8:13, 3] - b1[8:13, 1])
    assert (side >= np.floor(0.3 * 150)).all() and (side <= 0.5 * 150).all()
    want = random_square_crops(200, 150, 5, 0.3, 0.5, np.random.default_rng([image_seed(sha, 0), 1]))
    assert np.array_equal(b1[8:13], want)
    boxes, flips = augmented_view_boxes(200, 150, sha, 4)
    assert np.array_equal(b1[13:], boxes) and k1[13:] == ["view-flip" if f else "view" for f in flips]


def test_doctests():
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module("queries.regions"), raise_on_error=False)
    assert res.attempted > 0 and res.failed == 0


def test_log_uniform_sides_cover_every_scale_equally():
    """log-uniform sides: as many crops per octave of [lo, hi] (uniform sides put most of them
    at the large end), inside the bounds, same positions' stream length as uniform sides."""
    lo, hi, n = 0.15, 0.9, 4000
    log = random_square_crops(1000, 1000, n, lo, hi, np.random.default_rng(0), "log-uniform")
    uni = random_square_crops(1000, 1000, n, lo, hi, np.random.default_rng(0))
    side_log, side_uni = (log[:, 2] - log[:, 0]) / 1000, (uni[:, 2] - uni[:, 0]) / 1000
    assert side_log.min() >= lo - 1e-3 and side_log.max() <= hi
    edges = np.geomspace(lo, hi, 4)  # three equal ratios
    counts = np.histogram(side_log, edges)[0] / n
    np.testing.assert_allclose(counts, 1 / 3, atol=0.03)
    assert np.histogram(side_uni, edges)[0][0] / n < 0.2
    assert (log[:, :2] >= 0).all() and (log[:, 2:] <= 1000).all()
    kinds, boxes = region_boxes(128, 128, "ab" * 32, n_crops=60, crop_min=lo, crop_max=hi, crop_sides="log-uniform")
    uniform = region_boxes(128, 128, "ab" * 32, n_crops=60, crop_min=lo, crop_max=hi)[1]
    assert len(kinds) == 61 and np.median(boxes[1:, 2] - boxes[1:, 0]) < np.median(uniform[1:, 2] - uniform[1:, 0])
    with pytest.raises(ValueError, match="log-uniform"):
        random_square_crops(10, 10, 1, 0.2, 0.5, np.random.default_rng(0), "octaves")
