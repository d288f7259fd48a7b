"""queries.baselines and queries.lazsl: each method against a per-image / per-class loop written from the spec.

The loops below are deliberately naive (float64 numpy, one image and one class at a
time) and follow shared/spec/methods-reference.md, not the implementation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers.reference import lazsl_loop

from queries import (
    class_prototypes,
    class_text_from_templates,
    clip_scores,
    cupl_scores,
    dclip_scores,
    lazsl_scores,
    shortlist_candidates,
    wca_scores,
)

D = 32


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(seed, B=8, C=30, M=12, max_attr=7):
    """CLIP-like toy geometry: a shared direction + class directions + noise, so cosines
    are spread (not all ~0) and classes are separable but confusable. Attribute counts vary
    from 1 to max_attr and are not sorted by class."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(D)
    cls_dir = rng.standard_normal((C, D))
    counts = rng.integers(1, max_attr + 1, C)
    counts[0] = 1
    counts[1] = max_attr
    attr_class = rng.permutation(np.repeat(np.arange(C), counts))
    attr = unit(shared + 1.2 * cls_dir[attr_class] + rng.standard_normal((len(attr_class), D)))
    label = rng.integers(0, C, B)
    full = unit(shared + 0.8 * cls_dir[label] + 1.5 * rng.standard_normal((B, D)))
    crops = unit(full[:, None, :] * 2.0 + rng.uniform(0.5, 2.0, (B, M, 1)) * rng.standard_normal((B, M, D)))
    return full, crops, attr, attr_class, C


# ---------------------------------------------------------------- CLIP / DCLIP / CuPL
def test_clip_and_template_ensemble_match_loop():
    rng = np.random.default_rng(0)
    img = unit(rng.standard_normal((20, D)))
    emb = unit(rng.standard_normal((15, 4, D)))  # C=15 classes x T=4 templates
    w = class_text_from_templates(emb)
    w2 = class_text_from_templates(emb.reshape(60, D), n_templates=4)
    assert np.array_equal(w, w2)
    for c in range(15):
        ref = emb[c].astype(np.float64).mean(0)
        np.testing.assert_allclose(w[c], ref / np.linalg.norm(ref), atol=1e-6)
    s = clip_scores(img, w)
    loop = np.array([[float(img[b].astype(np.float64) @ w[c]) for c in range(15)] for b in range(20)])
    np.testing.assert_allclose(s, loop, atol=1e-5)
    assert np.array_equal(s.argmax(1), loop.argmax(1))
    with pytest.raises(ValueError):
        class_text_from_templates(emb.reshape(60, D), n_templates=7)


def test_dclip_is_mean_of_cosines_not_cosine_of_mean():
    full, _, attr, attr_class, C = make_data(1, B=12, C=40)
    s = dclip_scores(full, attr, attr_class, C)
    assert s.shape == (12, C) and s.dtype == np.float32
    loop = np.zeros((12, C))
    for b in range(12):
        for c in range(C):
            loop[b, c] = np.mean([full[b].astype(np.float64) @ attr[a] for a in np.nonzero(attr_class == c)[0]])
    np.testing.assert_allclose(s, loop, atol=1e-5)
    assert np.array_equal(s.argmax(1), loop.argmax(1))
    proto = class_prototypes(attr, attr_class, C)  # cosine to the mean: a different number
    assert not np.allclose(clip_scores(full, proto), s, atol=1e-3)
    with pytest.raises(ValueError, match="no descriptors"):
        dclip_scores(full, attr, attr_class, C + 1)  # class C has none


def test_cupl_matches_loop():
    full, _, sent, sent_class, C = make_data(2, B=10, C=25)
    s = cupl_scores(full, sent, sent_class, C)
    loop = np.zeros((10, C))
    for c in range(C):
        y = sent[sent_class == c].astype(np.float64)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        w = y.mean(0)
        w /= np.linalg.norm(w)
        loop[:, c] = full.astype(np.float64) @ w
    np.testing.assert_allclose(s, loop, atol=1e-5)
    assert np.array_equal(s.argmax(1), loop.argmax(1))


# ---------------------------------------------------------------- WCA
def wca_loop(full, crops, sent, sent_class, photo, *, image_scale, text_scale, patch_n, n_runs, seed, score):
    full, crops, sent, photo = (x.astype(np.float64) for x in (full, crops, sent, photo))
    B, M, _ = crops.shape
    C = photo.shape[0]
    text = []
    for c in range(C):
        y = sent[sent_class == c]
        logit = text_scale * (y @ photo[c])
        v = np.exp(logit - logit.max())
        v /= v.sum()
        t = (v[:, None] * y).sum(0)
        text.append(t / np.linalg.norm(t) if score == "code" else t)
    text = np.array(text)
    idx = np.random.default_rng(seed).integers(0, M, size=(n_runs, patch_n))
    runs = np.zeros((n_runs, B, C))
    for r in range(n_runs):
        for b in range(B):
            x = crops[b, idx[r]]  # sampled with replacement, duplicates kept
            logit = image_scale * (x @ full[b])
            w = np.exp(logit - logit.max())
            w /= w.sum()
            if score == "code":
                z = (w[:, None] * x).sum(0)
                z /= np.linalg.norm(z)
                runs[r, b] = text @ z
            else:  # sum_ij w_i v_j cos(x_i, y_j)
                for c in range(C):
                    y = sent[sent_class == c]
                    lv = text_scale * (y @ photo[c])
                    v = np.exp(lv - lv.max())
                    v /= v.sum()
                    runs[r, b, c] = w @ (x @ y.T) @ v
    return runs.mean(0), runs.std(0), runs.argmax(2).T  # (B, C), (B, C), each draw's top-1 (B, R)


@pytest.mark.parametrize("score", ["code", "paper"])
def test_wca_matches_loop(score):
    full, crops, sent, sent_class, C = make_data(3, B=6, C=35, M=15)
    photo = unit(np.random.default_rng(33).standard_normal((C, D)) + 2 * class_prototypes(sent, sent_class, C))
    kw = dict(image_scale=math.e**4, text_scale=math.e**2, patch_n=9, n_runs=5, seed=11)
    res = wca_scores(full, crops, sent, sent_class, photo, score=score, **kw)
    mean, std, top1 = wca_loop(full, crops, sent, sent_class, photo, score=score, **kw)
    assert res.scores.shape == (6, C) and res.std.shape == (6, C)
    np.testing.assert_allclose(res.scores, mean, atol=1e-5)
    np.testing.assert_allclose(res.std, std, atol=1e-5)
    assert np.array_equal(res.run_top1, top1)  # the per-draw predictions evaluate's mean ± std uses
    assert np.array_equal(res.scores.argmax(1), mean.argmax(1))


def test_wca_code_and_paper_differ_seed_determinism_and_batch_independence():
    full, crops, sent, sent_class, C = make_data(4, B=6, C=35, M=15)
    photo = unit(np.random.default_rng(44).standard_normal((C, D)) + 2 * class_prototypes(sent, sent_class, C))
    kw = dict(patch_n=9, n_runs=5)
    code = wca_scores(full, crops, sent, sent_class, photo, seed=1, **kw)
    paper = wca_scores(full, crops, sent, sent_class, photo, seed=1, score="paper", **kw)
    assert not np.allclose(code.scores, paper.scores, atol=1e-3)
    again = wca_scores(full, crops, sent, sent_class, photo, seed=1, **kw)
    assert np.array_equal(code.scores, again.scores) and np.array_equal(code.std, again.std)
    other = wca_scores(full, crops, sent, sent_class, photo, seed=2, **kw)
    assert not np.array_equal(code.scores, other.scores)
    assert (code.std > 0).any()
    sub = wca_scores(full[2:4], crops[2:4], sent, sent_class, photo, seed=1, **kw)
    np.testing.assert_allclose(sub.scores, code.scores[2:4], atol=1e-6)
    t = wca_scores(torch.from_numpy(full), torch.from_numpy(crops), sent, sent_class, photo, seed=1, **kw)
    assert isinstance(t.scores, torch.Tensor)
    np.testing.assert_allclose(t.scores.numpy(), code.scores, atol=1e-6)
    with pytest.raises(ValueError):
        wca_scores(full, crops, sent, sent_class, photo, score="both")


# ---------------------------------------------------------------- LaZSL
@pytest.fixture(scope="module")
def lazsl_case():
    full, crops, attr, attr_class, C = make_data(5, B=8, C=30, M=12)  # 240 (image, class) pairs
    loop = lazsl_loop(full, crops, attr, attr_class, C)
    res = lazsl_scores(full, crops, attr, attr_class)  # all classes
    return full, crops, attr, attr_class, C, loop, res


def test_lazsl_matches_per_pair_loop(lazsl_case):
    full, crops, attr, attr_class, C, (scores, glob, iters, plans), res = lazsl_case
    assert res.scores.shape == (8, C) and res.scores.dtype == np.float32
    np.testing.assert_allclose(res.scores, scores, atol=1e-4)
    np.testing.assert_allclose(res.global_scores, glob, atol=1e-5)
    assert np.array_equal(res.scores.argmax(1), scores.argmax(1))
    assert (res.n_iter == iters).mean() >= 0.99  # same stopping rule, same iteration
    assert len(np.unique(iters)) >= 2
    counts = np.bincount(attr_class, minlength=C)
    for (b, c), T in plans.items():
        n = counts[c]
        np.testing.assert_allclose(res.plan[b, c, :, :n], T, atol=1e-5)
        assert (res.plan[b, c, :, n:] == 0).all()
        assert np.array_equal(res.attr_index[b, c, :n], np.nonzero(attr_class == c)[0])
        assert (res.attr_index[b, c, n:] == -1).all()
    # crop marginal: mean-thresholded, uniform over the kept crops
    sim_rg = np.einsum("bmd,bd->bm", crops.astype(np.float64), full)
    kept = sim_rg >= sim_rg.mean(1, keepdims=True)
    np.testing.assert_allclose(res.crop_mass, kept / kept.sum(1, keepdims=True), atol=1e-7)
    assert 0 < kept.sum(1).min() and kept.sum(1).max() < crops.shape[1]


def test_lazsl_score_decomposes_into_global_and_local(lazsl_case):
    *_, res = lazsl_case
    theta = 0.8
    np.testing.assert_allclose(res.scores, (1 - theta) * res.global_scores + theta * res.local_scores, atol=1e-6)
    counts = np.bincount(lazsl_case[3])
    cols = res.plan.sum(2)  # (B, C, n_max) column sums = 1/N_c on real columns
    for c in range(lazsl_case[4]):
        np.testing.assert_allclose(cols[:, c, : counts[c]], 1.0 / counts[c], rtol=1e-5)


def test_lazsl_shortlist_scores_identical_to_all_class_run(lazsl_case):
    full, crops, attr, attr_class, C, _, res = lazsl_case
    proto = class_prototypes(attr, attr_class, C)
    for k in (1, 5, 12):
        cand = shortlist_candidates(full, proto, k)
        short = lazsl_scores(full, crops, attr, attr_class, cand)
        assert short.scores.shape == (8, k)
        assert np.array_equal(short.scores, np.take_along_axis(res.scores, cand, 1))
        assert np.array_equal(short.n_iter, np.take_along_axis(res.n_iter, cand, 1))
        n_max = short.plan.shape[-1]
        ref_plan = np.take_along_axis(res.plan, cand[:, :, None, None], 1)
        assert np.array_equal(short.plan, ref_plan[..., :n_max])
        assert not ref_plan[..., n_max:].any()
    # random (unsorted, repeated) candidates and tiny chunks: still the same numbers
    cand = np.random.default_rng(0).integers(0, C, (8, 9))
    short = lazsl_scores(full, crops, attr, attr_class, cand, chunk_elements=1, return_plan=False)
    assert short.plan is None
    assert np.array_equal(short.scores, np.take_along_axis(res.scores, cand, 1))


def test_lazsl_options_match_loop():
    # The stopping test is absolute in r, whose size grows like exp(mean cost / eps): keep
    # tol well above float32 resolution of r (here r ~ 1e2-1e3, tol 5e-3).
    full, crops, attr, attr_class, C = make_data(6, B=5, C=20, M=10)
    opts = dict(theta=0.5, eps=0.08, gamma=0.01, max_iter=30, tol=5e-3)
    res = lazsl_scores(full, crops, attr, attr_class, **opts)
    scores, _, iters, _ = lazsl_loop(full, crops, attr, attr_class, C, **opts)
    np.testing.assert_allclose(res.scores, scores, atol=1e-4)
    assert np.array_equal(res.scores.argmax(1), scores.argmax(1))
    assert (res.n_iter == iters).mean() >= 0.98


def test_lazsl_torch_io_and_errors():
    full, crops, attr, attr_class, C = make_data(7, B=3, C=6, M=8)
    res = lazsl_scores(full, crops, attr, attr_class)
    t = lazsl_scores(*(torch.from_numpy(x) for x in (full, crops, attr, attr_class)))
    assert isinstance(t.scores, torch.Tensor) and t.attr_index.dtype == torch.int64
    assert np.array_equal(t.scores.numpy(), res.scores)
    with pytest.raises(ValueError, match="without descriptors"):
        lazsl_scores(full, crops, attr, attr_class, np.full((3, 2), C + 3))
    with pytest.warns(RuntimeWarning, match="removes every crop"):
        r = lazsl_scores(full, crops, attr, attr_class, gamma=1.0)
    np.testing.assert_allclose(r.crop_mass, 1.0 / crops.shape[1])
