"""pipeline.imaging: the pixels of AWT's views (stretched, mirrored) and of the other regions."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipeline.imaging import region_image, render_view


def _image():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white left quarter
    return Image.fromarray(arr)


def test_render_view_stretches_the_box_and_flips():
    img = _image()
    v = np.asarray(render_view(img, (0, 0, 20, 20), False, 16))
    assert v.shape == (16, 16, 3)
    # the box's left half is white: stretched, not centre-cropped
    assert v[:, :6].min() > 200 and v[:, 10:].max() < 50
    vf = np.asarray(render_view(img, (0, 0, 20, 20), True, 16))
    assert np.array_equal(vf, v[:, ::-1])
    # a non-square box fills the whole square output
    wide = np.asarray(render_view(img, (0, 0, 40, 10), False, 16))
    assert wide[:, :3].min() > 200 and math.isclose(float((wide[..., 0] > 128).mean()), 0.25, abs_tol=0.07)


def test_region_image_by_kind():
    img = _image()
    assert region_image(img, "full", (0, 0, 40, 20), 16) is img
    for kind in ("crop", "part", "grid"):
        crop = region_image(img, kind, (5.7, 0, 15.2, 10), 16)
        assert crop.size == (10, 10)  # integer box, as index-images always cut crops
        assert np.array_equal(np.asarray(crop), np.asarray(img)[0:10, 5:15])
    assert np.array_equal(np.asarray(region_image(img, "view-flip", (0, 0, 20, 20), 16)),
                          np.asarray(render_view(img, (0, 0, 20, 20), True, 16)))
