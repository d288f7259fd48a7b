"""Configuration as data: typed frozen configs, named presets, and one resolution rule.

* :class:`RegionConfig`: how ``index-images`` cuts regions (stored with every index run).
* :class:`MethodConfig`: every knob of ``classify`` (stored with every run).
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
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError

PRESET_DIR = Path(__file__).parent / "presets"
DENSE_VARIANTS = ("plain", "maskclip", "clearclip", "sclip")  # pipeline.explain.dense


def _f(default, help: str, lo=None, hi=None, lo_open: bool = False, choices: tuple | None = None, option: str | None = None):
    """A config field with its help, bounds and command-line name."""
    return field(default=default, metadata=dict(help=help, lo=lo, hi=hi, lo_open=lo_open, choices=choices, option=option))


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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{opt} must be a number (got {value!r}).")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{opt} must be a finite number (got {value}).")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise InputError(f"{opt} must be {bound}" + (f" and <= {hi}" if hi is not None else "") + f" (got {value}).")
    if hi is not None and value > hi:
        raise InputError(f"{opt} must be <= {hi} (got {value}).")
    return value


class _Config:
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


@dataclass(frozen=True)
class RegionConfig(_Config):
    """How regions are made; stored with every index run so boxes can be re-derived."""

    source: str = _f("crops", "Region kind: crops (LaZSL's random squares), grid (k×k tiles) or patches (ViT patch tokens).",
                     choices=("crops", "grid", "patches"), option="--regions")
    n_crops: int = _f(90, "Random square crops per image (crops).", lo=1, hi=1024)
    crop_min: float = _f(0.6, "Crop side ~ U(crop-min, crop-max)·min(H, W); LaZSL's α_crop.", lo=0.0, hi=0.9, lo_open=True)
    crop_max: float = _f(0.9, "Upper bound of the crop side (0.9 in WCA and LaZSL).", lo=0.0, hi=1.0, lo_open=True)
    crop_sides: str = _f("uniform", "How crop and part sides are drawn between their bounds: uniform (LaZSL's) or "
                                    "log-uniform (every scale equally often, so no object size is favoured).",
                         choices=("uniform", "log-uniform"))
    seed: int = _f(0, "Mixed with each image's content hash: same image, same boxes.", lo=0, hi=2**63 - 1)
    grid_scales: tuple[int, ...] = _f((2, 3), "grid: the k×k tilings to use.")
    n_parts: int = _f(0, "Smaller random square crops (kind 'part') per image, the parts of object-bound's candidate "
                         "objects; 0 = none (object-bound then uses the crops alone).", lo=0, hi=1024)
    part_min: float = _f(0.3, "Part side ~ U(part-min, part-max)·min(H, W).", lo=0.0, hi=1.0, lo_open=True)
    part_max: float = _f(0.5, "Upper bound of the part side.", lo=0.0, hi=1.0, lo_open=True)
    n_views: int = _f(0, "AWT's augmented views per image (kinds 'view'/'view-flip'): random resized crops, "
                         "stretched, mirrored with p = view_flip; AWT uses 50. 0 = none.", lo=0, hi=1024)
    view_scale: tuple[float, float] = _f((0.08, 1.0), "AWT views: area fraction range (torchvision's default).")
    view_ratio: tuple[float, float] = _f((3.0 / 4.0, 4.0 / 3.0), "AWT views: aspect ratio range (torchvision's default).")
    view_flip: float = _f(0.5, "AWT views: probability of a left-right flip.", lo=0.0, hi=1.0)
    dense: str = _f("plain", "patches: training-free dense variant of the patch tokens: plain (the tower as trained), "
                             "maskclip (value path), clearclip (q-q attention) or sclip (q-q + k-k attention); the "
                             "last three drop the block's residual and MLP (docs/explanations.md).",
                    choices=DENSE_VARIANTS)
    layers: tuple[int, ...] = _f((), "patches: ViT blocks to read (plain: their output tokens averaged, MSCI) or to "
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
class MethodConfig(_Config):
    """Every knob of the query stage; all of it lands in ``runs.params``."""

    top_k: int = _f(50, "Candidate classes: the Faiss shortlist of lazsl and object-bound, the classes stored "
                        "per image for the others (0 = all classes).", lo=0, hi=10**9)
    theta: float = _f(0.8, "LaZSL and object-bound θ: weight of the local (crop) similarity in the fused score.",
                      lo=0.0, hi=1.0)
    eps: float = _f(0.1, "Entropic regularisation ε of the Sinkhorn plans (lazsl, awt, object-bound).", lo=1e-3, hi=100.0)
    gamma: float = _f(0.0, "LaZSL crop filter: keep crops with cos(crop, full) >= mean + γ (object-bound: parts "
                           "against their object).", lo=-2.0, hi=2.0)
    max_iter: int = _f(100, "Sinkhorn iterations at most (per image-class pair).", lo=1, hi=100_000)
    tol: float = _f(1e-2, "Sinkhorn stopping tolerance on mean |r - r_prev|.", lo=0.0, hi=1e3, lo_open=True)
    wca_score: str = _f("code", "WCA scoring: code (the released code's) or paper (the paper's formula).",
                        choices=("code", "paper"))
    wca_patch_n: int = _f(60, "WCA: crops drawn (with replacement) per run.", lo=1, hi=100_000)
    wca_runs: int = _f(20, "WCA: independent crop draws, averaged.", lo=1, hi=1000)
    wca_image_scale: float = _f(math.exp(4.0), "WCA: crop-weight softmax scale (e^4).", lo=0.0, hi=1e4, lo_open=True)
    wca_text_scale: float = _f(math.exp(2.0), "WCA: sentence-weight softmax scale (e^2).", lo=0.0, hi=1e4, lo_open=True)
    seed: int = _f(0, "Seed of the method's own randomness (WCA's crop draws, WaffleCLIP's random descriptors).",
                   lo=0, hi=2**63 - 1)
    templates: str = _f("openai", "clip-e templates: openai (80), simple (7), or a text file with one {} template a line.")
    alignments_top: int = _f(0, "Store OT plans for the top-N ranked classes only (0 = every candidate).", lo=0, hi=10**9)
    contain: float = _f(0.9, "object-bound: a region is a part of an object when this share of its area lies inside "
                             "the object's box.", lo=0.0, hi=1.0, lo_open=True)
    min_parts: int = _f(2, "object-bound: parts a region needs to be a candidate object.", lo=1, hi=100_000)
    awt_texts: str = _f("descriptors+prompt", "awt: its texts per class: the descriptors plus 'a photo of a {c}.' (AWT's "
                        "code), or the descriptors alone.", choices=("descriptors+prompt", "descriptors"))
    awt_view_temperature: float = _f(0.5, "awt: view weights softmax(-entropy / τ) (AWT's 0.5).", lo=0.0, hi=1e4,
                                     lo_open=True)
    awt_text_temperature: float = _f(0.5, "awt: text weights softmax(-entropy / τ) (AWT's 0.5).", lo=0.0, hi=1e4,
                                     lo_open=True)
    awt_logit_scale: float = _f(0.0, "awt: logit scale of its entropies (0 = the model's logit_scale.exp(), CLIP's "
                                     "100).", lo=0.0, hi=1e4)
    waffle_count: int = _f(15, "waffle: random-word and random-character descriptor pairs per class (15 -> 30 "
                               "prompts).", lo=1, hi=1000)
    waffle_seeds: int = _f(1, "waffle: seeds to run (seed, seed+1, ...), one run each; evaluate reports acc1 mean ± "
                              "std over them.", lo=1, hi=100)
    waffle_template: str = _f("dclip", "waffle: prompt form: dclip ('{c}, which has {random}', as the store's "
                              "descriptors) or paper ('A photo of a {c}, which has {random}.').",
                              choices=("dclip", "paper"))
    nameless: str = _f("photo", "dclip-nameless: photo = each descriptor alone plus one 'a photo of a {c}.' per class "
                       "(arXiv 2412.11917); none = the descriptors alone, no class name anywhere.",
                       choices=("photo", "none"))
    control_parts: bool = _f(False, "best-region, crop-dclip: score the part crops (index-images --n-parts) as well "
                               "as the crops.")
    # compositional (state, object) pairs: the czsl-* methods (pipeline/stages/compositional.py)
    pair_weight: float = _f(1.0, "czsl-*: MSCI weight w_p of the pair branch, score = w_p·t·pair + (w_s·P_state)·(w_o·P_object).",
                            lo=0.0, hi=1000.0)
    state_weight: float = _f(1.0, "czsl-*: MSCI weight w_s of the state branch's probability (0 leaves the factor out, as MSCI).",
                             lo=0.0, hi=1000.0)
    object_weight: float = _f(1.0, "czsl-*: MSCI weight w_o of the object branch's probability (0 leaves the factor out).",
                              lo=0.0, hi=1000.0)
    logit_scale: float = _f(0.0, "czsl-*: CLIP's logit scale t in the combination (0 = the model's own exp(logit_scale)).",
                            lo=0.0, hi=1000.0)
    open_world: bool = _f(False, "czsl-*: score every stored pair, the open-world-only ones too (else the closed world).")
    feasibility_threshold: float = _f(-1.0, "czsl-* open world: leave out pairs whose name prompt is less similar than this "
                                      "to both its state's and its object's (-1 keeps every pair; seen pairs are always kept).",
                                      lo=-1.0, hi=1.0)


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
        MethodConfig().updated(**preset.method)
        presets[preset.name] = preset
    return presets


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


def resolve_method_config(options: dict, preset: str | None = None, store_preset: str | None = None) -> Resolved:
    """What a run uses: explicit ``options`` (None = not given) > ``preset`` > the store's
    recorded preset > the defaults. Notes say which values came from the store and which
    options override the store's preset."""
    given = {k: v for k, v in options.items() if v is not None}
    chosen = preset or store_preset
    from_preset = get_preset(chosen).method_values() if chosen else {}
    where = f"preset {chosen}" if preset else f"store (preset {chosen}, recorded by index-images)"
    values = {**from_preset, **given}
    config = MethodConfig().updated(**values)
    origins = {f.name: ("option" if f.name in given else where if f.name in from_preset else "default")
               for f in fields(MethodConfig)}
    notes = []
    if chosen and not preset:
        used = {k: v for k, v in from_preset.items() if k not in given}
        if used:
            notes.append(f"using {', '.join(f'{k}={v}' for k, v in used.items())} from the store's preset {chosen} "
                         f"(recorded by index-images; pass --{next(iter(used)).replace('_', '-')} to override)")
    overridden = {k: v for k, v in given.items() if k in from_preset and from_preset[k] != v}
    if chosen and overridden:
        notes.append(f"{', '.join(f'{k}={v}' for k, v in overridden.items())} overrides preset {chosen}'s "
                     f"{', '.join(f'{k}={from_preset[k]}' for k in overridden)}")
    return Resolved(config, chosen, origins, tuple(notes))


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
