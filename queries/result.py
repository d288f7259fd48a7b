"""The one result shape of every class scorer in :mod:`queries` (as POT returns a plan plus a log).

Every scorer returns a :class:`ScoreResult`: ``scores`` always, the optional parts when the
method has them. Method-specific diagnostics (Sinkhorn iterations, WCA's per-draw winners,
AWT's weights) live on subclasses; code that stores results reads only these common fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ScoreResult"]


@dataclass
class ScoreResult:
    """Class scores and, when the method has them, how they were made.

    Shapes use ``B`` images, ``K`` scored classes per image (all classes, or a shortlist),
    ``M`` regions, ``N`` texts per class (padded).

    scores : (B, K)
        The class scores.
    global_scores, local_scores : (B, K) or None
        The score's parts (the full image's and the regions' share), where the method splits it.
    plan : (B, K, M, N) or None
        Transport plans, regions x the class's texts (padding 0).
    similarity : (B, K, M, N) or None
        What each unit of plan mass was paid for.
    text_index : (B, K, N) or (K, N) or None
        Row of the scored texts of each plan column; -1 padding (-2: AWT's class prompt).
    region : (B, K) or None
        Region (row of the regions) that carried the class, where one does (best-region,
        object-bound).
    """

    scores: Any
    global_scores: Any = None
    local_scores: Any = None
    plan: Any = None
    similarity: Any = None
    text_index: Any = None
    region: Any = None


class PlanAliases:
    """The names LaZSL's and object-bound's results had before the one shape (``fused``,
    ``attr_index``), kept readable for callers and notebooks that use them."""

    @property
    def fused(self):
        return self.similarity

    @property
    def attr_index(self):
        return self.text_index
