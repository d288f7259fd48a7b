"""queries.mutual_knowledge: the paper's MI score and deletion curve against plain loops
(transcribed from the definition), and the vision side on planted token grids."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from queries.mutual_knowledge import (
    cluster_parts,
    concept_deletion_curve,
    concept_mutual_information,
    describe_parts,
    foreground_mask,
    language_concepts,
    mutual_knowledge,
    part_boxes,
    sinkhorn_knopp,
    vision_concepts,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def mi_loop(X, Y):
    """get_intersection, one cell at a time."""
    N, M = len(X), len(Y)
    table = [[1.0 if x == y else 0.0 for y in Y] for x in X]
    total = sum(sum(r) for r in table)
    if total == 0:
        return 0.0
    h = 0.0
    for r in table:
        for v in r:
            p = v / total
            h -= p * math.log(p + 1e-9)
    return math.log(N) + math.log(M) + h


@pytest.mark.parametrize("seed", range(6))
def test_mi_matches_the_loop_including_duplicates(seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 12, rng.integers(1, 9)).tolist()  # may hold duplicates
    Y = rng.choice(12, rng.integers(1, 7), replace=False).tolist()
    assert concept_mutual_information(X, Y) == pytest.approx(mi_loop(X, Y), abs=1e-12)


def test_mi_grows_with_the_number_of_shared_concepts():
    # k distinct shared concepts: log N + log M + log k (up to eps)
    for k in range(1, 5):
        X, Y = list(range(6)), list(range(6 - k, 6 + 3))
        assert concept_mutual_information(X, Y) == pytest.approx(math.log(6) + math.log(len(Y)) + math.log(k), abs=1e-7)


def test_deletion_curve_matches_the_loop_and_falls():
    X = [7, 3, 9, 1, 4]  # most relevant first
    Y = [1, 3, 8]
    curve = concept_deletion_curve(X, Y)
    ref = [mi_loop(X, Y)]
    x = list(X)
    for i in range(len(x)):
        x[i] = -100
        ref.append(mi_loop(x, Y))
    np.testing.assert_allclose(curve, ref, atol=1e-12)
    assert len(curve) == len(X) + 1
    assert curve[0] > curve[-1] == 0.0
    assert (np.diff(curve) <= 1e-12).all()  # deleting never adds mutual knowledge
    assert curve[1] == curve[0] and curve[2] < curve[1]  # 7 is not shared, 3 is


def test_foreground_finds_a_planted_object_and_drops_a_small_speck():
    rng = np.random.default_rng(0)
    h = w = 8
    t = rng.standard_normal((h * w, 16)) * 0.05
    obj = np.zeros((h, w), bool)
    obj[2:5, 3:7] = True
    speck = np.zeros((h, w), bool)
    speck[7, 0] = True
    t[obj.ravel()] += 2.0 * np.eye(16)[0]
    t[speck.ravel()] += 2.0 * np.eye(16)[0]
    fg = foreground_mask(t, (h, w))
    assert fg.reshape(h, w).tolist() == obj.tolist()  # the speck is not connected: left out


def test_cluster_parts_recovers_planted_parts_with_both_methods():
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((3, 16)))
    truth = rng.integers(0, 3, 40)
    t = centres[truth] + 0.1 * rng.standard_normal((40, 16))
    mask = np.ones(40, bool)
    mask[::7] = False
    for method in ("ward", "kmeans"):
        lab = cluster_parts(t, n_parts=3, mask=mask, method=method)
        assert (lab[~mask] == -1).all()
        # same partition as the truth (up to renaming), and labels numbered by first appearance
        pairs = set(zip(lab[mask].tolist(), truth[mask].tolist()))
        assert len(pairs) == 3
        first = [int(v) for v in dict.fromkeys(lab[mask].tolist())]
        assert first == [0, 1, 2]


def test_part_boxes_cover_each_parts_cells():
    lab = -np.ones((4, 4), int)
    lab[0, 1] = lab[1, 1] = 0
    lab[2:4, 2:4] = 1
    boxes = part_boxes(lab.ravel(), (4, 4), (64, 64))
    np.testing.assert_allclose(boxes, [[16, 0, 32, 32], [32, 32, 64, 64]])


def test_describe_parts_plain_and_with_sinkhorn_match_loops():
    rng = np.random.default_rng(2)
    bank = unit(rng.standard_normal((30, 8)))
    parts = unit(bank[[3, 4]] + 0.3 * rng.standard_normal((2, 8)))
    plain = describe_parts(parts, bank, topk=3)
    for k in range(2):
        sims = [(float(parts[k] @ bank[a]), -a) for a in range(30)]
        assert plain[k] == [-a for _, a in sorted(sims, reverse=True)[:3]]
    ot = describe_parts(parts, bank, topk=2, use_ot=True, ot_pool=12)
    # loop: the entries in both parts' top 12, sinkhorn on 2.5 * cosine, top 2 per part
    tops = [sorted(range(30), key=lambda a: -float(parts[k] @ bank[a]))[:12] for k in range(2)]
    common = [a for a in tops[0] if a in tops[1]]
    P = np.exp(2.5 * np.array([[float(parts[k] @ bank[a]) for a in common] for k in range(2)]))
    for _ in range(1000):
        P = P / P.sum(1, keepdims=True)
        P = P / P.sum(0, keepdims=True)
    want = [[common[j] for j in np.argsort(-P[k], kind="stable")[:2]] for k in range(2)]
    assert ot == want
    np.testing.assert_allclose(sinkhorn_knopp(2.5 * np.array([[float(parts[k] @ bank[a]) for a in common] for k in range(2)])), P)


def test_vision_and_language_concepts_order():
    bank = unit(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], float))
    vis, rel = vision_concepts([[2, 0], [0, 3]], np.array([1.0, 0.2, 0.0]), bank)
    assert vis.tolist() == [0, 3, 2]  # deduplicated, by relevance to the image
    np.testing.assert_allclose(rel, 2.5 * bank[[0, 3, 2]] @ unit(np.array([1.0, 0.2, 0.0])))
    assert language_concepts(torch.tensor([0.0, 1.0, 0.1]), bank, topk=2).tolist() == [1, 3]


def test_mutual_knowledge_on_a_planted_image():
    # bank: 0-3 "bird" concepts, 4-7 "clutter" concepts; two parts show concepts 1 and 5
    rng = np.random.default_rng(4)
    bank = unit(np.eye(8) + 0.05 * rng.standard_normal((8, 8)))
    parts = unit(bank[[1, 5]] + 0.05 * rng.standard_normal((2, 8)))
    image = unit(bank[1] * 1.0 + bank[5] * 0.6)
    class_text = unit(bank[0] + bank[1] + bank[2])
    mk = mutual_knowledge(parts, image, class_text, bank, part_topk=1, language_topk=3)
    assert mk.vision.tolist() == [1, 5] and sorted(mk.language.tolist()) == [0, 1, 2]
    assert mk.shared.tolist() == [1]
    assert mk.mi == pytest.approx(math.log(2) + math.log(3), abs=1e-7)
    np.testing.assert_allclose(mk.deletion, [mk.mi, 0.0, 0.0], atol=1e-12)
    assert mk.deletion_auc == pytest.approx(mk.mi / 3)
    wrong = mutual_knowledge(parts, image, unit(bank[6] + bank[7] + bank[3]), bank, part_topk=1, language_topk=3)
    assert wrong.mi == 0.0 and wrong.shared.size == 0
