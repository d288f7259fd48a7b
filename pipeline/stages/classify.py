"""Stage 3: score indexed images with a method; write runs, predictions and alignments.

The math lives in ``queries/`` (pure functions on arrays); this module reads region and text
embeddings from the store (:mod:`stores.tables`), calls the math, and writes what it returns.
No image is decoded here: changing θ or ε re-runs only this stage.

Which texts a method scores against (:func:`method_texts`):

* ``clip``: the class prompt ``"a photo of a {c}."`` (template set ``clip``);
* ``clip-e``: the template ensemble (template set ``ensemble-<name>``);
* ``dclip``, ``lazsl``: the descriptors (CuPL sentences in a store that has no descriptors);
* ``cupl``, ``wca``: the CuPL sentences (descriptors in a store that has none); WCA also the
  ``clip`` prompt, which weights its sentences.

Class prompts are encoded on first use and kept apart from the user's attributes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from queries import baselines, lazsl
from queries.shortlist import Shortlist, class_prototypes
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..config import MethodConfig
from ..errors import InputError
from ..inputs import read_text_bounded
from ..names import check_text
from .attributes import add_class_prompts, encode_class_prompts
from .compositional import CZSL_METHODS

METHODS = ("clip", "clip-e", "dclip", "cupl", "wca", "lazsl")
NEEDS_TEXT_ENCODER = ("clip", "clip-e", "wca")  # class prompts may have to be encoded
CLIP_TEMPLATE = "a photo of a {}."
# (state, object) pairs, scored by pipeline/stages/compositional.py; the model gives the logit scale
METHODS = METHODS + CZSL_METHODS
NEEDS_TEXT_ENCODER = NEEDS_TEXT_ENCODER + CZSL_METHODS


@dataclass
class ClassifyReport:
    run_id: int
    method: str
    images: int = 0
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class MethodTexts:
    """The texts one method scores against, and how to describe them in ``runs.params``."""

    attrs: tables.TextMatrix  # the scored texts (attributes or class prompts)
    kind: str  # descriptors | sentences | class prompts <set>
    photo: tables.TextMatrix | None = None  # WCA: the "a photo of a {c}." prompts

    def describe(self) -> dict:
        return {"kind": self.kind, "n_texts": len(self.attrs), "text_ids": "class_prompts" if self.kind.startswith(
            "class prompts") else "attributes"}


# ---- which texts --------------------------------------------------------------------------
def load_templates(spec: str) -> list[str]:
    """'openai' -> open_clip's 80 ImageNet templates; 'simple' -> its 7; else a file, one per line with {}."""
    import open_clip

    if spec in ("openai", "simple"):
        meta = open_clip.zero_shot_metadata
        fns = meta.OPENAI_IMAGENET_TEMPLATES if spec == "openai" else meta.SIMPLE_IMAGENET_TEMPLATES
        return [f("{}") for f in fns]
    p = Path(spec)
    if not p.is_file():
        raise InputError(f"--templates {spec!r}: use openai, simple, or a text file with one template per line containing {{}}.")
    lines = []
    for n, ln in enumerate(read_text_bounded(p, what="--templates").splitlines(), 1):
        if ln.strip():
            lines.append(check_text(ln.strip(), f"{p}: line {n}", "template"))
    if not lines or not all("{}" in ln or "{c}" in ln for ln in lines):
        raise InputError(f"{p}: every template line needs a {{}} (or {{c}}) where the class name goes.")
    return [ln.replace("{c}", "{}") for ln in lines]


def template_set_name(method: str, config: MethodConfig) -> str:
    return "clip" if method in ("clip", "wca") else f"ensemble-{Path(config.templates).name}"


def _class_prompts(cat: Catalog, model, templates: list[str], template_set: str, method: str) -> tables.TextMatrix:
    fp = cat.model
    have = tables.class_prompt_matrix(cat, fp, template_set)
    n_classes = tables.class_count(cat)
    if len(have) < n_classes * len(templates):
        if model is None:
            raise StoreError(f"--method {method} needs the text encoder to write class prompts; "
                             f"pass --model/--pretrained of this store ({fp}).")
        add_class_prompts(cat, templates, template_set)
        encode_class_prompts(cat, model)
        have = tables.class_prompt_matrix(cat, fp, template_set)
    return have


def method_texts(cat: Catalog, method: str, config: MethodConfig, model=None) -> MethodTexts:
    """Which stored texts a method scores against (class prompts are encoded on demand)."""
    fp = cat.model
    if method in ("dclip", "lazsl", "cupl", "wca"):
        first, second = ("descriptors", "sentences") if method in ("dclip", "lazsl") else ("sentences", "descriptors")
        attrs, kind = tables.attribute_matrix(cat, fp, first), first
        if len(attrs) == 0:  # a store with only the other style: use it, and say so in params
            attrs, kind = tables.attribute_matrix(cat, fp, second), f"{second} (no {first} in the store)"
        if len(attrs) == 0:
            raise StoreError("No encoded attributes in the store; run `pipeline build-attributes` first.")
        photo = _class_prompts(cat, model, [CLIP_TEMPLATE], "clip", method) if method == "wca" else None
        return MethodTexts(attrs, kind, photo)
    if method == "clip":
        return MethodTexts(_class_prompts(cat, model, [CLIP_TEMPLATE], "clip", method), "class prompts clip")
    if method == "clip-e":
        name = template_set_name(method, config)
        return MethodTexts(_class_prompts(cat, model, load_templates(config.templates), name, method), f"class prompts {name}")
    raise InputError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")


# ---- the stage ----------------------------------------------------------------------------
def classify(
    cat: Catalog,
    method: str,
    config: MethodConfig = MethodConfig(),
    *,
    model=None,
    image_ids: list[int] | None = None,
    provenance: dict | None = None,
    progress: bool = True,
) -> ClassifyReport:
    """Score every indexed image (or ``image_ids``) with ``method`` and store one run.

    ``provenance`` (the preset and where each value came from) is stored with the config.
    """
    from tqdm import tqdm

    if method in CZSL_METHODS:  # compositional pairs: their own stage
        from .compositional import classify_compositional

        return classify_compositional(cat, method, config, model=model, image_ids=image_ids, provenance=provenance,
                                      progress=progress)
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
    fp = cat.model
    if fp is None:
        raise StoreError(f"Store {cat.root} is empty; run build-attributes and index-images first.")
    t0 = time.perf_counter()
    texts = method_texts(cat, method, config, model)
    classes = np.unique(texts.attrs.class_ids)  # column order of every score matrix
    cls_index = np.searchsorted(classes, texts.attrs.class_ids)
    k = config.top_k if 0 < config.top_k < len(classes) else len(classes)
    # LaZSL shortlists by the normalised mean of the very texts it transports to
    shortlist = Shortlist(class_prototypes(texts.attrs.embeddings, cls_index, len(classes))) if method == "lazsl" else None

    run_id = tables.next_run_id(cat)
    params = {"method": method, "config": config.to_dict(), **(provenance or {}), "model": fp,
              "texts": texts.describe(), "n_classes": len(classes), "index_runs": tables.index_run_params(cat)}
    report = ClassifyReport(run_id=run_id, method=method, params=params)
    n_total = tables.image_count(cat) if image_ids is None else len(image_ids)
    bar = tqdm(total=n_total, desc=f"classify {method}", unit="img", disable=not progress)
    with cat.transaction():
        tables.insert_run(cat, tables.RunRecord(run_id, method, params, fp))
        for batch in tables.iter_region_batches(cat, image_ids):
            if method == "lazsl":
                _run_lazsl(cat, run_id, batch, texts, cls_index, classes, shortlist, k, config)
            else:
                _run_baseline(cat, run_id, method, batch, texts, cls_index, classes, k, config)
            report.images += len(batch.image_ids)
            bar.update(len(batch.image_ids))
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _run_lazsl(cat, run_id, batch: tables.RegionBatch, texts: MethodTexts, cls_index, classes, shortlist, k,
               config: MethodConfig) -> None:
    if batch.regions.shape[1] == 0:
        raise StoreError("LaZSL needs regions besides the full view; index images with --regions crops|grid|patches.")
    cand = shortlist(batch.full, k)
    res = lazsl.lazsl_scores(
        batch.full, batch.regions, texts.attrs.embeddings, cls_index, cand,
        theta=config.theta, eps=config.eps, gamma=config.gamma, max_iter=config.max_iter, tol=config.tol,
    )
    _write_predictions(cat, run_id, batch.image_ids, classes[cand], res.scores, res.global_scores, res.local_scores)
    _write_alignments(cat, run_id, batch, classes[cand], res, texts.attrs.ids, config.alignments_top)


def _run_baseline(cat, run_id, method, batch: tables.RegionBatch, texts: MethodTexts, cls_index, classes, k,
                  config: MethodConfig) -> None:
    full, emb, n = batch.full, texts.attrs.embeddings, len(classes)
    if method in ("clip", "clip-e"):
        # a template ensemble is normalize(mean_t normalize(emb)) per class: the same segment mean as CuPL
        scores = baselines.clip_scores(full, baselines.cupl_class_text(emb, cls_index, n))
    elif method == "dclip":
        scores = baselines.dclip_scores(full, emb, cls_index, n)
    elif method == "cupl":
        scores = baselines.cupl_scores(full, emb, cls_index, n)
    else:
        photo = np.zeros((n, emb.shape[1]), np.float32)
        photo[np.searchsorted(classes, texts.photo.class_ids)] = texts.photo.embeddings
        res = baselines.wca_scores(
            full, batch.regions, emb, cls_index, photo,
            image_scale=config.wca_image_scale, text_scale=config.wca_text_scale,
            patch_n=config.wca_patch_n, n_runs=config.wca_runs, seed=config.seed, score=config.wca_score,
        )
        scores = res.scores
        b, r = res.run_top1.shape
        tables.insert_sample_predictions(cat, {
            "run_id": np.full(b * r, run_id, np.int64), "image_id": np.repeat(batch.image_ids, r).astype(np.int64),
            "sample": np.tile(np.arange(r, dtype=np.int32), b), "class_id": classes[res.run_top1].reshape(-1),
        })
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    _write_predictions(cat, run_id, batch.image_ids, classes[order], np.take_along_axis(scores, order, 1))


def _write_predictions(cat, run_id, img_ids, class_ids, scores, global_scores=None, local_scores=None) -> None:
    b, k = class_ids.shape
    order = np.argsort(-scores, axis=1, kind="stable")

    def ranked(values):
        if values is None:
            return pa.nulls(b * k, pa.float64())
        return np.take_along_axis(values, order, 1).reshape(-1).astype(np.float64)

    tables.insert_predictions(cat, {
        "run_id": np.full(b * k, run_id, np.int64),
        "image_id": np.repeat(img_ids, k).astype(np.int64),
        "class_id": np.take_along_axis(class_ids, order, 1).reshape(-1).astype(np.int64),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b),
        "score": ranked(scores),
        "global_score": ranked(global_scores),
        "local_score": ranked(local_scores),
    })


def _write_alignments(cat, run_id, batch: tables.RegionBatch, class_ids, res: lazsl.LazslResult, attr_ids,
                      alignments_top: int) -> None:
    """Store the non-zero OT plan entries with the fused similarity they were paid for."""
    plan = res.plan  # (B, K, M, N)
    if alignments_top > 0:
        rank = np.argsort(np.argsort(-res.scores, axis=1, kind="stable"), axis=1)
        plan = plan * (rank < alignments_top)[:, :, None, None]
    b, k, m, n = np.nonzero(plan > 0)
    if len(b) == 0:
        return
    tables.insert_alignments(cat, {
        "run_id": np.full(len(b), run_id, np.int64),
        "image_id": batch.image_ids[b].astype(np.int64),
        "class_id": class_ids[b, k].astype(np.int64),
        "region_id": batch.region_ids[:, 1:][b, m].astype(np.int64),
        "attr_id": attr_ids[res.attr_index[b, k, n]].astype(np.int64),
        "mass": plan[b, k, m, n].astype(np.float64),
        "similarity": res.fused[b, k, m, n].astype(np.float64),
    })
