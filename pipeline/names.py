"""Class names: one cleaning rule and one identity rule, used by every stage and reader."""
from __future__ import annotations

import re


def clean_class_name(name: str) -> str:
    """DCLIP's wordify ('_' -> space) plus whitespace collapsing; case is kept for display."""
    return re.sub(r"\s+", " ", str(name).replace("_", " ")).strip()


def norm_class_name(name: str) -> str:
    """The identity of a class: names equal after this normalisation are the same class.

    The SQL view ``class_confusions`` applies the same rule to image labels.
    """
    return clean_class_name(name).lower()
