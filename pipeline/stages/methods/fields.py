"""The settings methods share, one definition each (help, bounds, default), and the config
bases built from them. A method's config is a frozen dataclass of :mod:`pipeline.config`'s
``FrozenConfig`` (the one validator) holding only the fields that method reads; a field several
methods read (``theta``, ``eps``, ``seed``) is defined once here, so the command line has one
option for it with one meaning.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import FrozenConfig, setting


def top_k():
    return setting(50, "Candidate classes: the Faiss shortlist of lazsl and object-bound, the classes stored per image "
                  "for the others (0 = all classes).", lo=0, hi=10**9)


def theta():
    return setting(0.8, "LaZSL and object-bound θ: weight of the local (crop) similarity in the fused score.", lo=0.0,
              hi=1.0)


def eps():
    return setting(0.1, "Entropic regularisation ε of the Sinkhorn plans (lazsl, awt, object-bound).", lo=1e-3, hi=100.0)


def gamma():
    return setting(0.0, "LaZSL crop filter: keep crops with cos(crop, full) >= mean + γ (object-bound: parts against "
                   "their object).", lo=-2.0, hi=2.0)


def max_iter():
    return setting(100, "Sinkhorn iterations at most (per image-class pair).", lo=1, hi=100_000)


def tol():
    return setting(1e-2, "Sinkhorn stopping tolerance on mean |r - r_prev|.", lo=0.0, hi=1e3, lo_open=True)


def seed():
    return setting(0, "Seed of the method's own randomness (WCA's crop draws, WaffleCLIP's random descriptors).", lo=0,
              hi=2**63 - 1)


def alignments_top():
    return setting(0, "Store OT plans for the top-N ranked classes only (0 = every candidate).", lo=0, hi=10**9)


@dataclass(frozen=True)
class RankedConfig(FrozenConfig):
    """What every method reads: how many classes it stores (or shortlists) per image."""

    top_k: int = top_k()


@dataclass(frozen=True)
class SinkhornConfig(RankedConfig):
    """Entropic transport's settings, and how many classes' plans are stored."""

    eps: float = eps()
    max_iter: int = max_iter()
    tol: float = tol()
    alignments_top: int = alignments_top()


@dataclass(frozen=True)
class LocalConfig(SinkhornConfig):
    """LaZSL's fused score: θ and the crop filter γ."""

    theta: float = theta()
    gamma: float = gamma()
