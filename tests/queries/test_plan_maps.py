"""queries.plan_maps against plain per-pixel loops."""
from __future__ import annotations

import numpy as np
import pytest

from queries.plan_maps import cell_boxes, plan_class_map, plan_density_map, within_region_weights


def _data(seed, R=5, g=(3, 3), N=4, H=40, W=30):
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(R):
        side = rng.integers(9, 25)
        x0, y0 = rng.integers(0, W - side + 1), rng.integers(0, H - side + 1)
        boxes.append((x0, y0, x0 + side, y0 + side))
    boxes = np.array(boxes, float)
    plan = rng.random((R, N)) / (R * N)
    sims = rng.normal(0.2, 0.1, size=(2, R, g[0] * g[1], N))
    fused = rng.normal(0.25, 0.05, size=(R, N))
    return boxes, plan, sims, fused, g, H, W


def test_cell_boxes_tile_the_centred_square():
    cells = cell_boxes([[10, 0, 30, 10], [0, 0, 6, 6]], (2, 2))
    # a 20x10 box: the encoder sees its centred 10x10 square (x 15..25), split in 2x2
    np.testing.assert_allclose(cells[0], [[15, 0, 20, 5], [20, 0, 25, 5], [15, 5, 20, 10], [20, 5, 25, 10]])
    np.testing.assert_allclose(cells[1], [[0, 0, 3, 3], [3, 0, 6, 3], [0, 3, 3, 6], [3, 3, 6, 6]])


def test_within_weights_against_loop():
    _, _, sims, _, _, _, _ = _data(0)
    tau = 0.05
    got = within_region_weights(sims, tau=tau, contrast=True)
    V, R, L, N = sims.shape
    want = np.zeros((R, L, N))
    for v in range(V):
        for r in range(R):
            for n in range(N):
                z = np.array([(sims[v, r, j, n] - sims[v, r, j].mean()) / tau for j in range(L)])
                e = np.exp(z - z.max())
                want[r, :, n] += e / e.sum() / V
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(got.sum(1), 1.0)
    raw = within_region_weights(sims[0], tau=tau, contrast=False)
    e = np.exp(sims[0] / tau)
    np.testing.assert_allclose(raw, e / e.sum(1, keepdims=True), rtol=1e-10)


@pytest.mark.parametrize("seed", [1, 2])
def test_density_map_against_pixel_loop(seed):
    boxes, plan, sims, fused, g, H, W = _data(seed)
    within = within_region_weights(sims, tau=0.05)
    res = plan_density_map(boxes, plan, within, g, H, W)
    cells = cell_boxes(boxes, g)  # integer-aligned here? not always: use the pixel-centre rule
    want = np.zeros((plan.shape[1], H, W))
    for r in range(len(boxes)):
        for j in range(g[0] * g[1]):
            x0, y0, x1, y1 = cells[r, j]
            inside = [(y, x) for y in range(H) for x in range(W)
                      if x0 < x + 0.5 <= x1 and y0 < y + 0.5 <= y1]
            for y, x in inside:
                want[:, y, x] += plan[r] * within[r, j] / len(inside)
    np.testing.assert_allclose(res.maps, want, atol=1e-12)
    # mass is conserved: each attribute's map integrates to its plan mass
    np.testing.assert_allclose(res.maps.sum((1, 2)), plan.sum(0), rtol=1e-9)
    np.testing.assert_allclose(res.mass, plan.sum(0))


def test_class_map_integrates_to_score():
    boxes, plan, sims, fused, g, H, W = _data(3)
    within = within_region_weights(sims, tau=0.05)
    m = plan_class_map(boxes, plan, fused, within, g, H, W)
    assert m.sum() == pytest.approx((plan * fused).sum(), rel=1e-9)
    want = np.einsum("nhw,n->hw", plan_density_map(boxes, plan * fused, within, g, H, W).maps, np.ones(plan.shape[1]))
    np.testing.assert_allclose(m, want, atol=1e-12)
    c = plan_class_map(boxes, plan, fused, within, g, H, W, centre=True)
    assert abs(c.sum()) < 1e-9 * abs(m.sum())


def test_shape_errors():
    boxes, plan, sims, fused, g, H, W = _data(4)
    with pytest.raises(ValueError):
        plan_density_map(boxes, plan, within_region_weights(sims, tau=0.1)[:, :4], g, H, W)
    with pytest.raises(ValueError):
        within_region_weights(sims, tau=0.0)
