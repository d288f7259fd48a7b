"""queries.shortlist: prototypes and top-k candidates (faiss and numpy paths agree)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from queries import class_prototypes, shortlist_candidates


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_class_prototypes_match_loop():
    rng = np.random.default_rng(0)
    attr_class = rng.permutation(np.repeat(np.arange(12), rng.integers(1, 6, 12)))
    attr = unit(rng.standard_normal((len(attr_class), 16)))
    proto = class_prototypes(attr, attr_class, 12)
    for c in range(12):
        m = attr[attr_class == c].astype(np.float64).mean(0)
        np.testing.assert_allclose(proto[c], m / np.linalg.norm(m), atol=1e-6)
    with pytest.raises(ValueError):
        class_prototypes(attr, attr_class, 13)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_faiss_equals_numpy_and_is_sorted(k):
    rng = np.random.default_rng(k)
    img = unit(rng.standard_normal((300, 48)))
    proto = unit(rng.standard_normal((200, 48)))
    a = shortlist_candidates(img, proto, k)
    b = shortlist_candidates(img, proto, k, use_faiss=False)
    assert a.shape == (300, k) and a.dtype == np.int64
    assert np.array_equal(a, b)
    sims = img.astype(np.float64) @ proto.T.astype(np.float64)
    top = np.argsort(-sims, axis=1)[:, :k]
    assert np.array_equal(a, top)


def test_all_classes_when_k_is_zero_or_large():
    rng = np.random.default_rng(1)
    img = unit(rng.standard_normal((10, 8)))
    proto = unit(rng.standard_normal((25, 8)))
    full = shortlist_candidates(img, proto, 0)
    assert full.shape == (10, 25)
    assert np.array_equal(full, shortlist_candidates(img, proto, 25))
    assert np.array_equal(full, shortlist_candidates(img, proto, 99, use_faiss=False))
    assert (np.sort(full, 1) == np.arange(25)).all()
    t = shortlist_candidates(torch.from_numpy(img), torch.from_numpy(proto), 3)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    assert np.array_equal(t.numpy(), full[:, :3])


def test_ties_broken_towards_lower_index():
    proto = unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
    img = unit(np.array([[1.0, 0.1]]))
    assert shortlist_candidates(img, proto, 3).tolist() == [[0, 2, 3]]
    assert shortlist_candidates(img, proto, 3, use_faiss=False).tolist() == [[0, 2, 3]]
