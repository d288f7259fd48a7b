"""queries.awt against loops written from AWT's formulas (methods-reference §9 and the code's
``evaluate.py`` behaviour), in float64 numpy, one image and one class at a time. Per-class
stopping uses the project's one reference Sinkhorn (tests/helpers/reference.py); AWT's own
rule (one test over all classes of an image) is written out here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from queries.awt import awt_scores, awt_weights
from tests.helpers.reference import sinkhorn_loop

D = 16


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_data(seed, B=3, V=7, C=5, counts=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(D)
    cls = rng.standard_normal((C, D))
    counts = rng.integers(1, 5, C) if counts is None else np.asarray(counts)
    text_class = rng.permutation(np.repeat(np.arange(C), counts))
    texts = unit(shared + 1.5 * cls[text_class] + rng.standard_normal((len(text_class), D)))
    prompts = unit(shared + 1.5 * cls + rng.standard_normal((C, D)))
    label = rng.integers(0, C, B)
    full = unit(shared + cls[label] + rng.standard_normal((B, D)))
    views = unit(full[:, None] * 2 + rng.standard_normal((B, V, D)))
    views[:, 0] = full
    return views.astype(dtype), texts.astype(dtype), text_class, prompts.astype(dtype)


def _softmax(z):
    e = np.exp(z - np.max(z))
    return e / e.sum()


def _entropy(z):
    p = _softmax(z)
    return -sum(pi * np.log(pi) for pi in p if pi > 0)


def reference_awt(views, texts, text_class, prompts, *, scale=100.0, tv=0.5, tt=0.5, eps=0.1,
                  max_iter=100, tol=1e-2, stop="image"):
    """Per image, per class: the formulas, with AWT's Sinkhorn (r = c = 1 at the start)."""
    B, V, _ = views.shape
    C = int(text_class.max()) + 1 if prompts is None else prompts.shape[0]
    scores = np.zeros((B, C))
    plans, n_iters = {}, np.zeros((B, C), int)
    for b in range(B):
        X = views[b].astype(np.float64)
        Y = []
        for c in range(C):
            rows = [texts[i] for i in range(len(text_class)) if text_class[i] == c]
            Y.append(np.array(([prompts[c]] if prompts is not None else []) + rows, dtype=np.float64))
        cos = [X @ Y[c].T for c in range(C)]  # (V, N_c)
        mean = np.array([[scale * cos[c][v].mean() for c in range(C)] for v in range(V)])
        H_v = np.array([_entropy(mean[v]) for v in range(V)])
        a = _softmax(-H_v / tv)
        bw = []
        for c in range(C):
            H = []
            for t in range(len(Y[c])):
                z = mean[0].copy()
                z[c] = scale * cos[c][0, t]
                H.append(_entropy(z))
            bw.append(_softmax(-np.array(H) / tt))
        if stop == "pair":  # each class on its own: the project's reference Sinkhorn
            for c in range(C):
                T, n_iters[b, c] = sinkhorn_loop(a, bw[c], 1 - cos[c], eps, max_iter, tol)
                plans[b, c], scores[b, c] = T, (T * cos[c]).sum()
            continue
        # the code: one stopping test over all classes of the image
        K = [np.exp(-(1 - cos[c]) / eps) for c in range(C)]
        r = [np.ones(V) for _ in range(C)]
        col = [np.ones(len(Y[c])) for c in range(C)]

        def update(c):
            r_new = a / (K[c] @ col[c])
            col[c] = bw[c] / (K[c].T @ r_new)
            err = np.abs(r_new - r[c]).mean()
            r[c] = r_new
            return err

        for it in range(1, max_iter + 1):
            if np.mean([update(c) for c in range(C)]) < tol:
                break
        n_iters[b] = it
        for c in range(C):
            T = r[c][:, None] * K[c] * col[c][None, :]
            plans[b, c] = T
            scores[b, c] = (T * cos[c]).sum()
    return scores, plans, n_iters


@pytest.mark.parametrize("stop", ["image", "pair"])
@pytest.mark.parametrize("with_prompts", [True, False])
def test_awt_matches_loop(stop, with_prompts):
    views, texts, tc, prompts = make_data(1)
    p = prompts if with_prompts else None
    res = awt_scores(views, texts, tc, p, stop=stop)
    ref, plans, its = reference_awt(views, texts, tc, p, stop=stop)
    np.testing.assert_allclose(res.scores, ref, atol=1e-6, rtol=0)
    assert np.array_equal(res.n_iter, its)
    B, C = ref.shape
    for b in range(B):
        for c in range(C):
            n = plans[b, c].shape[1]
            np.testing.assert_allclose(res.plan[b, c, :, :n], plans[b, c], atol=1e-6, rtol=0)
            assert np.all(res.plan[b, c, :, n:] == 0)
    # column order: the class prompt first (-2), then the class's texts in input order
    for c in range(C):
        cols = res.text_index[c][res.text_index[c] != -1]
        want = ([-2] if with_prompts else []) + [i for i in range(len(tc)) if tc[i] == c]
        assert cols.tolist() == want


def test_awt_stops_later_per_image_than_its_fastest_pair():
    """The image-level test runs every class as long as the slowest needs on average: the
    iteration counts differ from per-pair stopping on some pair (else the two rules would
    be indistinguishable on this data)."""
    views, texts, tc, prompts = make_data(2, B=4, C=8)
    a = awt_scores(views, texts, tc, prompts, stop="image", tol=1e-4)
    b = awt_scores(views, texts, tc, prompts, stop="pair", tol=1e-4)
    assert (a.n_iter != b.n_iter).any()
    assert np.all(a.n_iter == a.n_iter[:, :1])


def test_awt_weights_match_materialised_anchor():
    """The closed-form text entropies equal AWT's construction: an (N, C, C) tensor of the
    class-mean logits with the diagonal replaced by each text's logit (scatter), softmax and
    entropy over the last axis (equal text counts, as the code assumes)."""
    views, texts, tc, prompts = make_data(3, B=2, V=6, C=9, counts=[4] * 9)
    order = np.argsort(tc, kind="stable")
    Y = texts[order].reshape(9, 4, D)
    cos = np.einsum("bvd,cnd->bvcn", views, Y)
    L = torch.from_numpy(100.0 * cos)
    mask = torch.ones(9, 4, dtype=torch.bool)
    wv, wt, _ = awt_weights(L, mask, view_temperature=0.5, text_temperature=0.5)
    for b in range(2):
        out = L[b].permute(0, 2, 1)  # (V, N, C), the code's layout
        img_h = _torch_entropy(out.mean(1))
        np.testing.assert_allclose(wv[b], torch.softmax(-img_h / 0.5, -1), atol=1e-12)
        n_des, n_cls = out.shape[1:]
        anchor = out[0].mean(0)[None, None, :].repeat(n_des, n_cls, 1).clone()
        idx = torch.arange(n_cls)[None, :, None].repeat(n_des, 1, 1)
        anchor.scatter_(2, idx, out[0].unsqueeze(-1))
        txt_h = _torch_entropy(anchor)  # (N, C)
        np.testing.assert_allclose(wt[b], torch.softmax(-txt_h.t() / 0.5, -1), atol=1e-12)


def _torch_entropy(z):
    return -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)


def test_awt_invariances_and_kinds():
    views, texts, tc, prompts = make_data(4, B=5, C=6)
    base = awt_scores(views, texts, tc, prompts)
    # chunking and batch composition do not change an image's result
    small = awt_scores(views, texts, tc, prompts, chunk_elements=1)
    np.testing.assert_allclose(small.scores, base.scores, atol=1e-12)
    one = awt_scores(views[2:3], texts, tc, prompts)
    np.testing.assert_allclose(one.scores[0], base.scores[2], atol=1e-12)
    # reordering the flat text list changes only the column order, not the scores
    perm = np.random.default_rng(0).permutation(len(tc))
    shuf = awt_scores(views, texts[perm], tc[perm], prompts)
    np.testing.assert_allclose(shuf.scores, base.scores, atol=1e-9)
    # torch in -> torch out, same numbers; float32 close to float64
    t = awt_scores(torch.from_numpy(views), torch.from_numpy(texts), torch.from_numpy(tc), torch.from_numpy(prompts))
    assert isinstance(t.scores, torch.Tensor)
    np.testing.assert_allclose(t.scores.numpy(), base.scores, atol=1e-12)
    f32 = awt_scores(views.astype(np.float32), texts.astype(np.float32), tc, prompts.astype(np.float32))
    assert f32.scores.dtype == np.float32
    np.testing.assert_allclose(f32.scores, base.scores, atol=2e-5)
    # the last Sinkhorn step fixes the columns: they sum to the text weights exactly
    np.testing.assert_allclose(base.plan.sum(2), base.text_weights, atol=1e-12)
    np.testing.assert_allclose(base.view_weights.sum(1), 1.0, atol=1e-12)
    # similarity is what the plan was paid for; the prompt's column is column 0 of every class
    assert np.allclose((base.plan * base.similarity).sum((2, 3)), base.scores)
    np.testing.assert_allclose(base.prompt_scores, (base.plan[..., 0] * base.similarity[..., 0]).sum(2), atol=1e-12)
    assert (base.text_index[:, 0] == -2).all()
    assert (awt_scores(views, texts, tc).prompt_scores == 0).all()


def test_awt_rejects_bad_input():
    views, texts, tc, prompts = make_data(5)
    with pytest.raises(ValueError, match="have no texts"):
        awt_scores(views, texts, tc, n_classes=int(tc.max()) + 2)
    with pytest.raises(ValueError, match="stop"):
        awt_scores(views, texts, tc, stop="batch")
    with pytest.raises(ValueError, match="class_prompts"):
        awt_scores(views, texts, tc, prompts[:-1])


def test_doctests():
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module("queries.awt"), raise_on_error=False)
    assert res.attempted > 0 and res.failed == 0
