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

Every array function accepts numpy arrays or torch tensors and returns the same kind. The
names below are imported from their submodule on first use: importing this package loads no
torch.
"""
import importlib

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that
#: ``import queries.regions`` does not load torch through this package's __init__
_EXPORTS = {
    "AwtResult": "awt", "awt_scores": "awt",
    "WcaResult": "baselines", "class_text_from_templates": "baselines", "clip_scores": "baselines",
    "cupl_class_text": "baselines", "cupl_scores": "baselines", "dclip_scores": "baselines",
    "wca_class_text": "baselines", "wca_scores": "baselines",
    "BindingResult": "binding", "object_bound_scores": "binding",
    "LazslResult": "lazsl", "lazsl_scores": "lazsl",
    "class_prototypes": "shortlist", "shortlist_candidates": "shortlist",
    "SinkhornResult": "transport", "sinkhorn_batch": "transport",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"queries.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'queries' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
