"""The method registry: one :class:`Method` record per classification method.

A record says everything the rest of the pipeline needs to know about a method, so no other
module branches on a method's name: the texts it scores against, the region kinds it reads,
whether it scores only a Faiss shortlist, which result tables it writes, whether it needs the
text encoder, its typed frozen config, and its scorer. ``classify``, ``evaluate``, ``explain``,
contrasts, the Ray engine and the command line read these records.

Adding a method is one module that calls :func:`register` (and, for a built-in, one import
line in ``pipeline/methods/__init__.py``). Importing this module is cheap: scorers import
their math (torch) when called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from stores import tables

from stores.errors import StoreError

from ..errors import InputError

CROP_KINDS = ("crop", "grid", "patch")  # LaZSL's and WCA's regions
PART_KINDS = CROP_KINDS + ("part",)  # object-bound's candidate objects and their parts
VIEW_KINDS = ("view", "view-flip")  # AWT's augmented views
PLAN_BUDGET = 1 << 23  # plan entries per scoring call (images are split to stay under it)


@dataclass
class MethodTexts:
    """The texts one method scores against, and how to describe them in ``runs.params``."""

    attrs: tables.TextMatrix  # the scored texts (attributes or class prompts)
    kind: str  # descriptors | sentences | class prompts <set>[+<set>]
    photo: tables.TextMatrix | None = None  # WCA, AWT: the "a photo of a {c}." prompts
    extra: dict = field(default_factory=dict)  # what else describes the texts (waffle's descriptors)

    def describe(self) -> dict:
        return {"kind": self.kind, "n_texts": len(self.attrs), "text_ids": "class_prompts" if self.kind.startswith(
            "class prompts") else "attributes", **({"photo": len(self.photo)} if self.photo is not None else {}),
                **self.extra}


@dataclass(frozen=True)
class Method:
    """One classification method.

    ``texts(cat, config, model, name)`` returns the :class:`MethodTexts` it scores against
    (class prompts are encoded on demand). ``scorer(ctx, batch, rows)`` scores one
    :class:`stores.tables.RegionBatch` with a :class:`pipeline.stages.classify.ScoreContext`
    and adds its rows to a :class:`stores.results.ResultRows`; it is called shard by shard by
    the local engine and inside Ray actors, so it must not touch the store.
    """

    name: str
    help: str
    texts: Callable[..., MethodTexts] | None
    scorer: Callable[..., None] | None
    config: type  # the method's frozen config class (pipeline.config)
    region_kinds: tuple[str, ...] = ()  # region kinds read besides the full view; () = the full view only
    region_hint: str = ""  # what to index when those regions are missing
    shortlisted: bool = False  # scores only the Faiss shortlist (top_k) of the classes
    writes_alignments: bool = False  # stores transport plans on attributes
    writes_contrasts: bool = False  # its score is Σ mass·similarity of its alignments: contrastive reasons
    writes_object_bindings: bool = False
    needs_text_encoder: bool = False  # class prompts may have to be encoded
    # values computed once per run and recorded in runs.params (AWT's logit scale): (config, model) -> dict
    prepare: Callable[[Any, Any], dict] | None = None
    # one run per returned (config, provenance extra), e.g. WaffleCLIP's seeds: (config) -> list
    runs: Callable[[Any], list] | None = None
    # a method with a stage of its own (the czsl-* pairs): (cat, name, config, **kw) -> ClassifyReport
    stage: Callable[..., Any] | None = None
    # explain: the weight θ of the local part of the score, read from the run's config (None: no split)
    theta_field: str | None = None

    def region_columns(self, batch: tables.RegionBatch, with_full: bool = False,
                       kinds: tuple[str, ...] | None = None) -> np.ndarray:
        """The batch's columns of this method's region kinds (or ``kinds``; row 0, the full view,
        first when ``with_full``); one line naming what to index when there are none."""
        cols = batch.columns(kinds or self.region_kinds)
        if len(cols) == 0:
            have = ", ".join(sorted(set(batch.kinds[0].tolist()))) if batch.kinds is not None else "no"
            raise StoreError(f"--method {self.name} needs {self.region_hint or 'regions besides the full view'}; "
                             f"the indexed images have only {have} regions.")
        return np.concatenate([[0], cols]) if with_full else cols


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add a method (``replace``: overwrite one of the same name, e.g. in a test)."""
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.scorer is None and method.stage is None:
        raise ValueError(f"method {method.name!r} needs a scorer or a stage of its own")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method, or one line naming the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"Unknown method {name!r}; use one of {', '.join(_REGISTRY)}.") from None


def find_method(name: str) -> Method | None:
    """The registered method, or None (a run of a method this build does not know)."""
    return _REGISTRY.get(name)


def chunks(n: int, per_image: int) -> list[slice]:
    """Slices of ``n`` images whose plans stay under :data:`PLAN_BUDGET` entries."""
    step = max(1, PLAN_BUDGET // max(1, per_image))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


@dataclass
class ScoreContext:
    """Everything a method needs to score region batches, and nothing from the store: the texts
    (and their classes), the shortlist size, the config and the run id the rows carry. Picklable
    (the shortlist's Faiss index is rebuilt where it is used), so a Ray actor can hold one."""

    method: str
    run_id: int
    texts: MethodTexts
    classes: np.ndarray  # column order of every score matrix
    cls_index: np.ndarray  # each text's position in ``classes``
    k: int
    config: Any
    extra: dict = field(default_factory=dict)  # what the method's ``prepare`` computed (awt: its logit scale)
    _shortlist: Any = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> Method:
        return get_method(self.method)

    @property
    def shortlist(self):
        """Shortlisted methods shortlist by the normalised mean of the very texts they score."""
        if self.spec.shortlisted and self._shortlist is None:
            from queries.shortlist import Shortlist, class_prototypes

            self._shortlist = Shortlist(class_prototypes(self.texts.attrs.embeddings, self.cls_index, len(self.classes)))
        return self._shortlist

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("method", "run_id", "texts", "classes", "cls_index", "k", "config", "extra")}

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreContext":
        return cls(**d)

    def add_top_k(self, rows, image_ids, scores, global_scores=None, local_scores=None) -> None:
        """Store each image's ``k`` best classes of a full (B, C) score matrix (optional parts alike)."""
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        pick = lambda x: None if x is None else np.take_along_axis(np.asarray(x), order, 1)  # noqa: E731
        rows.predictions(self.run_id, image_ids, self.classes[order], pick(scores), pick(global_scores),
                         pick(local_scores))
