"""Method settings as given (options, a preset) and the one rule that resolves them.

:class:`MethodOptions` checks each value against the field of that name in the registered
methods' configs (:func:`~.registry.option_fields`); :func:`resolve_method_config` says what a
run uses: options > ``--preset`` > the preset the store recorded at index-images > defaults.
Presets themselves are data in :mod:`pipeline.config`.
"""
from __future__ import annotations

from ...config import Resolved, get_preset
from ...errors import InputError
from ...settings import check_value
from .registry import option_fields


class MethodOptions:
    """Method settings as given (options, a preset), for one or more methods: each value is
    checked against the field of that name in the registered methods' configs; each method
    then takes its own fields (:func:`pipeline.stages.methods.registry.Method.make_config`), the
    defaults filling the rest. Attribute access reads a given value, else the field's default."""

    __slots__ = ("_values",)

    def __init__(self, **values):
        known = option_fields()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"Unknown method setting(s): {', '.join(unknown)}; known: {', '.join(known)}.")
        for name, value in values.items():
            check_value(name, value, known[name].metadata)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        known = option_fields()
        if name in known:
            return known[name].default
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("MethodOptions is frozen; use .updated()")

    def __getstate__(self):
        return self._values

    def __setstate__(self, state):
        object.__setattr__(self, "_values", dict(state))

    def __eq__(self, other) -> bool:
        return isinstance(other, MethodOptions) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"MethodOptions({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def to_dict(self) -> dict:
        """The given values only."""
        return dict(self._values)

    def updated(self, **overrides) -> "MethodOptions":
        """A copy with the non-None overrides applied (and validated)."""
        return MethodOptions(**{**self._values, **{k: v for k, v in overrides.items() if v is not None}})


MethodConfig = MethodOptions  # the name callers used when one flat record held every method's settings


def resolve_method_config(options: dict, preset: str | None = None, store_preset: str | None = None,
                          settings: set[str] | None = None) -> Resolved:
    """What a run uses: explicit ``options`` (None = not given) > ``preset`` > the store's
    recorded preset > the defaults. Notes say which values came from the store and which
    options override the store's preset (``settings``: only these, the chosen methods' own)."""
    given = {k: v for k, v in options.items() if v is not None}
    chosen = preset or store_preset
    from_preset = get_preset(chosen).method_values() if chosen else {}
    where = f"preset {chosen}" if preset else f"store (preset {chosen}, recorded by index-images)"
    values = {**from_preset, **given}
    config = MethodOptions(**values)
    origins = {name: ("option" if name in given else where if name in from_preset else "default")
               for name in option_fields()}
    notes = []
    if chosen and not preset:
        used = {k: v for k, v in from_preset.items() if k not in given and (settings is None or k in settings)}
        if used:
            notes.append(f"using {', '.join(f'{k}={v}' for k, v in used.items())} from the store's preset {chosen} "
                         f"(recorded by index-images; pass --{next(iter(used)).replace('_', '-')} to override)")
    overridden = {k: v for k, v in given.items() if k in from_preset and from_preset[k] != v
                  and (settings is None or k in settings)}
    if chosen and overridden:
        notes.append(f"{', '.join(f'{k}={v}' for k, v in overridden.items())} overrides preset {chosen}'s "
                     f"{', '.join(f'{k}={from_preset[k]}' for k in overridden)}")
    return Resolved(config, chosen, origins, tuple(notes))
