"""Query-stage math: pure functions on embedding arrays (no I/O, no SQL, no global state).

* :mod:`queries.transport`: batched entropic OT (``sinkhorn_batch``) with per-problem
  stopping, for many (image, class) pairs at once.
* :mod:`queries.baselines`: CLIP, CLIP-E, DCLIP, CuPL and WCA class scores.
* :mod:`queries.lazsl`: LaZSL (scores, plans, fused similarities, convergence).
* :mod:`queries.awt`: AWT (augmented views, entropy weights, views x texts transport).
* :mod:`queries.binding`: object-bound transport (LaZSL inside every candidate object; the
  class score is the best object's).
* :mod:`queries.shortlist`: class prototypes and top-k candidate shortlists.
* :mod:`queries.regions`: region geometry (crops, grids, patch cells, parts, AWT's views) from
  sizes and seeds.
* :mod:`queries.attribution`: attribution maps, score shares, pointing game.
* :mod:`queries.perturb`: deletion / insertion curves.

Every array function accepts numpy arrays or torch tensors and returns the same kind.
"""
from queries.awt import AwtResult, awt_scores
from queries.baselines import (
    WcaResult,
    class_text_from_templates,
    clip_scores,
    cupl_class_text,
    cupl_scores,
    dclip_scores,
    wca_class_text,
    wca_scores,
)
from queries.binding import BindingResult, object_bound_scores
from queries.lazsl import LazslResult, lazsl_scores
from queries.shortlist import class_prototypes, shortlist_candidates
from queries.transport import SinkhornResult, sinkhorn_batch

__all__ = [
    "AwtResult",
    "BindingResult",
    "LazslResult",
    "SinkhornResult",
    "WcaResult",
    "awt_scores",
    "class_prototypes",
    "class_text_from_templates",
    "clip_scores",
    "cupl_class_text",
    "cupl_scores",
    "dclip_scores",
    "lazsl_scores",
    "object_bound_scores",
    "shortlist_candidates",
    "sinkhorn_batch",
    "wca_class_text",
    "wca_scores",
]
