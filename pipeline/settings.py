"""Typed frozen configs: a field with its help, bounds and option name (:func:`setting`), the
one validator (:func:`check_value`) and the shared behaviour of every config (:class:`FrozenConfig`).

:mod:`pipeline.config` (regions, presets, resolution) and each method's config in
:mod:`pipeline.stages.methods` are built from these.
"""
from __future__ import annotations

import math
from dataclasses import asdict, field, fields, replace

from .errors import InputError


def setting(default, help: str, lo=None, hi=None, lo_open: bool = False, choices: tuple | None = None,
            option: str | None = None, cli: bool = True):
    """A config field with its help, bounds and command-line name (``cli``: whether it is an option)."""
    return field(default=default, metadata=dict(help=help, lo=lo, hi=hi, lo_open=lo_open, choices=choices, option=option,
                                                 cli=cli))


def range_text(lo=None, hi=None, lo_open: bool = False) -> str:
    """``>= 1 and <= 1024``: the bounds of a number, as every error and help text says them."""
    low = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    high = "" if hi is None else f"<= {hi}"
    return " and ".join(t for t in (low, high) if t)


def number_problem(value, lo=None, hi=None, lo_open: bool = False) -> str | None:
    """What is wrong with a number (``must be >= 1 and <= 1024 (got 0)``), or None: the one
    number validator of configs and command-line options."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number (got {value!r})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number (got {value})"
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        return f"must be {range_text(lo, hi, lo_open)} (got {value})"
    return None


def check_value(name: str, value, meta: dict, option: str | None = None):
    """Validate one value against a field's metadata; return it (ints stay ints)."""
    opt = option or meta.get("option") or "--" + name.replace("_", "-")
    choices, lo, hi, lo_open = meta.get("choices"), meta.get("lo"), meta.get("hi"), meta.get("lo_open")
    if choices is not None:
        if value not in choices:
            raise InputError(f"{opt} must be one of {', '.join(map(str, choices))} (got {value!r}).")
        return value
    if isinstance(value, (str, tuple)) or (lo is None and hi is None and not isinstance(value, float)):
        return value  # free text (a template file) or a tuple checked by its config
    problem = number_problem(value, lo, hi, lo_open)
    if problem is not None:
        raise InputError(f"{opt} {problem}.")
    return value


class FrozenConfig:
    """Shared behaviour of the frozen configs: validation, dict round trip, overrides."""

    def __post_init__(self):
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), f.metadata)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InputError(f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}; known: {', '.join(known)}.")
        return cls(**{k: tuple(v) if isinstance(known[k].default, tuple) else v for k, v in d.items()})

    def updated(self, **overrides):
        """A copy with the non-None overrides applied (and validated)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def field_meta(cls, name: str) -> dict:
        return next(f.metadata for f in fields(cls) if f.name == name)
