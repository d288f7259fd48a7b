"""Mutual knowledge between an image's vision concepts and a class's language concepts.

After Sammani & Deligiannis, "Interpreting and Analysing CLIP's Zero-Shot Image Classification via
Mutual Knowledge", NeurIPS 2024 (code: ``fawazsammani/clip-interpret-mutual-knowledge``,
``utils.py``). Pure functions on arrays (numpy or torch in; numpy / python out, since the
concept sets are small index lists):

* **vision side**: the image's parts, found without labels in its patch tokens
  (:func:`foreground_mask`: the first principal component thresholded, largest connected
  components; :func:`cluster_parts`: agglomerative (Ward) or k-means clustering of the foreground
  tokens), each part described by the top-k entries of an attribute bank that holds no class
  names (:func:`describe_parts`), pooled and ordered by relevance to the whole image
  (:func:`vision_concepts`);
* **language side**: the bank entries nearest the predicted class's text embedding
  (:func:`language_concepts`);
* their overlap, the **mutual-information score** of the two sets
  (:func:`concept_mutual_information`), and the **concept-deletion curve**
  (:func:`concept_deletion_curve`: delete vision concepts in order of relevance, re-score;
  its mean is the paper's "AUC");
* :func:`mutual_knowledge` puts them together for one image.

The part embeddings are the caller's: upstream encodes the image once per part with an
ellipse drawn around it (plain, grey outside, blurred outside; the three embeddings averaged);
a stage may instead encode the part's box crop or average the part's patch tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "MutualKnowledge",
    "cluster_parts",
    "concept_deletion_curve",
    "concept_mutual_information",
    "describe_parts",
    "foreground_mask",
    "language_concepts",
    "mutual_knowledge",
    "part_boxes",
    "sinkhorn_knopp",
    "vision_concepts",
]


def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- vision side


def foreground_mask(tokens, grid: tuple[int, int], *, threshold: float = 0.5, second_min: int = 5) -> np.ndarray:
    """Foreground patches of one image from its patch tokens ``(L, D)``, ``L = h * w``.

    As upstream (``get_pca_features``, ``get_foreground_background_indices``): project the
    centred tokens on their first principal component; flip its sign when more than half (but
    not all) of the patches are positive, so the foreground is the smaller side; min-max scale to
    [0, 1]; keep patches ``>= threshold``; keep the largest 4-connected component, plus the second
    largest when it has ``>= second_min`` patches. (Upstream fits the PCA over a batch of images;
    here one image, so the result does not depend on what else is in the batch.)

    >>> import numpy as np
    >>> t = np.zeros((16, 2)); t[:, 0] = 1; t[[5, 6, 9, 10], 1] = 3    # a 2x2 blob in a 4x4 grid
    >>> np.nonzero(foreground_mask(t, (4, 4)))[0].tolist()
    [5, 6, 9, 10]
    """
    # heavy: imported on use
    from scipy import linalg, ndimage

    x = _np(tokens)
    h, w = grid
    if x.shape[0] != h * w:
        raise ValueError(f"{x.shape[0]} tokens do not fill a {h}x{w} grid")
    xc = x - x.mean(0, keepdims=True)
    # LAPACK gesvd: numpy's gesdd on small matrices can take 100x longer on a machine whose other
    # cores are busy (OpenBLAS threads spin); the component's sign is settled just below
    _, _, vt = linalg.svd(xc, full_matrices=False, lapack_driver="gesvd")
    pc = xc @ vt[0]
    if 0.5 < np.mean(pc > 0) < 1.0:
        pc = -pc
    lo, hi = pc.min(), pc.max()
    scaled = (pc - lo) / (hi - lo) if hi > lo else np.zeros_like(pc)
    fg = (scaled >= threshold).reshape(h, w)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones(h * w, bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")
    keep = labels == order[0] + 1
    if n > 1 and sizes[order[1]] >= second_min:
        keep |= labels == order[1] + 1
    return keep.ravel()


def cluster_parts(tokens, *, n_parts: int = 4, mask=None, method: str = "ward", seed: int = 0) -> np.ndarray:
    """Part label of every patch (``-1`` outside ``mask``), from its L2-normalised token.

    ``method="ward"``: agglomerative clustering, Ward linkage, cut at ``n_parts`` clusters
    (``scipy.cluster.hierarchy``; deterministic). ``method="kmeans"``: k-means
    (``scipy.cluster.vq.kmeans2``, k-means++ init from ``seed``; upstream uses k-means on the
    normalised foreground tokens). Labels are renumbered 0..K-1 in order of first appearance
    (row-major), so they do not depend on the library's numbering.

    >>> import numpy as np
    >>> t = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])
    >>> cluster_parts(t, n_parts=2).tolist()
    [0, 0, 1, 1]
    """
    x = _unit(_np(tokens))
    m = np.ones(len(x), bool) if mask is None else _np(mask, bool)
    idx = np.nonzero(m)[0]
    labels = np.full(len(x), -1, dtype=np.int64)
    if len(idx) == 0:
        return labels
    k = min(n_parts, len(idx))
    if k == 1:
        raw = np.zeros(len(idx), dtype=np.int64)
    elif method == "ward":
        # heavy: imported on use
        from scipy.cluster.hierarchy import fcluster, linkage

        raw = fcluster(linkage(x[idx], method="ward"), t=k, criterion="maxclust")
    elif method == "kmeans":
        # heavy: imported on use
        from scipy.cluster.vq import kmeans2

        _, raw = kmeans2(x[idx], k, minit="++", seed=np.random.default_rng(seed), iter=50)
    else:
        raise ValueError(f"method must be 'ward' or 'kmeans', not {method!r}")
    remap: dict[int, int] = {}
    for j, r in zip(idx, raw):
        labels[j] = remap.setdefault(int(r), len(remap))
    return labels


def part_boxes(labels, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Pixel box ``(x0, y0, x1, y1)`` around each part's patch cells; ``size = (width, height)``
    of the (square, centre-cropped) model input or image the grid covers."""
    lab = _np(labels, np.int64).reshape(grid)
    h, w = grid
    sx, sy = size[0] / w, size[1] / h
    boxes = []
    for k in range(int(lab.max()) + 1 if lab.size and lab.max() >= 0 else 0):
        ys, xs = np.nonzero(lab == k)
        boxes.append((xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def sinkhorn_knopp(logits, *, lam: float = 1.0, n_iter: int = 1000) -> np.ndarray:
    """Upstream's ``sinkhorn_knopp``: ``P = exp(lam * logits)``, then ``n_iter`` times normalise
    the rows, then the columns (no marginals other than uniform 1s)."""
    p = np.exp(lam * _np(logits))
    for _ in range(n_iter):
        p = p / p.sum(1, keepdims=True)
        p = p / p.sum(0, keepdims=True)
    return p


def describe_parts(part_emb, bank, *, topk: int = 3, use_ot: bool = False, ot_pool: int = 100,
                   ot_scale: float = 2.5, lam: float = 1.0) -> list[list[int]]:
    """The bank entries describing each part: ``topk`` indices per part, duplicates removed.

    ``use_ot=False``: the top-k cosines ``cos(part_k, bank_a)``. ``use_ot=True`` (upstream's
    default): restrict to the entries in *every* part's top ``ot_pool``, scale the cosines by
    ``ot_scale`` (2.5), run :func:`sinkhorn_knopp` so the parts spread over distinct entries,
    and take each part's top-k of the plan (upstream ``get_corresponding_textual_concepts``).
    """
    pe, b = _unit(_np(part_emb)), _unit(_np(bank))
    logits = pe @ b.T
    if not use_ot or len(pe) < 2:
        order = np.argsort(-logits, axis=1, kind="stable")[:, :topk]
        return [list(dict.fromkeys(int(a) for a in row)) for row in order]
    pool = min(ot_pool, b.shape[0])
    tops = np.argsort(-logits, axis=1, kind="stable")[:, :pool]
    common = set(tops[0].tolist())
    for row in tops[1:]:
        common &= set(row.tolist())
    common = sorted(common, key=lambda a: list(tops[0]).index(a))  # upstream keeps a set's order; ours is part 0's rank
    if not common:
        return [[] for _ in range(len(pe))]
    plan = sinkhorn_knopp(logits[:, common] * ot_scale, lam=lam)
    order = np.argsort(-plan, axis=1, kind="stable")[:, :topk]
    return [list(dict.fromkeys(int(common[j]) for j in row)) for row in order]


def vision_concepts(part_concepts: list[list[int]], image_emb, bank, *, scale: float = 2.5):
    """All parts' concepts, deduplicated and sorted by relevance to the whole image.

    Relevance = ``scale * cos(image, bank_a)`` (upstream ``get_relevance_score``; the scale does
    not change the order). Returns (indices (U,), relevance (U,)), most relevant first.
    """
    flat = list(dict.fromkeys(a for row in part_concepts for a in row))
    if not flat:
        return np.zeros(0, np.int64), np.zeros(0)
    rel = scale * (_unit(_np(bank))[flat] @ _unit(_np(image_emb)))
    order = np.argsort(-rel, kind="stable")
    return np.asarray(flat, np.int64)[order], rel[order]


# --------------------------------------------------------------------------- language side


def language_concepts(class_text, bank, *, topk: int = 10) -> np.ndarray:
    """The ``topk`` bank entries nearest the class's text embedding (cosine), nearest first
    (upstream ``weight_dissection[class_id].topk(topk_w)``)."""
    sims = _unit(_np(bank)) @ _unit(_np(class_text))
    return np.argsort(-sims, kind="stable")[:topk].astype(np.int64)


# --------------------------------------------------------------------------- the score


def concept_mutual_information(vision, language, *, eps: float = 1e-9) -> float:
    """The paper's mutual-information score of two concept lists (upstream ``get_intersection``).

    With N = len(vision), M = len(language), the match table ``C[i, j] = [vision_i == language_j]``
    normalised to sum 1 (``p = C / sum C``):

    ``MI = log N + log M + H``,  ``H = -sum_ij p_ij log(p_ij + eps)``

    and 0 when nothing matches (upstream's 0/0 -> nan -> 0). For k distinct shared concepts
    ``p = 1/k`` on k cells, so ``MI = log N + log M + log k``: more shared concepts, more mutual
    knowledge. (Upstream adds H; ``eps = 1e-9`` as upstream.)

    >>> round(concept_mutual_information([1, 2, 3], [3, 4]), 4)      # log 3 + log 2 + log 1
    1.7918
    >>> concept_mutual_information([1, 2], [3, 4])
    0.0
    """
    x, y = list(_np(vision, np.int64)), list(_np(language, np.int64))
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return 0.0
    c = (np.asarray(x)[:, None] == np.asarray(y)[None, :]).astype(np.float64)
    total = c.sum()
    if total == 0:
        return 0.0
    p = c / total
    h = -float(np.sum(p * np.log(p + eps)))
    return float(np.log(n) + np.log(m) + h)


def concept_deletion_curve(vision, language, *, eps: float = 1e-9) -> np.ndarray:
    """MI after deleting the first 0, 1, ..., N vision concepts (``vision`` most relevant first).

    A deleted concept is replaced by a value that matches nothing, so N stays fixed (upstream
    ``get_deletion_score``). Returns N + 1 values; their mean is the paper's "AUC"
    (``get_statistics``).

    >>> concept_deletion_curve([3, 1, 2], [3, 4]).round(4).tolist()
    [1.7918, 0.0, 0.0, 0.0]
    """
    x = list(_np(vision, np.int64))
    sentinel = min(min(x, default=0), int(np.min(_np(language, np.int64), initial=0))) - 1
    curve = [concept_mutual_information(x, language, eps=eps)]
    for i in range(len(x)):
        x[i] = sentinel
        curve.append(concept_mutual_information(x, language, eps=eps))
    return np.asarray(curve)


@dataclass
class MutualKnowledge:
    """One image's mutual-knowledge explanation of a predicted class.

    Attributes
    ----------
    vision : (U,) int64         vision concepts (bank indices), most relevant to the image first
    relevance : (U,)            their relevance (``2.5 * cos(image, concept)``)
    part_concepts : list        per part, its concepts (bank indices)
    language : (K,) int64       the class's language concepts, nearest first
    shared : (S,) int64         vision concepts that are also language concepts, in vision order
    mi : float                  :func:`concept_mutual_information`
    deletion : (U+1,)           :func:`concept_deletion_curve`
    deletion_auc : float        its mean
    labels : (L,) int64         part label of each patch (-1 = background), when computed here
    """

    vision: np.ndarray
    relevance: np.ndarray
    part_concepts: list
    language: np.ndarray
    shared: np.ndarray
    mi: float
    deletion: np.ndarray
    deletion_auc: float
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def mutual_knowledge(part_emb, image_emb, class_text, bank, *, part_topk: int = 3, language_topk: int = 10,
                     use_ot: bool = False, labels=None) -> MutualKnowledge:
    """Vision concepts of the parts, language concepts of the class, and their mutual knowledge.

    ``part_emb (K, D)``: one embedding per part (see the module docstring); ``image_emb (D,)``;
    ``class_text (D,)`` the predicted class's text embedding; ``bank (A, D)`` the attribute bank
    without class names. Upstream defaults: 3 concepts per part, OT on.

    >>> import numpy as np
    >>> bank = np.eye(4)
    >>> mk = mutual_knowledge(np.eye(4)[:2], np.array([1, .5, 0, 0]), np.array([.9, 0, .1, 0]), bank,
    ...                       part_topk=1, language_topk=2)
    >>> mk.vision.tolist(), mk.language.tolist(), mk.shared.tolist(), round(mk.mi, 4)
    ([0, 1], [0, 2], [0], 1.3863)
    >>> mk.deletion.round(4).tolist()
    [1.3863, 0.0, 0.0]
    """
    parts = describe_parts(part_emb, bank, topk=part_topk, use_ot=use_ot)
    vis, rel = vision_concepts(parts, image_emb, bank)
    lang = language_concepts(class_text, bank, topk=language_topk)
    shared = np.asarray([a for a in vis if a in set(lang.tolist())], np.int64)
    curve = concept_deletion_curve(vis, lang)
    return MutualKnowledge(vision=vis, relevance=rel, part_concepts=parts, language=lang, shared=shared,
                           mi=concept_mutual_information(vis, lang), deletion=curve,
                           deletion_auc=float(curve.mean()),
                           labels=np.zeros(0, np.int64) if labels is None else _np(labels, np.int64))
