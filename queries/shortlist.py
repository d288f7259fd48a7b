"""Candidate shortlists: the k classes whose prototype is closest to each image.

LaZSL's optimal transport is the expensive part of a query; running it only on a
shortlist of k classes (by cosine to a class prototype) and leaving every other class
unscored is what makes 1,000-class queries cheap. Because the OT of each (image, class)
pair stops on its own (:mod:`queries.transport`), a shortlisted class gets exactly the
score it would get in a run over all classes.
"""
from __future__ import annotations

import numpy as np
import torch

from queries._arrays import any_torch, as_float, as_index, class_counts, l2_normalize, out, pick_device, segment_mean

__all__ = ["Shortlist", "class_prototypes", "shortlist_candidates"]

_RESCORE_MARGIN = 16  # extra Faiss hits re-scored in float64 (see shortlist_candidates)

try:  # faiss-cpu is a project dependency, but the numpy path gives the same answer.
    import faiss as _faiss
except ImportError:  # pragma: no cover - exercised only without faiss installed
    _faiss = None


def class_prototypes(attr, attr_class, n_classes: int):
    """Normalised mean of each class's attribute embeddings: (A, D), (A,) -> (C, D).

    Raises ValueError if a class in ``[0, n_classes)`` has no attribute.
    """
    as_torch = any_torch(attr, attr_class)
    dev = pick_device(attr, attr_class)
    t = as_float(attr, dev, torch.float32)
    cls = as_index(attr_class, dev)
    counts = class_counts(cls, n_classes, "attributes")
    return out(l2_normalize(segment_mean(t.T, cls, counts).T), as_torch)


class Shortlist:
    """A reusable shortlister over fixed prototypes: the Faiss index is built once, then
    :meth:`__call__` answers batch after batch (same results as :func:`shortlist_candidates`)."""

    def __init__(self, prototypes, *, use_faiss: bool | None = None):
        p = np.ascontiguousarray(as_float(prototypes, torch.device("cpu"), torch.float32).numpy())
        if p.ndim != 2:
            raise ValueError(f"expected prototypes (C, D); got {p.shape}")
        self.prototypes = p
        self.prototypes64 = p.astype(np.float64)
        self.use_faiss = _faiss is not None if use_faiss is None else use_faiss
        if self.use_faiss and _faiss is None:
            raise ImportError("faiss is not installed; use use_faiss=False")
        self.index = None
        if self.use_faiss:
            self.index = _faiss.IndexFlatIP(p.shape[1])
            self.index.add(p)

    def __call__(self, image, k: int):
        as_torch = any_torch(image)
        dev = pick_device(image)
        x = np.ascontiguousarray(as_float(image, torch.device("cpu"), torch.float32).numpy())
        if x.ndim != 2 or x.shape[1] != self.prototypes.shape[1]:
            raise ValueError(f"expected image (B, D) and prototypes (C, D); got {x.shape}, {self.prototypes.shape}")
        C = self.prototypes.shape[0]
        kk = C if (k <= 0 or k >= C) else int(k)
        x64 = x.astype(np.float64)
        if self.index is not None and kk < C:
            _, cand = self.index.search(x, min(C, kk + _RESCORE_MARGIN))
            sims = np.einsum("bd,bkd->bk", x64, self.prototypes64[cand])
        else:
            cand = np.broadcast_to(np.arange(C), (x.shape[0], C))
            sims = x64 @ self.prototypes64.T
        order = np.lexsort((cand, -sims), axis=1)[:, :kk]  # by -score, then class index
        idx = np.take_along_axis(cand, order, 1).astype(np.int64)
        return torch.as_tensor(idx, device=dev) if as_torch else idx


def shortlist_candidates(image, prototypes, k: int, *, use_faiss: bool | None = None):
    """Indices of the ``k`` classes with the highest prototype cosine, best first.

    Parameters
    ----------
    image : (B, D)
        L2-normalised image embeddings (the full images).
    prototypes : (C, D)
        L2-normalised class prototypes (:func:`class_prototypes`).
    k : int
        Shortlist size; ``k <= 0`` or ``k >= C`` returns all C classes, sorted.
    use_faiss : bool, optional
        Search with a Faiss ``IndexFlatIP`` (default when faiss is importable and k < C) or
        with a numpy matrix product. Both return the same indices: the final order is by the
        float64 cosine, ties towards the lower class index. (Faiss's float32 scores are
        only used to fetch ``k + 16`` candidates, which are then re-scored in float64, so
        float32 rounding differences between BLAS and Faiss cannot reorder near-ties.)

    Returns
    -------
    (B, k) int64 class indices (numpy, or torch on the image's device for torch input).
    """
    return Shortlist(prototypes, use_faiss=use_faiss)(image, k)
