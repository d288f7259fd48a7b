"""Contrastive reasons of an OT run: "why A and not B", written by classify.

For every image, the prediction A (rank 1) is contrasted with the runner-up (rank 2) and, when
the image is labelled and wrong, with the true class. Each class's per-attribute contribution
``c(a) = Σ_r T[r,a]·F[r,a]`` is read back from the stored ``alignments`` (the run's own plan;
``score = Σ_a c(a)`` for LaZSL and object-bound), the descriptors' text is ``attributes.text``
(never the rendered prompt, which carries the class name) and their embeddings pair
descriptors that are worded differently; :func:`queries.contrast.contrast_terms` does the math.

Why classify writes them (same transaction, right after scoring) rather than explain on
demand: the ``contrasts`` SQL view then answers for every image of a run, ``report`` and
``explain`` only read, a read-only store still has them, and they can never disagree with the
plan they were computed from (one transaction). Cost: one grouped read of the run's
alignments and a small assignment per image; the demo's 240 images take well under a second.

What has no contrast: a class with no stored plan rows — the true class outside the
shortlist (``--top-k``) or outside ``--alignments-top`` (``--alignments-top 1`` also drops the
runner-up); ``explain`` and ``report`` say so. AWT is not contrasted: its score is not a sum
of the stored plan entries (the class prompt's column is not stored).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from queries.contrast import ContrastResult, contrast_terms
from stores import tables
from stores.catalog import Catalog

from ..names import norm_class_name

MIN_SIMILARITY = 0.5  # cosine at which two differently worded descriptors are paired


@dataclass
class Contrast:
    """One (image, A, B): ``result.gap = score_A − score_B`` split into terms."""

    image_id: int
    class_id: int
    other_class_id: int
    runner_up: bool
    true_class: bool
    attr_ids: np.ndarray  # A's attributes (result's index_a)
    other_attr_ids: np.ndarray  # B's attributes (result's index_b)
    result: ContrastResult


def compute_contrasts(cat: Catalog, run_id: int, image_ids=None, *, min_similarity: float = MIN_SIMILARITY) -> list[Contrast]:
    """Rank 1 vs rank 2, and rank 1 vs the label's class where it differs, for each image."""
    by_norm = tables.class_ids_by_norm(cat)
    wanted = []  # (image_id, A, B, runner_up, true_class)
    for image_id, label, ranked, _ in tables.top_two_with_labels(cat, run_id, image_ids):
        a = ranked[0]
        true = by_norm.get(norm_class_name(label)) if label else None
        if len(ranked) > 1:
            wanted.append((image_id, a, ranked[1], True, true == ranked[1]))
        if true is not None and true != a and (len(ranked) < 2 or true != ranked[1]):
            wanted.append((image_id, a, true, False, True))
    if not wanted:
        return []
    pairs = {(w[0], c) for w in wanted for c in w[1:3]}
    contrib: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
    for image_id, class_id, attr_id, c, _mass in tables.class_contributions(
            cat, run_id, [p[0] for p in pairs], [p[1] for p in pairs]):
        ids, vals = contrib.setdefault((image_id, class_id), ([], []))
        ids.append(attr_id)
        vals.append(c)
    attrs = tables.attribute_text_embeddings(cat, {a for ids, _ in contrib.values() for a in ids}, cat.model)
    out = []
    for image_id, a, b, runner_up, true_class in wanted:
        if (image_id, a) not in contrib or (image_id, b) not in contrib:
            continue  # no plan rows stored for one of them (shortlist, --alignments-top)
        (ids_a, ca), (ids_b, cb) = contrib[(image_id, a)], contrib[(image_id, b)]
        ea, eb = _embeddings(attrs, ids_a), _embeddings(attrs, ids_b)
        res = contrast_terms(ca, cb, [attrs[i][0] for i in ids_a], [attrs[i][0] for i in ids_b],
                             emb_a=ea, emb_b=eb, min_similarity=min_similarity)
        out.append(Contrast(int(image_id), int(a), int(b), runner_up, true_class,
                            np.asarray(ids_a, np.int64), np.asarray(ids_b, np.int64), res))
    return out


def _embeddings(attrs: dict, ids: list[int]) -> np.ndarray | None:
    embs = [attrs[i][1] for i in ids]
    return None if any(e is None for e in embs) else np.stack(embs)


def contrast_columns(run_id: int, contrasts: list[Contrast]) -> dict:
    """The ``contrast_terms`` columns: one row per attribute row of each contrast, plus one
    class-prompt row (attr_id and other_attr_id NULL, reason_rank NULL)."""
    cols: dict[str, list] = {k: [] for k in ("image_id", "class_id", "other_class_id", "runner_up", "true_class",
                                             "attr_id", "other_attr_id", "shared", "term", "reason_rank", "gap")}

    def add(c: Contrast, attr_id, other_attr_id, shared, term, rank):
        for k, v in (("image_id", c.image_id), ("class_id", c.class_id), ("other_class_id", c.other_class_id),
                     ("runner_up", c.runner_up), ("true_class", c.true_class), ("attr_id", attr_id),
                     ("other_attr_id", other_attr_id), ("shared", shared), ("term", term), ("reason_rank", rank),
                     ("gap", c.result.gap)):
            cols[k].append(v)

    for c in contrasts:
        add(c, None, None, False, c.result.prompt_term, None)
        for r in c.result.rows:
            add(c, None if r.index_a is None else int(c.attr_ids[r.index_a]),
                None if r.index_b is None else int(c.other_attr_ids[r.index_b]), r.shared, r.term, r.reason_rank)
    n = len(cols["image_id"])
    return {"run_id": pa.array([run_id] * n, pa.int64()),
            **{k: pa.array(cols[k], pa.int64()) for k in ("image_id", "class_id", "other_class_id", "attr_id", "other_attr_id")},
            **{k: pa.array(cols[k], pa.bool_()) for k in ("runner_up", "true_class", "shared")},
            "term": pa.array(cols["term"], pa.float64()), "reason_rank": pa.array(cols["reason_rank"], pa.int32()),
            "gap": pa.array(cols["gap"], pa.float64())}


IMAGES_PER_CHUNK = 20_000  # contrasts are computed and written this many images at a time (bounded memory)


def store_contrasts(cat: Catalog, run_id: int, image_ids=None) -> int:
    """Compute and insert the run's contrast terms (the caller holds the transaction), in chunks
    of :data:`IMAGES_PER_CHUNK` images. Rows written."""
    ids = sorted({int(i) for i in (image_ids if image_ids is not None else tables.run_image_ids(cat, run_id))})
    written = 0
    for start in range(0, len(ids), IMAGES_PER_CHUNK):
        contrasts = compute_contrasts(cat, run_id, ids[start : start + IMAGES_PER_CHUNK])
        if contrasts:
            written += tables.insert_contrast_terms(cat, contrast_columns(run_id, contrasts))
    return written
