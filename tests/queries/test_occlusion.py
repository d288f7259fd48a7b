"""queries.occlusion against plain loops."""
from __future__ import annotations

import numpy as np
import pytest

from queries.occlusion import occlusion_map, rise_map, rise_masks, sliding_windows


@pytest.mark.parametrize("h,w,win,stride", [(20, 17, 6, 4), (8, 8, 4, 4), (5, 9, 9, 2)])
def test_windows_cover_every_pixel(h, w, win, stride):
    b = sliding_windows(h, w, window=win, stride=stride)
    cover = np.zeros((h, w), int)
    for x0, y0, x1, y1 in b.astype(int):
        assert x1 - x0 == min(win, w) and y1 - y0 == min(win, h)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1


def test_occlusion_map_against_loop():
    rng = np.random.default_rng(0)
    h, w = 13, 11
    wins = sliding_windows(h, w, window=5, stride=3)
    scores = rng.random(len(wins))
    base = 1.3
    got = occlusion_map(base, scores, wins, h, w)
    want = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            d = [base - s for (x0, y0, x1, y1), s in zip(wins, scores) if x0 <= x < x1 and y0 <= y < y1]
            want[y, x] = np.mean(d)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_rise():
    rng = np.random.default_rng(1)
    m = rise_masks(300, 20, 24, grid=4, p=0.3, rng=rng)
    assert m.shape == (300, 20, 24) and m.min() >= 0 and m.max() <= 1
    assert abs(m.mean() - 0.3) < 0.05
    s = rng.random(300)
    want = np.zeros((20, 24))
    for si, mi in zip(s, m):
        want += si * mi
    np.testing.assert_allclose(rise_map(s, m, 0.3), want / (300 * 0.3), atol=1e-10)
    with pytest.raises(ValueError):
        rise_map(s[:5], m, 0.3)
