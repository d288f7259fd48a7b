"""Query-stage math: pure functions on embedding arrays (no I/O, no global state).

* :mod:`queries.transport`: batched entropic OT (``sinkhorn_batch``) with per-problem
  stopping, for many (image, class) pairs at once.
* :mod:`queries.scoring`: CLIP, DCLIP, CuPL, WCA and LaZSL class scores.
* :mod:`queries.shortlist`: class prototypes and top-k candidate shortlists.

Every function accepts numpy arrays or torch tensors and returns the same kind.
"""
from queries.scoring import (
    LAZSL_PRESETS,
    LazslResult,
    WcaResult,
    class_text_from_templates,
    clip_scores,
    cupl_class_text,
    cupl_scores,
    dclip_scores,
    lazsl_scores,
    wca_class_text,
    wca_scores,
)
from queries.shortlist import class_prototypes, shortlist_candidates
from queries.transport import SinkhornResult, sinkhorn_batch

__all__ = [
    "LAZSL_PRESETS",
    "LazslResult",
    "SinkhornResult",
    "WcaResult",
    "class_prototypes",
    "class_text_from_templates",
    "clip_scores",
    "cupl_class_text",
    "cupl_scores",
    "dclip_scores",
    "lazsl_scores",
    "shortlist_candidates",
    "sinkhorn_batch",
    "wca_class_text",
    "wca_scores",
]
