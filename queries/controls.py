"""Region controls for binding methods (issue 23): what crops alone give, without transport.

Both scores build on DCLIP's per-text mean of cosines, ``s(x, c) = mean_{n in c} cos(x, d_n)``
(:func:`queries.baselines.dclip_scores`), applied to every crop region ``r`` instead of the
full image:

* :func:`best_region_scores`: ``max_r s(r, c)``, the class's best single region. If a binding
  method beats LaZSL only by letting one region carry a class, this control does too.
* :func:`crop_dclip_scores`: ``mean_r s(r, c)``, the plain mean over crops of the DCLIP score
  (LaZSL with uniform plans and θ = 1, so no transport and no crop filter).

Because the inputs are L2-normalised, ``s(x, c) = x · mean_{n in c} d_n``: one matrix product
with the classes' mean descriptor (not re-normalised: that would be CuPL's cosine, another
score). numpy in, numpy out; no torch.
"""
from __future__ import annotations

import numpy as np

from queries.result import ScoreResult

__all__ = ["best_region_scores", "class_mean_texts", "crop_dclip_scores", "region_text_scores"]


def class_mean_texts(attr, attr_class, n_classes: int) -> np.ndarray:
    """Each class's mean text embedding (C, D), not re-normalised. Every class needs a text."""
    attr = np.asarray(attr, np.float32)
    cls = np.asarray(attr_class)
    if attr.ndim != 2 or cls.shape != (attr.shape[0],):
        raise ValueError(f"attr must be (A, D) with attr_class (A,), got {attr.shape} and {cls.shape}")
    if not np.issubdtype(cls.dtype, np.integer):
        raise TypeError(f"attr_class must hold integers, got dtype {cls.dtype}")
    counts = np.bincount(cls, minlength=n_classes)
    if len(counts) > n_classes or (counts[:n_classes] == 0).any():
        raise ValueError(f"every class in [0, {n_classes}) needs at least one text (counts {counts.tolist()})")
    sums = np.zeros((n_classes, attr.shape[1]), np.float64)
    np.add.at(sums, cls, attr)
    return (sums / counts[:, None]).astype(np.float32)


def region_text_scores(regions, attr, attr_class, n_classes: int) -> np.ndarray:
    """DCLIP's score of every region: (B, R, D) regions -> (B, R, C) ``mean_{n in c} cos(r, d_n)``."""
    regions = np.asarray(regions, np.float32)
    if regions.ndim != 3:
        raise ValueError(f"regions must be (B, R, D), got shape {regions.shape}")
    if regions.shape[1] == 0:
        raise ValueError("no region to score: pass at least one crop region per image")
    mean = class_mean_texts(attr, attr_class, n_classes)
    if mean.shape[1] != regions.shape[2]:
        raise ValueError(f"embedding widths differ: regions {regions.shape[2]}, texts {mean.shape[1]}")
    return regions @ mean.T


def best_region_scores(regions, attr, attr_class, n_classes: int) -> ScoreResult:
    """``scores[b, c] = max_r mean_{n in c} cos(r_br, d_n)``; ``region`` (B, C) is the argmax."""
    per_region = region_text_scores(regions, attr, attr_class, n_classes)
    best = per_region.argmax(axis=1)
    return ScoreResult(scores=np.take_along_axis(per_region, best[:, None, :], 1)[:, 0, :], region=best)


def crop_dclip_scores(regions, attr, attr_class, n_classes: int) -> ScoreResult:
    """``scores[b, c] = mean_r mean_{n in c} cos(r_br, d_n)``: DCLIP averaged over the crops."""
    return ScoreResult(scores=region_text_scores(regions, attr, attr_class, n_classes).mean(axis=1))
