"""queries.binding (object-bound transport) against a per-image, per-object, per-class loop
written from the formulas of its docstring (each object's score is the reference LaZSL of
tests/helpers/reference.py with the object as the full view and its parts as the crops), plus
its invariants."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from queries.binding import object_bound_scores, part_structure
from queries.lazsl import lazsl_scores
from tests.helpers.reference import lazsl_pair

D = 16


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_boxes(rng, R, size=100):
    side = rng.uniform(0.2, 0.9, R) * size
    x0 = rng.uniform(0, 1, R) * (size - side)
    y0 = rng.uniform(0, 1, R) * (size - side)
    bx = np.stack([x0, y0, x0 + side, y0 + side], 1)
    bx[0] = (0, 0, size, size)  # row 0: the full view
    return bx


def make_data(seed, B=2, R=12, C=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(D)
    cls = rng.standard_normal((C, D))
    counts = rng.integers(1, 5, C)
    attr_class = rng.permutation(np.repeat(np.arange(C), counts))
    attr = unit(shared + 1.5 * cls[attr_class] + rng.standard_normal((len(attr_class), D)))
    label = rng.integers(0, C, B)
    full = unit(shared + cls[label] + rng.standard_normal((B, D)))
    regions = unit(full[:, None] * 1.5 + rng.standard_normal((B, R, D)))
    regions[:, 0] = full
    boxes = np.stack([random_boxes(rng, R) for _ in range(B)])
    return regions.astype(dtype), boxes.astype(dtype), attr.astype(dtype), attr_class


def reference(regions, boxes, attr, attr_class, *, theta=0.8, eps=0.1, gamma=0.0, contain=0.75, min_parts=2,
              max_iter=100, tol=1e-2):
    B, R, _ = regions.shape
    C = int(attr_class.max()) + 1
    scores = np.full((B, C), -np.inf)
    prop = np.full((B, C), -1)
    plans = {}
    for b in range(B):
        E = regions[b].astype(np.float64)
        bx = boxes[b]
        for p in range(R):
            parts = []
            for r in range(R):
                if r == p:
                    continue
                iw = max(0.0, min(bx[r, 2], bx[p, 2]) - max(bx[r, 0], bx[p, 0]))
                ih = max(0.0, min(bx[r, 3], bx[p, 3]) - max(bx[r, 1], bx[p, 1]))
                area_r = (bx[r, 2] - bx[r, 0]) * (bx[r, 3] - bx[r, 1])
                area_p = (bx[p, 2] - bx[p, 0]) * (bx[p, 3] - bx[p, 1])
                if iw * ih >= contain * area_r and area_r < area_p:  # mostly inside, and smaller
                    parts.append(r)
            if len(parts) < min_parts:
                continue
            for c in range(C):
                Dc = np.array([attr[i] for i in range(len(attr_class)) if attr_class[i] == c], np.float64)
                res = lazsl_pair(E[p], E[parts], Dc, theta=theta, eps=eps, gamma=gamma, max_iter=max_iter, tol=tol)
                T = np.zeros((R, len(Dc)))
                T[parts] = res["plan"]
                F = np.zeros((R, len(Dc)))
                F[parts] = res["fused"]
                if res["score"] > scores[b, c]:  # strictly greater: ties keep the lowest region index
                    scores[b, c], prop[b, c], plans[b, c] = res["score"], p, (T, F)
    return scores, prop, plans


@pytest.mark.parametrize("chunk", [1 << 22, 1])
def test_matches_loop(chunk):
    regions, boxes, attr, ac = make_data(0)
    res = object_bound_scores(regions, boxes, attr, ac, chunk_elements=chunk)
    ref, prop, plans = reference(regions, boxes, attr, ac)
    np.testing.assert_allclose(res.scores, ref, atol=1e-6, rtol=0)
    assert np.array_equal(res.proposal, prop)
    B, C = ref.shape
    for b in range(B):
        for c in range(C):
            T, F = plans[b, c]
            n = T.shape[1]
            np.testing.assert_allclose(res.plan[b, c, :, :n], T, atol=1e-6, rtol=0)
            kept = T > 0  # the fused similarity each unit of mass was paid for
            np.testing.assert_allclose(res.fused[b, c, :, :n][kept], F[kept], atol=1e-9, rtol=0)
            cols = res.attr_index[b, c]
            assert cols[:n].tolist() == [i for i in range(len(ac)) if ac[i] == c] and (cols[n:] == -1).all()
    np.testing.assert_allclose(res.scores, 0.2 * res.global_scores + 0.8 * res.local_scores, atol=1e-9)
    np.testing.assert_allclose((res.plan * res.fused).sum((2, 3)), res.scores, atol=1e-9)


def test_matches_loop_with_gamma_and_loose_containment():
    regions, boxes, attr, ac = make_data(1, R=10)
    kw = dict(gamma=0.02, contain=0.6, min_parts=3, theta=0.6, eps=0.2, tol=1e-3)
    res = object_bound_scores(regions, boxes, attr, ac, **kw)
    ref, prop, _ = reference(regions, boxes, attr, ac, **kw)
    np.testing.assert_allclose(res.scores, ref, atol=1e-6, rtol=0)
    assert np.array_equal(res.proposal, prop)


def test_batch_composition_does_not_change_an_image():
    regions, boxes, attr, ac = make_data(2, B=4, R=40, C=12, dtype=np.float32)
    full = object_bound_scores(regions, boxes, attr, ac)
    one = object_bound_scores(regions[2:3], boxes[2:3], attr, ac)
    np.testing.assert_allclose(one.scores[0], full.scores[2], atol=1e-6)
    assert np.array_equal(one.proposal[0], full.proposal[2])
    np.testing.assert_allclose(one.plan[0], full.plan[2], atol=1e-6)
    n_obj = (full.n_parts > 0).sum(1)
    assert np.array_equal(full.n_solved, n_obj * 12)


def test_shortlist_and_region_order():
    regions, boxes, attr, ac = make_data(3, B=3, R=15, C=8, dtype=np.float32)
    base = object_bound_scores(regions, boxes, attr, ac)
    cand = np.array([[5, 1, 7], [0, 2, 3], [7, 6, 5]])
    sl = object_bound_scores(regions, boxes, attr, ac, cand)
    np.testing.assert_allclose(sl.scores, np.take_along_axis(base.scores, cand, 1), atol=1e-6)
    np.testing.assert_array_equal(sl.proposal, np.take_along_axis(base.proposal, cand, 1))
    # shuffling the regions (with their boxes) moves the winning object's index with them
    perm = np.random.default_rng(0).permutation(15)
    sh = object_bound_scores(regions[:, perm], boxes[:, perm], attr, ac)
    np.testing.assert_allclose(sh.scores, base.scores, atol=1e-5)
    assert np.array_equal(perm[sh.proposal], base.proposal)


def test_never_below_lazsl_on_the_full_view():
    """The full view is always a candidate object whose parts are all crops: its score is
    LaZSL's (same stopping rule), so the class score is at least LaZSL's."""
    regions, boxes, attr, ac = make_data(4, B=4, R=20, C=6, dtype=np.float32)
    res = object_bound_scores(regions, boxes, attr, ac)
    laz = lazsl_scores(regions[:, 0], regions[:, 1:], attr, ac)
    assert (res.scores >= laz.scores - 1e-6).all()
    assert (res.scores > laz.scores + 1e-4).any()  # and some class is carried by a smaller object
    only_full = object_bound_scores(regions, boxes, attr, ac, min_parts=19)
    assert (only_full.proposal == 0).all()
    np.testing.assert_allclose(only_full.scores, laz.scores, atol=1e-6)
    np.testing.assert_allclose(only_full.plan[:, :, 1:], laz.plan, atol=1e-6)


def test_binds_attributes_to_one_object():
    """Two objects side by side. Class B's two attributes are both on the left object; class
    A's are split, one on each. LaZSL over the whole image ranks A first (its attributes are
    spread over the two object-sized crops); the object-bound score ranks B first, carried
    by the left object, while A's best object is the whole image."""
    e = np.eye(D)
    a1, a2, b1, b2, bg = e[0], e[1], e[2], e[3], e[4]
    full = unit(a1 + a2 + b1 + b2 + bg)
    left, right = unit(a2 + b1 + b2 + 0.5 * bg), unit(a1 + bg)
    parts = [unit(b1 + 0.3 * bg), unit(b2 + 0.3 * bg), unit(a2 + 0.3 * bg), unit(a1 + 0.3 * bg), unit(bg + 0.3 * a1)]
    regions = np.stack([full, left, right] + parts)[None]
    boxes = np.array([[[0, 0, 100, 50], [0, 0, 50, 50], [50, 0, 100, 50],
                       [0, 0, 20, 20], [20, 0, 40, 20], [20, 25, 45, 50], [55, 0, 80, 25], [75, 25, 100, 50]]], float)
    attr = np.stack([a1, a2, b1, b2])
    ac = np.array([0, 0, 1, 1])
    res = object_bound_scores(regions, boxes, attr, ac, theta=0.8)
    laz = lazsl_scores(regions[:, 0], regions[:, 1:], attr, ac, return_plan=False)
    assert laz.scores[0, 0] > laz.scores[0, 1] + 0.1
    assert res.scores[0, 1] > res.scores[0, 0] + 0.01
    assert res.proposal[0].tolist() == [0, 1]  # A: the whole image; B: the left object


def test_part_structure_and_errors():
    regions, boxes, attr, ac = make_data(5, B=1, R=8)
    inside, mass = part_structure(regions[0], boxes[0])
    assert inside[0, 1:].all() and not inside[:, 0].any()
    np.testing.assert_allclose(mass.sum(1)[mass.sum(1) > 0], 1.0)
    t = object_bound_scores(torch.from_numpy(regions), torch.from_numpy(boxes), torch.from_numpy(attr), torch.from_numpy(ac))
    assert isinstance(t.scores, torch.Tensor)
    with pytest.raises(ValueError, match="no region"):
        object_bound_scores(regions, boxes, attr, ac, min_parts=50)
    with pytest.raises(ValueError, match="boxes"):
        object_bound_scores(regions, boxes[:, :-1], attr, ac)


def test_doctests():
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module("queries.binding"), raise_on_error=False)
    assert res.attempted > 0 and res.failed == 0
