"""queries.compositional: MSCI's combination, branches, feasibility and the CZSL metrics,
each against a plain loop written from the definition (and a hand-computed example)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from queries.compositional import (
    apply_feasibility,
    branch_scores,
    compose_scores,
    compositional_scores,
    czsl_metrics,
    feasibility,
)
from queries.lazsl import lazsl_scores


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------ MSCI combination


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.1, 0.9, 0.9), (1.0, 0.0, 2.0)])
def test_compose_scores_matches_a_loop(weights):
    rng = np.random.default_rng(1)
    B, S, O = 5, 4, 3
    ps = np.repeat(np.arange(S), O)
    po = np.tile(np.arange(O), S)
    cp = rng.uniform(-0.2, 0.5, (B, S * O)).astype(np.float32)
    cs = rng.uniform(-0.2, 0.5, (B, S)).astype(np.float32)
    co = rng.uniform(-0.2, 0.5, (B, O)).astype(np.float32)
    wp, ws, wo = weights
    t = 37.0
    got = compose_scores(cp, cs, co, ps, po, logit_scale=t, pair_weight=wp, state_weight=ws, object_weight=wo)
    for b in range(B):
        es = [math.exp(t * v) for v in cs[b]]
        eo = [math.exp(t * v) for v in co[b]]
        for p in range(S * O):
            fs = 1.0 if ws == 0 else es[ps[p]] / sum(es) * ws
            fo = 1.0 if wo == 0 else eo[po[p]] / sum(eo) * wo
            assert got[b, p] == pytest.approx(wp * t * cp[b, p] + fs * fo, rel=1e-5, abs=1e-5)


def test_compose_scores_torch_in_torch_out():
    cp, cs, co = torch.rand(2, 6), torch.rand(2, 3), torch.rand(2, 2)
    ps, po = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    got = compose_scores(cp, cs, co, ps, po)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), compose_scores(cp.numpy(), cs.numpy(), co.numpy(), ps.numpy(), po.numpy()))


# ------------------------------------------------------------------ branches


def _world(seed, B=3, M=7, D=16):
    rng = np.random.default_rng(seed)
    shared = 1.5 * unit(rng.standard_normal(D))  # a common direction: cosines mostly > 0, as CLIP's
    full = unit(shared + rng.standard_normal((B, D)))
    crops = unit(full[:, None] + 0.8 * rng.standard_normal((B, M, D)))
    s_attr = unit(shared + rng.standard_normal((6, D)))  # 3 states x 2
    s_cls = np.array([0, 0, 1, 1, 2, 2])
    o_attr = unit(shared + rng.standard_normal((4, D)))  # 2 objects x 2
    o_cls = np.array([0, 0, 1, 1])
    ps = np.repeat(np.arange(3), 2)
    po = np.tile(np.arange(2), 3)
    # pair attributes: its state's and its object's descriptors (roles 0 and 1)
    p_attr, p_cls, role = [], [], []
    for p in range(6):
        for a in np.nonzero(s_cls == ps[p])[0]:
            p_attr.append(s_attr[a]), p_cls.append(p), role.append(0)
        for a in np.nonzero(o_cls == po[p])[0]:
            p_attr.append(o_attr[a]), p_cls.append(p), role.append(1)
    return full, crops, np.array(p_attr), np.array(p_cls), np.array(role), s_attr, s_cls, o_attr, o_cls, ps, po


def test_branch_scores_global_is_the_dclip_mean_and_local_is_lazsl():
    full, crops, p_attr, p_cls, *_ = _world(3)
    g = branch_scores(full, crops, p_attr, p_cls, local=False)
    for b in range(full.shape[0]):
        for c in range(6):
            rows = p_attr[p_cls == c]
            assert g.scores[b, c] == pytest.approx(float(np.mean(rows @ full[b])), abs=1e-6)
    loc = branch_scores(full, crops, p_attr, p_cls, local=True, theta=0.7)
    ref = lazsl_scores(full, crops, p_attr, p_cls, theta=0.7)
    np.testing.assert_allclose(loc.scores, ref.scores, atol=1e-6)


def test_region_weights_from_the_pair_plan_match_a_loop():
    full, crops, p_attr, p_cls, role, s_attr, s_cls, o_attr, o_cls, ps, po = _world(5)
    r = compositional_scores(full, crops, p_attr, p_cls, s_attr, s_cls, o_attr, o_cls, ps, po,
                             pair_attr_role=role, local=True, logit_scale=20.0)
    ref = lazsl_scores(full, crops, p_attr, p_cls)
    for b in range(full.shape[0]):
        e = int(r.explained[b])
        assert e == int(np.argmax(r.scores[b]))
        plan = ref.plan[b, e]  # (M, n_max)
        cols = ref.attr_index[b, e]
        for want, w in ((0, r.state_region_weight[b]), (1, r.object_region_weight[b])):
            m = np.zeros(plan.shape[0])
            for i in range(plan.shape[0]):
                for j in range(len(cols)):
                    if cols[j] >= 0 and role[cols[j]] == want:
                        m[i] += plan[i, j]
            np.testing.assert_allclose(w, m / m.sum(), atol=1e-6)
        assert int(r.state_region[b]) == int(np.argmax(r.state_region_weight[b]))


def test_region_weights_from_branch_contributions_match_a_loop():
    full, crops, p_attr, p_cls, role, s_attr, s_cls, o_attr, o_cls, ps, po = _world(6)
    expl = np.array([1, 4, 5])
    r = compositional_scores(full, crops, p_attr, p_cls, s_attr, s_cls, o_attr, o_cls, ps, po,
                             local=True, explain_pairs=expl)
    assert r.weight_source == "branch_contribution"
    ref_s = lazsl_scores(full, crops, s_attr, s_cls)
    for b in range(3):
        s = ps[expl[b]]
        plan = ref_s.plan[b, s]
        rows = [a for a in ref_s.attr_index[b, s] if a >= 0]
        contrib = np.array([max(0.0, sum(plan[m, j] * float(crops[b, m] @ s_attr[a]) for j, a in enumerate(rows)))
                            for m in range(crops.shape[1])])
        assert contrib.sum() > 0
        np.testing.assert_allclose(r.state_region_weight[b], contrib / contrib.sum(), atol=1e-5)


def test_local_alignment_finds_the_planted_state_and_object_regions():
    # region 2 shows state 1's attributes, region 4 object 0's; the others are noise
    D = 12
    rng = np.random.default_rng(0)
    basis = unit(rng.standard_normal((8, D)))
    s_attr, s_cls = basis[[0, 1, 2, 3]], np.array([0, 0, 1, 1])
    o_attr, o_cls = basis[[4, 5, 6, 7]], np.array([0, 0, 1, 1])
    ps, po = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    p_attr = np.concatenate([np.concatenate([s_attr[s_cls == ps[p]], o_attr[o_cls == po[p]]]) for p in range(4)])
    p_cls = np.repeat(np.arange(4), 4)
    role = np.tile([0, 0, 1, 1], 4)
    crops = unit(rng.standard_normal((1, 6, D)))
    crops[0, 2] = unit(basis[2] + basis[3] + 0.2 * rng.standard_normal(D))
    crops[0, 4] = unit(basis[4] + basis[5] + 0.2 * rng.standard_normal(D))
    full = unit(basis[2] + basis[3] + basis[4] + basis[5])[None]
    r = compositional_scores(full, crops, p_attr, p_cls, s_attr, s_cls, o_attr, o_cls, ps, po,
                             pair_attr_role=role, local=True, theta=0.9)
    assert int(r.explained[0]) == 2  # state 1, object 0
    assert int(r.state_region[0]) == 2 and int(r.object_region[0]) == 4


# ------------------------------------------------------------------ feasibility


def test_feasibility_matches_a_loop_and_keeps_seen_pairs():
    rng = np.random.default_rng(2)
    st, ob = unit(rng.standard_normal((3, 8))), unit(rng.standard_normal((2, 8)))
    ps, po = np.repeat(np.arange(3), 2), np.tile(np.arange(2), 3)
    pt = unit(rng.standard_normal((6, 8)) + 0.8 * st[ps] * (np.arange(6) % 3 == 0)[:, None])
    keep = np.array([False, True, False, False, False, False])
    thr = 0.2
    f = feasibility(pt, st, ob, ps, po, threshold=thr, keep=keep)
    for p in range(6):
        a, b = float(pt[p] @ st[ps[p]]), float(pt[p] @ ob[po[p]])
        assert f.score[p] == pytest.approx(max(a, b), abs=1e-6)
        assert bool(f.feasible[p]) == (max(a, b) >= thr or keep[p])
    assert f.removed.tolist() == [p for p in range(6) if not f.feasible[p]]
    assert 0 < len(f.removed) < 6
    s = rng.standard_normal((4, 6))
    masked = apply_feasibility(s, f.feasible)
    assert (masked[:, ~f.feasible] == -1e10).all()
    np.testing.assert_array_equal(masked[:, f.feasible], s[:, f.feasible])


# ------------------------------------------------------------------ CZSL metrics


def reference_czsl(scores, labels, seen_mask, closed_mask, topk=1, bias_max=1e3):
    """A plain transcription of the evaluator's steps, one image at a time (no numpy tricks)."""
    n, p = len(scores), len(scores[0])

    def predict(i, bias):
        row = []
        for j in range(p):
            v = scores[i][j] + (0.0 if seen_mask[j] else bias)
            if not closed_mask[j]:
                v = -1e10
            row.append((v, -j))  # ties: lower index first
        best = sorted(row, reverse=True)[:topk]
        return [-j for _, j in best]

    def acc(bias):
        s_hits, u_hits, s_n, u_n = 0, 0, 0, 0
        hits = []
        for i in range(n):
            hit = labels[i] in predict(i, bias)
            hits.append(hit)
            if seen_mask[labels[i]]:
                s_n, s_hits = s_n + 1, s_hits + hit
            else:
                u_n, u_hits = u_n + 1, u_hits + hit
        return s_hits / max(s_n, 1), u_hits / max(u_n, 1), hits

    s_max, u_max, hits_max = acc(bias_max)
    diffs = []
    for i in range(n):
        if not seen_mask[labels[i]] and hits_max[i]:
            seen_scores = sorted((scores[i][j] for j in range(p) if seen_mask[j]), reverse=True)
            diffs.append(seen_scores[topk - 1] - scores[i][labels[i]] - 1e-4)
    diffs.sort()
    step = max(len(diffs) // 20, 1)
    biases = diffs[::step]
    seen_c, unseen_c = [], []
    for b in biases:
        s, u, _ = acc(b)
        seen_c.append(s)
        unseen_c.append(u)
    seen_c.append(s_max)
    unseen_c.append(u_max)
    auc = 0.0
    for k in range(1, len(seen_c)):
        auc += (unseen_c[k] - unseen_c[k - 1]) * (seen_c[k] + seen_c[k - 1]) / 2
    hms = [0.0 if s == 0 or u == 0 else 2 * s * u / (s + u) for s, u in zip(seen_c, unseen_c)]
    return dict(best_seen=max(seen_c), best_unseen=max(unseen_c), best_hm=max(hms), auc=auc,
                seen=seen_c, unseen=unseen_c, biases=biases)


def test_czsl_metrics_hand_computed():
    # pairs: 0, 1 seen; 2, 3 unseen; pair 3 is not a candidate in the closed world
    s = np.array([
        [0.9, 0.2, 0.1, 0.0],   # seen img (pair 0): right at bias <= 0.8
        [0.3, 0.6, 0.5, 0.9],   # seen img (pair 1): right at bias < 0.1 (pair 3 masked)
        [0.5, 0.1, 0.4, 0.0],   # unseen img (pair 2): diff 0.1
        [0.2, 0.7, 0.4, 0.0],   # unseen img (pair 2): diff 0.3
    ])
    y = np.array([0, 1, 2, 2])
    seen = np.array([True, True, False, False])
    closed = np.array([True, True, True, False])
    m = czsl_metrics(s, y, seen, closed_mask=closed)
    # biases 0.0999, 0.2999: (seen 1, unseen 0), (seen 0.5, unseen 0.5); max bias: (0, 1)
    np.testing.assert_allclose(m.biases, [0.0999, 0.2999])
    assert m.seen_curve.tolist() == [1.0, 0.5, 0.0]
    assert m.unseen_curve.tolist() == [0.0, 0.5, 1.0]
    assert m.best_seen == 1.0 and m.best_unseen == 1.0
    assert m.best_hm == pytest.approx(0.5)
    assert m.hm_bias == pytest.approx(0.2999)
    assert m.auc == pytest.approx(0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2)  # 0.5
    assert (m.seen_acc, m.unseen_acc) == (1.0, 0.0)
    # open world (pair 3 a candidate): the seen image of pair 1 is lost to pair 3 at any bias >= 0
    mo = czsl_metrics(s, y, seen)
    assert mo.seen_curve.tolist() == [0.5, 0.5, 0.0] and mo.seen_acc == 0.5


@pytest.mark.parametrize("seed,topk,closed", [(0, 1, False), (1, 1, True), (2, 2, True), (3, 1, True)])
def test_czsl_metrics_match_the_plain_loop(seed, topk, closed):
    rng = np.random.default_rng(seed)
    P, N = 12, 150
    seen = np.zeros(P, bool)
    seen[:5] = True
    closed_mask = np.ones(P, bool)
    if closed:
        closed_mask[-3:] = False
    labels = rng.choice(np.nonzero(closed_mask)[0], N)
    scores = rng.standard_normal((N, P)) * 0.5
    scores[np.arange(N), labels] += 0.8  # better than chance
    scores[:, seen] += 0.3  # seen bias, as real models have
    m = czsl_metrics(scores, labels, seen, closed_mask=closed_mask if closed else None, topk=topk)
    ref = reference_czsl(scores.tolist(), labels.tolist(), seen.tolist(), closed_mask.tolist(), topk=topk)
    assert len(ref["biases"]) > 20  # the bias list is thinned (len // 20 step)
    np.testing.assert_allclose(m.biases, ref["biases"], atol=1e-12)
    np.testing.assert_allclose(m.seen_curve, ref["seen"])
    np.testing.assert_allclose(m.unseen_curve, ref["unseen"])
    for k in ("best_seen", "best_unseen", "best_hm", "auc"):
        assert getattr(m, k) == pytest.approx(ref[k], abs=1e-12), k
    # torch input gives the same figures
    mt = czsl_metrics(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(seen),
                      closed_mask=torch.from_numpy(closed_mask) if closed else None, topk=topk)
    assert mt.auc == m.auc and mt.best_hm == m.best_hm


def test_czsl_state_and_object_accuracy():
    s = np.array([[0.9, 0.1, 0.0, 0.2], [0.1, 0.2, 0.3, 0.0]])
    ps, po = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    m = czsl_metrics(s, np.array([1, 3]), np.array([True, True, False, False]), pair_state=ps, pair_object=po)
    # predictions: pair 0 (state 0, obj 0) for a pair-1 image; pair 2 (state 1, obj 0) for a pair-3 image
    assert m.state_acc == 1.0 and m.object_acc == 0.0


def test_pair_branch_plan_pays_exactly_the_pair_score():
    # what the classify stage stores as alignments: sum over the plan of mass x fused similarity
    full, crops, p_attr, p_cls, role, s_attr, s_cls, o_attr, o_cls, ps, po = _world(7)
    r = compositional_scores(full, crops, p_attr, p_cls, s_attr, s_cls, o_attr, o_cls, ps, po,
                             pair_attr_role=role, local=True, theta=0.6)
    lz = r.pair_lazsl
    assert lz.plan.shape[:2] == r.scores.shape
    np.testing.assert_allclose((lz.plan * lz.fused).sum((-1, -2)), r.pair_scores, atol=1e-5)
    glob = compositional_scores(full, crops, p_attr, p_cls, s_attr, s_cls, o_attr, o_cls, ps, po, local=False)
    assert glob.pair_lazsl is None and glob.state_region_weight is None
