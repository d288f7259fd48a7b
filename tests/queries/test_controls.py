"""queries.controls: best-region and crop-dclip against a plain loop (float64, one image, one
region, one class, one descriptor at a time, cosines computed from scratch)."""
from __future__ import annotations

import numpy as np
import pytest

from queries.controls import best_region_scores, crop_dclip_scores

D = 16


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(seed, B=5, R=7, C=6, max_desc=5):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_desc + 1, C)
    attr_class = rng.permutation(np.repeat(np.arange(C), counts))  # classes interleaved, counts differ
    attr = unit(rng.standard_normal((len(attr_class), D)) + 0.5)
    regions = unit(rng.standard_normal((B, R, D)) + 0.5)
    return regions, attr, attr_class, C


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def loop_region_class(regions, attr, attr_class, C):
    """s[b][r][c] = mean over c's descriptors of cos(region, descriptor)."""
    B, R, _ = regions.shape
    s = np.zeros((B, R, C))
    for b in range(B):
        for r in range(R):
            for c in range(C):
                descs = [attr[i] for i in range(len(attr)) if attr_class[i] == c]
                s[b, r, c] = sum(cos(regions[b, r], d) for d in descs) / len(descs)
    return s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_region_is_max_over_regions_of_mean_cosine(seed):
    regions, attr, attr_class, C = make_data(seed)
    s = loop_region_class(regions, attr, attr_class, C)
    res = best_region_scores(regions, attr, attr_class, C)
    np.testing.assert_allclose(res.scores, s.max(axis=1), atol=1e-5)
    assert np.array_equal(res.region, s.argmax(axis=1))
    assert res.plan is None and res.global_scores is None


@pytest.mark.parametrize("seed", [0, 3])
def test_crop_dclip_is_mean_over_regions_of_dclip(seed):
    regions, attr, attr_class, C = make_data(seed, R=4)
    s = loop_region_class(regions, attr, attr_class, C)
    res = crop_dclip_scores(regions, attr, attr_class, C)
    np.testing.assert_allclose(res.scores, s.mean(axis=1), atol=1e-5)
    # the two controls differ (a max is not a mean) on this data
    assert not np.allclose(res.scores, best_region_scores(regions, attr, attr_class, C).scores)


def test_one_region_makes_both_controls_dclip_of_that_region():
    regions, attr, attr_class, C = make_data(4, R=1)
    s = loop_region_class(regions, attr, attr_class, C)[:, 0]
    np.testing.assert_allclose(best_region_scores(regions, attr, attr_class, C).scores, s, atol=1e-5)
    np.testing.assert_allclose(crop_dclip_scores(regions, attr, attr_class, C).scores, s, atol=1e-5)


def test_bad_inputs_are_refused():
    regions, attr, attr_class, C = make_data(5)
    with pytest.raises(ValueError, match="at least one text"):
        best_region_scores(regions, attr, attr_class, C + 1)  # class C has no descriptor
    with pytest.raises(ValueError, match="no region"):
        crop_dclip_scores(regions[:, :0], attr, attr_class, C)
    with pytest.raises(ValueError, match="widths"):
        crop_dclip_scores(regions[..., :4], attr, attr_class, C)
    with pytest.raises(TypeError):
        crop_dclip_scores(regions, attr, attr_class.astype(float), C)
