"""Configuration as data: typed frozen configs, named presets, and one resolution rule.

* :class:`RegionConfig`: how ``index-images`` cuts regions (stored with every index run).
* :class:`MethodOptions`: method settings as given (options, preset); each method's own typed
  config (its fields only, ``pipeline/stages/methods/``) is built from them and stored with its run.
* :class:`Preset`: a named JSON file in ``pipeline/presets/`` (the LaZSL per-dataset table,
  the demo's settings) holding region and method values; :func:`list_presets`,
  :func:`get_preset`.

Each field carries its help text and bounds (``field(metadata=...)``), so validation and the
command line's help come from one place. :func:`resolve_method_config` is the single rule for
what a run uses: explicit options, else ``--preset``, else the preset the store recorded when
its images were indexed, else the defaults, with a note for every value that came from the
store or that overrides it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError
from .settings import FrozenConfig, check_value, number_problem, range_text, setting  # noqa: F401 (re-exported)

PRESET_DIR = Path(__file__).parent / "presets"
DENSE_VARIANTS = ("plain", "maskclip", "clearclip", "sclip")  # pipeline.explain.dense


@dataclass(frozen=True)
class RegionConfig(FrozenConfig):
    """How regions are made; stored with every index run so boxes can be re-derived."""

    source: str = setting("crops", "Region kind: crops (LaZSL's random squares), grid (k×k tiles) or patches (ViT patch tokens).",
                     choices=("crops", "grid", "patches"), option="--regions")
    n_crops: int = setting(90, "Random square crops per image (crops).", lo=1, hi=1024)
    crop_min: float = setting(0.6, "Crop side ~ U(crop-min, crop-max)·min(H, W); LaZSL's α_crop.", lo=0.0, hi=0.9, lo_open=True)
    crop_max: float = setting(0.9, "Upper bound of the crop side (0.9 in WCA and LaZSL).", lo=0.0, hi=1.0, lo_open=True)
    crop_sides: str = setting("uniform", "How crop and part sides are drawn between their bounds: uniform (LaZSL's) or "
                                    "log-uniform (every scale equally often, so no object size is favoured).",
                              choices=("uniform", "log-uniform"))
    seed: int = setting(0, "Mixed with each image's content hash: same image, same boxes.", lo=0, hi=2**63 - 1)
    grid_scales: tuple[int, ...] = setting((2, 3), "grid: the k×k tilings to use.")
    n_parts: int = setting(0, "Smaller random square crops (kind 'part') per image, the parts of object-bound's candidate "
                         "objects; 0 = none (object-bound then uses the crops alone).", lo=0, hi=1024)
    part_min: float = setting(0.3, "Part side ~ U(part-min, part-max)·min(H, W).", lo=0.0, hi=1.0, lo_open=True)
    part_max: float = setting(0.5, "Upper bound of the part side.", lo=0.0, hi=1.0, lo_open=True)
    n_views: int = setting(0, "AWT's augmented views per image (kinds 'view'/'view-flip'): random resized crops, "
                         "stretched, mirrored with p = view_flip; AWT uses 50. 0 = none.", lo=0, hi=1024)
    view_scale: tuple[float, float] = setting((0.08, 1.0), "AWT views: area fraction range (torchvision's default).")
    view_ratio: tuple[float, float] = setting((3.0 / 4.0, 4.0 / 3.0), "AWT views: aspect ratio range (torchvision's default).")
    view_flip: float = setting(0.5, "AWT views: probability of a left-right flip.", lo=0.0, hi=1.0)
    dense: str = setting("plain", "patches: training-free dense variant of the patch tokens: plain (the tower as trained), "
                             "maskclip (value path), clearclip (q-q attention) or sclip (q-q + k-k attention); the "
                             "last three drop the block's residual and MLP (docs/explanations.md).",
                    choices=DENSE_VARIANTS)
    layers: tuple[int, ...] = setting((), "patches: ViT blocks to read (plain: their output tokens averaged, MSCI) or to "
                                     "modify (maskclip/clearclip/sclip: the token sets averaged); negative counts from "
                                     "the end, e.g. -1,-2. Empty = the last block.")

    def label(self) -> str:
        """A short name of the region set, e.g. ``crops 90``, ``patches sclip [-1,-2]``, ``grid 2,3``."""
        if self.source == "patches":
            out = f"patches {self.dense}" + (f" [{','.join(map(str, self.layers))}]" if self.layers else "")
        elif self.source == "grid":
            out = f"grid {','.join(map(str, self.grid_scales))}"
        else:
            out = f"crops {self.n_crops}"
        extras = [f"{n} {k}" for n, k in ((self.n_parts, "parts"), (self.n_views, "views")) if n]
        return " + ".join([out, *extras])

    def __post_init__(self):
        super().__post_init__()
        if self.crop_min > self.crop_max:
            raise InputError(f"--crop-min ({self.crop_min}) must not exceed the crop maximum ({self.crop_max}).")
        if self.part_min > self.part_max:
            raise InputError(f"--part-min ({self.part_min}) must not exceed --part-max ({self.part_max}).")
        if not self.grid_scales or not all(isinstance(k, int) and 1 <= k <= 32 for k in self.grid_scales):
            raise InputError("grid scales must be integers in [1, 32].")
        for name, lo, hi in (("view_scale", 0.0, 1.0), ("view_ratio", 0.0, None)):
            v = tuple(getattr(self, name))
            if len(v) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) and x > lo for x in v) \
                    or v[0] > v[1] or (hi is not None and v[1] > hi):
                raise InputError(f"{name} must be two increasing numbers > {lo}" + (f" and <= {hi}" if hi else "")
                                 + f" (got {list(v)}).")
        if not all(isinstance(k, int) and not isinstance(k, bool) and -64 <= k < 64 for k in self.layers) \
                or len(set(self.layers)) != len(self.layers) or len(self.layers) > 8:
            raise InputError(f"--layers must be up to 8 distinct block indices in [-64, 63] (got {list(self.layers)}).")
        if self.source != "patches" and (self.dense != "plain" or self.layers):
            raise InputError("--dense and --layers shape patch tokens; use them with --regions patches.")
        if self.source == "patches" and (self.n_parts or self.n_views):
            raise InputError("--n-parts and --n-views add crops to --regions crops or grid; patch tokens come from "
                             "one forward pass and take no extra regions.")

    def dense_specs(self) -> list[dict]:
        """Token sets of :func:`pipeline.explain.dense.dense_feature_sets` for patch regions; their
        normalised mean is the region embedding (``plain`` + no layers = open_clip's own tokens)."""
        if self.dense == "plain":
            return [{"variant": "layers", "layers": list(self.layers)}] if self.layers else [{"variant": "plain", "block": -1}]
        return [{"variant": self.dense, "block": b} for b in (self.layers or (-1,))]

    def geometry(self) -> dict:
        """Keyword arguments of :func:`queries.regions.region_boxes`."""
        return dict(source=self.source, n_crops=self.n_crops, crop_min=self.crop_min, crop_max=self.crop_max,
                    crop_sides=self.crop_sides, seed=self.seed, grid_scales=self.grid_scales, n_parts=self.n_parts,
                    part_min=self.part_min,
                    part_max=self.part_max, n_views=self.n_views, view_scale=tuple(self.view_scale),
                    view_ratio=tuple(self.view_ratio), view_flip=self.view_flip)


@dataclass(frozen=True)
class Preset:
    """A named set of region and method values (a JSON file in ``pipeline/presets/``)."""

    name: str
    description: str
    source: str
    model: str | None
    regions: dict
    method: dict
    note: str | None = None

    def region_config(self, base: RegionConfig | None = None) -> RegionConfig:
        return replace(base or RegionConfig(), **self.regions)

    def method_values(self) -> dict:
        return dict(self.method)


@lru_cache(maxsize=None)
def _load_presets() -> dict[str, Preset]:
    presets = {}
    for p in sorted(PRESET_DIR.glob("*.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        preset = Preset(name=d["name"], description=d["description"], source=d["source"], model=d.get("model"),
                        regions=d.get("regions", {}), method=d.get("method", {}), note=d.get("note"))
        RegionConfig().updated(**preset.regions)  # a shipped preset with a bad value fails loudly here
        presets[preset.name] = preset
    return presets


def preset_model_note(preset: str | None, model_name: str) -> str | None:
    """A note when a preset was made for another model than the one in use (``cub-b32`` is
    LaZSL's CUB table for ViT-B-32: its crops and θ were tuned for that encoder)."""
    if not preset:
        return None
    made_for = get_preset(preset).model
    if made_for and made_for != model_name:
        return (f"preset {preset} was made for {made_for}, but this store's model is {model_name}; its values "
                f"are used as given (pick a preset for {model_name}, or pass the values you want)")
    return None


def list_presets() -> list[Preset]:
    return list(_load_presets().values())


def preset_names() -> list[str]:
    return list(_load_presets())


def get_preset(name: str) -> Preset:
    presets = _load_presets()
    if name not in presets:
        raise InputError(f"Unknown preset {name!r}; `pipeline presets` lists them ({', '.join(presets)}).")
    return presets[name]


# ---- resolution -------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A resolved config, where each value came from, and notes to show the user."""

    config: Any
    preset: str | None
    origins: dict  # field -> "option" | "preset <name>" | "store (preset <name>)" | "default"
    notes: tuple[str, ...] = ()


def recorded_preset(index_runs: Iterable[dict]) -> str | None:
    """The preset the store's images were indexed with (the latest index run that named one)."""
    names = [p.get("preset") for p in index_runs if p.get("preset")]
    return names[-1] if names else None


def resolve_region_config(options: dict, preset: str | None = None) -> Resolved:
    """Region settings: explicit options > ``preset`` > defaults."""
    given = {k: v for k, v in options.items() if v is not None}
    from_preset = dict(get_preset(preset).regions) if preset else {}
    config = RegionConfig().updated(**{**from_preset, **given})
    origins = {f.name: ("option" if f.name in given else f"preset {preset}" if f.name in from_preset else "default")
               for f in fields(RegionConfig)}
    overridden = {k: v for k, v in given.items() if k in from_preset and from_preset[k] != v}
    notes = ()
    if preset and overridden:
        notes = (f"{', '.join(f'{k}={v}' for k, v in overridden.items())} overrides preset {preset}",)
    return Resolved(config, preset, origins, notes)
