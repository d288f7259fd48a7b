"""queries.contrast: the terms sum to the gap, shared descriptors cancel, against a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
from queries.contrast import contrast_terms, pair_attributes, plan_contributions

VOCAB = ["a red crest", "a blue crest", "plain wings", "striped wings", "a forked tail", "orange legs", "a long beak"]


@pytest.mark.parametrize("seed", range(40))
def test_terms_sum_to_gap(seed):
    rng = np.random.default_rng(seed)
    na, nb = rng.integers(1, 7, 2)
    ta = list(rng.choice(VOCAB, na, replace=False))
    tb = list(rng.choice(VOCAB, nb, replace=False))
    emb = {t: rng.normal(size=8) for t in VOCAB}
    ca, cb = rng.random(na) / na, rng.random(nb) / nb
    r = contrast_terms(ca, cb, ta, tb, emb_a=np.stack([emb[t] for t in ta]), emb_b=np.stack([emb[t] for t in tb]),
                       min_similarity=-1.0)
    assert r.gap == pytest.approx(ca.sum() - cb.sum(), abs=1e-12)
    assert r.prompt_term + sum(x.term for x in r.rows) == pytest.approx(r.gap, abs=1e-12)
    # every attribute of each class appears exactly once
    assert sorted(x.index_a for x in r.rows if x.index_a is not None) == list(range(na))
    assert sorted(x.index_b for x in r.rows if x.index_b is not None) == list(range(nb))
    # every term of the gap is ranked, the class prompt's included: ranks 1..n over prompt + non-shared rows
    ranked = {x.reason_rank: x.term for x in r.rows if x.reason_rank} | {r.prompt_rank: r.prompt_term}
    assert sorted(ranked) == list(range(1, len(ranked) + 1))
    assert all(x.shared == (x.reason_rank is None) for x in r.rows)  # every non-shared row is ranked
    assert [ranked[k] for k in sorted(ranked)] == sorted(ranked.values(), reverse=True)
    assert r.top_term() == max(ranked.values())
    if r.gap > 0:  # the prediction won: what tipped it (rank 1) argues for it, by construction
        assert r.top_term() > 0
    against = r.against()
    negatives = [x.term for x in r.rows if x.reason_rank and x.term < 0]
    assert (against is None) == (not negatives) and (against is None or against.term == min(negatives))


def test_against_plain_loop():
    ta = ["a red crest", "plain wings", "a forked tail", "orange legs"]
    tb = ["orange legs", "a red crest", "striped wings", "a forked tail"]
    ca = np.array([0.071, 0.064, 0.069, 0.060])
    cb = np.array([0.058, 0.070, 0.067, 0.068])
    r = contrast_terms(ca, cb, ta, tb, emb_a=np.eye(4), emb_b=np.eye(4)[[3, 0, 1, 2]])
    # plain loop: shared by text, the per-slot prompt effect is their mean difference
    shared = {(0, 1), (2, 3), (3, 0)}
    d = [ca[i] - cb[j] for i, j in shared]
    nu = np.mean(d)
    by_a = {x.index_a: x for x in r.rows}
    for i, j in shared:
        assert by_a[i].shared and by_a[i].index_b == j and by_a[i].term == 0.0
    assert by_a[1].index_b == 2 and not by_a[1].shared
    assert by_a[1].term == pytest.approx(ca[1] - cb[2] - nu)
    assert r.prompt_term == pytest.approx(sum(d) + nu)
    assert r.top_attribute().text_a == "plain wings"
    # ranking: the prompt term (+0.0127) tipped it; the wing pair (-0.0085) argued for B
    assert r.prompt_rank == 1 and by_a[1].reason_rank == 2 and r.tipped() is None and r.against() is by_a[1]
    assert [x.reason_rank for x in r.rows if x.shared] == [None, None, None]


def test_pairing_rules():
    pairs, ua, ub = pair_attributes(["A x", "b", "c"], ["a  X", "d"], None, None)
    assert pairs == [(0, 0, True)] and ua == [1, 2] and ub == [1]
    e = np.array([[1.0, 0.0], [0.0, 1.0]])
    pairs, ua, ub = pair_attributes(["b", "c"], ["d", "e"], e, e[::-1], min_similarity=0.5)
    assert pairs == [(0, 1, False), (1, 0, False)] and not ua and not ub
    pairs, ua, ub = pair_attributes(["b"], ["d"], e[:1], e[1:], min_similarity=0.5)
    assert pairs == [] and ua == [0] and ub == [0]


def test_plan_contributions_against_loop():
    rng = np.random.default_rng(5)
    T, F = rng.random((3, 7, 4)), rng.random((3, 7, 4))
    want = np.array([[sum(T[b, r, n] * F[b, r, n] for r in range(7)) for n in range(4)] for b in range(3)])
    np.testing.assert_allclose(plan_contributions(T, F), want)


def test_doctests():
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module("queries.contrast"), raise_on_error=False)
    assert res.attempted > 0 and res.failed == 0
