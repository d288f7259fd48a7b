"""Stage 3: score indexed images with a method; write runs, predictions and alignments.

The math lives in ``queries/`` (pure functions on arrays); this module reads region and text
embeddings from the store (:mod:`stores.tables`), calls the math, and writes what it returns.
No image is decoded here: changing θ or ε re-runs only this stage.

Which texts a method scores against (:func:`method_texts`):

* ``clip``: the class prompt ``"a photo of a {c}."`` (template set ``clip``);
* ``clip-e``: the template ensemble (template set ``ensemble-<name>``);
* ``dclip``, ``lazsl``: the descriptors (CuPL sentences in a store that has no descriptors);
* ``cupl``, ``wca``: the CuPL sentences (descriptors in a store that has none); WCA also the
  ``clip`` prompt, which weights its sentences;
* ``awt``: AWT's own descriptions (style ``awt``, "{template(c)}. {d}"), the first 50 of each class,
  plus AWT's class prompt ``template(c) + "."`` (set ``awt-class``), as AWT's code; a store
  without them, or ``--awt-texts descriptors+prompt``: the descriptors plus the ``clip`` prompt;
* ``object-bound``: the descriptors, like LaZSL;
* ``waffle``: WaffleCLIP's random descriptors (template set ``waffle:<seed>:<digest>``, a
  function of the class names, the seed, the count, the template and the alphabet: by default
  WaffleCLIP's prompt and the store's descriptors' characters);
* ``dclip-nameless``: each descriptor alone, without the class name (set ``nameless``), plus
  the ``clip`` prompt unless ``--nameless none``.

Class prompts (every text that is not a user attribute) are encoded on first use and kept
apart from the user's attributes, in ``class_prompts``.

Which regions a method reads (``regions.kind``): ``lazsl`` and ``wca`` the crops (or grid tiles,
or patch tokens); ``object-bound`` those plus the ``part`` crops, with their boxes; ``awt`` the
full view and AWT's ``view``/``view-flip`` regions; the others the full view only.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from queries import awt, baselines, binding, lazsl
from queries.shortlist import Shortlist, class_prototypes
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..config import MethodConfig
from ..errors import InputError
from ..inputs import read_text_bounded
from ..names import check_text
from ..method_names import CZSL_METHODS, IMAGE_METHODS
from .attributes import (add_class_prompts, add_class_texts, awt_class_prompts, dclip_sentence, encode_class_prompts,
                         first_per_class)
from .control_prompts import (DCLIP_TEMPLATE, WAFFLE_TEMPLATE, characters_from_descriptors, load_random_words,
                              waffle_prompts)

METHODS = IMAGE_METHODS
#: class prompts may have to be encoded (awt also takes its logit scale from the model)
NEEDS_TEXT_ENCODER = ("clip", "clip-e", "wca", "awt", "waffle", "dclip-nameless")
SHORTLISTED = ("lazsl", "object-bound")  # methods that score only the Faiss shortlist
CLIP_TEMPLATE = "a photo of a {}."
CROP_KINDS = ("crop", "grid", "patch")  # LaZSL's and WCA's regions
PART_KINDS = CROP_KINDS + ("part",)  # object-bound's candidate objects and their parts
VIEW_KINDS = ("view", "view-flip")  # AWT's augmented views
PLAN_BUDGET = 1 << 23  # plan entries per scoring call (images are split to stay under it)
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
    kind: str  # descriptors | sentences | class prompts <set>[+<set>]
    photo: tables.TextMatrix | None = None  # WCA, AWT: the "a photo of a {c}." prompts
    extra: dict = field(default_factory=dict)  # what else describes the texts (waffle's descriptors)
    note: str | None = None  # what the user should know about the choice (awt's fallback)

    def describe(self) -> dict:
        return {"kind": self.kind, "n_texts": len(self.attrs), "text_ids": "class_prompts" if self.kind.startswith(
            "class prompts") else "attributes", **({"photo": len(self.photo)} if self.photo is not None else {}),
                **self.extra}


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


def _encode_prompts(cat: Catalog, model, method: str) -> None:
    """Encode the class prompts that have no embedding yet (the text encoder is needed then)."""
    if not tables.class_prompts_without_embedding(cat, cat.model):
        return
    if model is None:
        raise StoreError(f"--method {method} needs the text encoder to write class prompts; "
                         f"pass --model/--pretrained of this store ({cat.model}).")
    encode_class_prompts(cat, model)


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


def _concat(a: tables.TextMatrix, b: tables.TextMatrix) -> tables.TextMatrix:
    return tables.TextMatrix(np.concatenate([a.ids, b.ids]), np.concatenate([a.class_ids, b.class_ids]),
                             np.concatenate([a.embeddings, b.embeddings]))


def _descriptor_after_text(cat: Catalog) -> str:
    """What build-attributes appended to the store's descriptor prompts (``--after-text``, "."
    for ImageNet), read back from a stored prompt, so waffle's prompts take the same form."""
    for name, rows in tables.attributes_by_class(cat, "descriptors").items():
        for text, prompt in rows:
            if text.strip():
                head = f"{name}, {dclip_sentence(text)}"
                return prompt[len(head):] if prompt.startswith(head) else ""
    return ""


def waffle_texts(cat: Catalog, model, config: MethodConfig, method: str = "waffle") -> MethodTexts:
    """WaffleCLIP's prompts for the store's classes (seed ``config.seed``), stored as class prompts."""
    names = tables.class_names(cat)
    if not names:
        raise StoreError("No classes in the store; run `pipeline build-attributes` first.")
    template = WAFFLE_TEMPLATE if config.waffle_template == "paper" else DCLIP_TEMPLATE + _descriptor_after_text(cat)
    characters = None  # a-z
    if config.waffle_characters == "descriptors":  # WaffleCLIP's alphabet: that of its descriptor file
        for style in ("descriptors", "sentences"):
            texts = [t for rows in tables.attributes_by_class(cat, style).values() for t, _ in rows]
            if texts:
                characters = characters_from_descriptors(texts) or None
                break
    w = waffle_prompts(list(names.values()), load_random_words(), characters, count=config.waffle_count,
                       seed=config.seed, template=template)
    digest = hashlib.sha256(json.dumps([w.descriptors, template]).encode()).hexdigest()[:8]
    template_set = f"waffle:{config.seed}:{digest}"
    # one template per random descriptor, with {} where the class name goes (as the CLIP templates)
    templates = [template.format(name="{}", sentence=dclip_sentence(d)) for d in w.descriptors]
    attrs = _class_prompts(cat, model, templates, template_set, method)
    extra = {"waffle": {k: w.params[k] for k in ("n_words", "word_length", "n_groups", "n_chars", "count", "seed",
                                                  "characters")}
             | {"template": template, "word_list": "random-words-v1", "descriptors": w.descriptors}}
    return MethodTexts(attrs, f"class prompts {template_set}", extra=extra)


def nameless_texts(cat: Catalog, model, config: MethodConfig, method: str = "dclip-nameless") -> MethodTexts:
    """Class-name-free prompts: each stored descriptor alone (set ``nameless``), plus the ``clip``
    prompt once per class when ``config.nameless == "photo"`` (arXiv 2412.11917)."""
    by_class = tables.attributes_by_class(cat, "descriptors")
    if not by_class:
        raise StoreError("--method dclip-nameless needs descriptors (a DCLIP-style file); the store has none.")
    ids = tables.class_ids_by_norm(cat)
    from ..names import norm_class_name

    texts = {ids[norm_class_name(name)]: [(text.strip(), text.strip()) for text, _ in rows if text.strip()]
             for name, rows in by_class.items()}
    add_class_texts(cat, texts, "nameless")
    _encode_prompts(cat, model, method)
    attrs = tables.class_prompt_matrix(cat, cat.model, "nameless")
    if config.nameless == "photo":
        photo = _class_prompts(cat, model, [CLIP_TEMPLATE], "clip", method)
        return MethodTexts(_concat(attrs, photo), "class prompts nameless+clip")
    empty = sorted(set(texts) - set(attrs.class_ids.tolist()))
    if empty:
        names = tables.class_names(cat)
        raise InputError(f"--nameless none: {len(empty)} class(es) have no descriptor to score by "
                         f"({', '.join(names[c] for c in empty[:5])}); use --nameless photo.")
    return MethodTexts(attrs, "class prompts nameless")


def awt_texts(cat: Catalog, model, config: MethodConfig, method: str = "awt") -> MethodTexts | None:
    """AWT's texts as its code builds them: the store's AWT descriptions (style ``awt``), the
    first ``config.awt_descriptions`` of each class, and each class's prompt ``template(c) + "."``
    (set ``awt-class``) as the class prompt; None when the store has no AWT descriptions."""
    attrs = tables.attribute_matrix(cat, cat.model, "awt")
    if len(attrs) == 0:
        return None
    keep = first_per_class(attrs.class_ids, config.awt_descriptions)
    attrs = tables.TextMatrix(attrs.ids[keep], attrs.class_ids[keep], attrs.embeddings[keep])
    prompts = awt_class_prompts(cat)
    add_class_texts(cat, prompts, "awt-class")
    _encode_prompts(cat, model, method)
    photo = tables.class_prompt_matrix(cat, cat.model, "awt-class")
    mine = np.isin(photo.class_ids, attrs.class_ids)
    photo = tables.TextMatrix(photo.ids[mine], photo.class_ids[mine], photo.embeddings[mine])
    templates = sorted({t for items in prompts.values() for t, _ in items})
    return MethodTexts(attrs, "awt", photo, extra={"awt": {"descriptions": config.awt_descriptions,
                                                          "class_templates": templates}})


def method_texts(cat: Catalog, method: str, config: MethodConfig, model=None) -> MethodTexts:
    """Which stored texts a method scores against (class prompts are encoded on demand)."""
    fp = cat.model
    if method == "awt" and config.awt_texts == "awt":
        texts = awt_texts(cat, model, config, method)
        if texts is not None:
            return texts
        config = replace(config, awt_texts="descriptors+prompt")  # no AWT descriptions: said in the params
        fallback = method_texts(cat, method, config, model)
        fallback.kind += " (no AWT descriptions in the store: --awt-texts descriptors+prompt)"
        fallback.note = ("awt: the store has no AWT descriptions (build-attributes --from-json awt_<dataset>.json); "
                         "scoring its descriptors plus 'a photo of a {c}.' (--awt-texts descriptors+prompt)")
        return fallback
    if method in ("dclip", "lazsl", "cupl", "wca", "awt", "object-bound"):
        first, second = ("sentences", "descriptors") if method in ("cupl", "wca") else ("descriptors", "sentences")
        attrs, kind = tables.attribute_matrix(cat, fp, first), first
        if len(attrs) == 0:  # a store with only the other style: use it, and say so in params
            attrs, kind = tables.attribute_matrix(cat, fp, second), f"{second} (no {first} in the store)"
        if len(attrs) == 0:
            raise StoreError("No encoded attributes in the store; run `pipeline build-attributes` first.")
        with_photo = method == "wca" or (method == "awt" and config.awt_texts == "descriptors+prompt")
        photo = _class_prompts(cat, model, [CLIP_TEMPLATE], "clip", method) if with_photo else None
        return MethodTexts(attrs, kind, photo)
    if method == "clip":
        return MethodTexts(_class_prompts(cat, model, [CLIP_TEMPLATE], "clip", method), "class prompts clip")
    if method == "clip-e":
        name = template_set_name(method, config)
        return MethodTexts(_class_prompts(cat, model, load_templates(config.templates), name, method), f"class prompts {name}")
    if method == "waffle":
        return waffle_texts(cat, model, config)
    if method == "dclip-nameless":
        return nameless_texts(cat, model, config)
    raise InputError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")


# ---- the stage ----------------------------------------------------------------------------
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
    config: MethodConfig
    extra: dict = field(default_factory=dict)  # awt: its logit scale
    _shortlist: Shortlist | None = field(default=None, repr=False, compare=False)

    @property
    def shortlist(self) -> Shortlist | None:
        """LaZSL and object-bound shortlist by the normalised mean of the very texts they transport to."""
        if self.method in SHORTLISTED and self._shortlist is None:
            self._shortlist = Shortlist(class_prototypes(self.texts.attrs.embeddings, self.cls_index, len(self.classes)))
        return self._shortlist

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("method", "run_id", "texts", "classes", "cls_index", "k", "config", "extra")}

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreContext":
        return cls(**d)


@dataclass
class ScoredRows:
    """What scoring region batches produced, as columns per table (``predictions``,
    ``alignments``, ``sample_predictions``), ready for :func:`write_scored`."""

    parts: dict[str, list[dict]] = field(default_factory=dict)
    images: int = 0

    def add(self, table: str, columns: dict) -> None:
        self.parts.setdefault(table, []).append(columns)

    def extend(self, other: "ScoredRows") -> None:
        for table, cols in other.parts.items():
            self.parts.setdefault(table, []).extend(cols)
        self.images += other.images

    def tables(self) -> dict[str, pa.Table]:
        return {t: pa.concat_tables([pa.table(c) for c in cols]) for t, cols in self.parts.items() if cols}

    def to_bytes(self) -> bytes:
        """Arrow IPC (one stream per table, named in the schema metadata): how a Ray actor ships rows."""
        import io

        buf = io.BytesIO()
        for name, t in self.tables().items():
            t = t.replace_schema_metadata({b"table": name.encode(), b"images": str(self.images).encode()})
            with pa.ipc.new_stream(buf, t.schema) as w:
                w.write_table(t)
        return buf.getvalue() or b"images=" + str(self.images).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ScoredRows":
        out = cls()
        if data.startswith(b"images="):
            out.images = int(data[7:])
            return out
        reader = pa.BufferReader(data)
        while reader.tell() < reader.size():
            t = pa.ipc.open_stream(reader).read_all()
            meta = t.schema.metadata
            out.parts.setdefault(meta[b"table"].decode(), []).append({c: t[c] for c in t.column_names})
            out.images = int(meta[b"images"])
        return out


def score_region_batch(ctx: ScoreContext, batch: tables.RegionBatch) -> ScoredRows:
    """One batch of images (same region count) -> their predictions, alignments and WCA draws.

    Pure: arrays in, rows out, no store access; the local engine calls it shard by shard, a Ray
    actor on the shards it is given (:func:`score_shard`)."""
    out = ScoredRows(images=len(batch.image_ids))
    if ctx.method == "lazsl":
        _run_lazsl(out, ctx.run_id, batch, ctx.texts, ctx.cls_index, ctx.classes, ctx.shortlist, ctx.k, ctx.config)
    elif ctx.method == "object-bound":
        _run_object_bound(out, ctx.run_id, batch, ctx.texts, ctx.cls_index, ctx.classes, ctx.shortlist, ctx.k, ctx.config)
    elif ctx.method == "awt":
        _run_awt(out, ctx.run_id, batch, ctx.texts, ctx.cls_index, ctx.classes, ctx.k, ctx.config,
                 ctx.extra["awt_logit_scale"])
    else:
        _run_baseline(out, ctx.run_id, ctx.method, batch, ctx.texts, ctx.cls_index, ctx.classes, ctx.k, ctx.config)
    return out


def score_shard(ctx: ScoreContext, path, image_ids=None, positions=None) -> ScoredRows:
    """Every batch of one regions shard (only ``image_ids`` when given; ``positions``: their rows
    in the images partner, :func:`stores.tables.region_shard_plan`) through :func:`score_region_batch`."""
    out = ScoredRows()
    t = tables.read_region_rows(Path(path), image_ids, positions, tables.REGION_BATCH_COLUMNS)
    if t is not None and t.num_rows:
        for batch in tables.region_batches_of(t):
            out.extend(score_region_batch(ctx, batch))
    return out


def write_scored(cat: Catalog, rows: ScoredRows) -> None:
    """Insert scored rows through :mod:`stores.tables` (the caller holds the transaction)."""
    writers = {"predictions": tables.insert_predictions, "alignments": tables.insert_alignments,
               "sample_predictions": tables.insert_sample_predictions, "object_bindings": tables.insert_object_bindings}
    for table, t in rows.tables().items():
        writers[table](cat, {c: t[c] for c in t.column_names})


@dataclass
class PreparedRun:
    report: ClassifyReport
    context: ScoreContext


def prepare_run(cat: Catalog, method: str, config: MethodConfig, *, model=None, image_ids=None,
                provenance: dict | None = None, engine: dict | None = None) -> PreparedRun:
    """The texts a method scores against (class prompts encoded on demand), the run id and the
    params it records (``engine``: which engine ran it); the same for both engines."""
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
    fp = cat.model
    if fp is None:
        raise StoreError(f"Store {cat.root} is empty; run build-attributes and index-images first.")
    texts = method_texts(cat, method, config, model)
    classes = np.unique(texts.attrs.class_ids)  # column order of every score matrix
    cls_index = np.searchsorted(classes, texts.attrs.class_ids)
    k = config.top_k if 0 < config.top_k < len(classes) else len(classes)
    extra = {"awt_logit_scale": _awt_logit_scale(config, model)} if method == "awt" else {}
    run_id = tables.next_run_id(cat)
    params = {"method": method, "config": config.to_dict(), **(provenance or {}), "model": fp,
              "texts": texts.describe(), "n_classes": len(classes), "index_runs": tables.index_run_params(cat),
              **extra, **({"engine": engine} if engine else {})}
    report = ClassifyReport(run_id=run_id, method=method, params=params, notes=[texts.note] if texts.note else [])
    return PreparedRun(report, ScoreContext(method, run_id, texts, classes, cls_index, k, config, extra))


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
    Each batch goes through :func:`score_region_batch`; the run and its rows are one transaction.
    """
    from tqdm import tqdm

    if method in CZSL_METHODS:  # compositional pairs: their own stage
        from .compositional import classify_compositional

        return classify_compositional(cat, method, config, model=model, image_ids=image_ids, provenance=provenance,
                                      progress=progress)
    t0 = time.perf_counter()
    run = prepare_run(cat, method, config, model=model, image_ids=image_ids, provenance=provenance)
    report, ctx = run.report, run.context
    n_total = tables.image_count(cat) if image_ids is None else len(image_ids)
    bar = tqdm(total=n_total, desc=f"classify {method}", unit="img", disable=not progress)
    with cat.transaction():
        tables.insert_run(cat, tables.RunRecord(report.run_id, method, report.params, cat.model))
        for batch in tables.iter_region_batches(cat, image_ids):
            write_scored(cat, score_region_batch(ctx, batch))
            report.images += len(batch.image_ids)
            bar.update(len(batch.image_ids))
        write_contrasts(cat, report, image_ids)
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def write_contrasts(cat: Catalog, report: ClassifyReport, image_ids=None) -> None:
    """After scoring, in the run's transaction: the contrastive reasons of OT runs (rank 1 vs
    rank 2 and vs the true class) from the rows just written (:mod:`.contrasts`)."""
    from .contrasts import CONTRAST_METHODS, store_contrasts

    if report.method in CONTRAST_METHODS:
        store_contrasts(cat, report.run_id, image_ids)
        top = report.params.get("config", {}).get("alignments_top", 0)
        if top == 1:
            report.notes.append("--alignments-top 1 stores no runner-up plan: no contrastive reasons "
                                "(why rank 1 and not rank 2); use 2 or more")


def classify_runs(cat: Catalog, method: str, config: MethodConfig = MethodConfig(), *, provenance: dict | None = None,
                  scorer=None, **kwargs) -> list[ClassifyReport]:
    """:func:`classify` (or ``scorer``, same signature: the Ray engine's), once per seed for
    ``waffle`` with ``waffle_seeds`` > 1 (seeds ``seed, seed+1, ...``; each run records its
    group so evaluate reports mean ± std over them)."""
    scorer = scorer or classify
    n = config.waffle_seeds if method == "waffle" else 1
    if n == 1:
        return [scorer(cat, method, config, provenance=provenance, **kwargs)]
    first = tables.next_run_id(cat)
    return [scorer(cat, method, replace(config, seed=config.seed + i),
                     provenance={**(provenance or {}), "seed_group": {"first_run_id": first, "index": i, "n": n}},
                     **kwargs) for i in range(n)]


def _awt_logit_scale(config: MethodConfig, model) -> float:
    if config.awt_logit_scale > 0:
        return float(config.awt_logit_scale)
    if model is None:
        raise StoreError("--method awt takes its logit scale from the model; pass --model/--pretrained of this "
                         "store, or --awt-logit-scale.")
    return float(model.model.logit_scale.exp().detach().float().cpu())


def _columns(batch: tables.RegionBatch, kinds: tuple[str, ...], method: str, hint: str) -> np.ndarray:
    cols = batch.columns(kinds)
    if len(cols) == 0:
        raise StoreError(f"--method {method} needs {hint}; the indexed images have only "
                         f"{', '.join(sorted(set(batch.kinds[0].tolist())))} regions.")
    return cols


def _chunks(n: int, per_image: int):
    """Slices of images whose plans stay under PLAN_BUDGET entries."""
    step = max(1, PLAN_BUDGET // max(1, per_image))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


def _run_lazsl(out: ScoredRows, run_id, batch: tables.RegionBatch, texts: MethodTexts, cls_index, classes, shortlist, k,
               config: MethodConfig) -> None:
    cols = _columns(batch, CROP_KINDS, "lazsl", "regions besides the full view (index-images --regions crops|grid|patches)")
    cand = shortlist(batch.full, k)
    res = lazsl.lazsl_scores(
        batch.full, batch.embeddings[:, cols], texts.attrs.embeddings, cls_index, cand,
        theta=config.theta, eps=config.eps, gamma=config.gamma, max_iter=config.max_iter, tol=config.tol,
    )
    _write_predictions(out, run_id, batch.image_ids, classes[cand], res.scores, res.global_scores, res.local_scores)
    _write_alignments(out, run_id, batch.image_ids, classes[cand], batch.region_ids[:, cols], res.plan, res.fused,
                      _attr_ids(texts.attrs.ids, res.attr_index), res.scores, config.alignments_top)


def _run_object_bound(out: ScoredRows, run_id, batch: tables.RegionBatch, texts: MethodTexts, cls_index, classes, shortlist, k,
                      config: MethodConfig) -> None:
    cols = np.concatenate([[0], _columns(batch, PART_KINDS, "object-bound", "crops inside the full view "
                                         "(index-images --regions crops, and --n-parts for smaller part crops)")])
    n_max = int(np.bincount(cls_index).max())
    for sl in _chunks(len(batch.image_ids), k * len(cols) * n_max):
        full = batch.full[sl]
        cand = shortlist(full, k)
        try:
            res = binding.object_bound_scores(
                batch.embeddings[sl][:, cols], batch.boxes[sl][:, cols], texts.attrs.embeddings, cls_index, cand,
                theta=config.theta, eps=config.eps, gamma=config.gamma, contain=config.contain,
                min_parts=config.min_parts, max_iter=config.max_iter, tol=config.tol,
            )
        except ValueError as exc:
            if "no region has" not in str(exc):
                raise
            raise InputError(f"object-bound: {exc} (or lower --min-parts).") from None
        ids, region_ids = batch.image_ids[sl], batch.region_ids[sl][:, cols]
        _write_predictions(out, run_id, ids, classes[cand], res.scores, res.global_scores, res.local_scores)
        _write_alignments(out, run_id, ids, classes[cand], region_ids, res.plan, res.fused,
                          _attr_ids(texts.attrs.ids, res.attr_index), res.scores, config.alignments_top)
        b, kk = np.indices(cand.shape)
        out.add("object_bindings", {
            "run_id": np.full(cand.size, run_id, np.int64), "image_id": ids[b].reshape(-1).astype(np.int64),
            "class_id": classes[cand].reshape(-1).astype(np.int64),
            "region_id": region_ids[b, res.proposal].reshape(-1).astype(np.int64),
            "n_parts": np.take_along_axis(res.n_parts, res.proposal, 1).reshape(-1).astype(np.int32),
            "score": res.scores.reshape(-1).astype(np.float64),
        })


def _run_awt(out: ScoredRows, run_id, batch: tables.RegionBatch, texts: MethodTexts, cls_index, classes, k, config: MethodConfig,
             logit_scale: float) -> None:
    cols = np.concatenate([[0], _columns(batch, VIEW_KINDS, "awt", "AWT's views (index-images --n-views 50)")])
    n = len(classes)
    prompts = None
    if texts.photo is not None:
        prompts = np.zeros((n, texts.attrs.embeddings.shape[1]), np.float32)
        prompts[np.searchsorted(classes, texts.photo.class_ids)] = texts.photo.embeddings
    n_texts = int(np.bincount(cls_index).max()) + (prompts is not None)
    for sl in _chunks(len(batch.image_ids), n * len(cols) * n_texts):
        res = awt.awt_scores(
            batch.embeddings[sl][:, cols], texts.attrs.embeddings, cls_index, prompts, n_classes=n,
            logit_scale=logit_scale, view_temperature=config.awt_view_temperature,
            text_temperature=config.awt_text_temperature, eps=config.eps, max_iter=config.max_iter, tol=config.tol,
        )
        order = np.argsort(-res.scores, axis=1, kind="stable")[:, :k]  # the top-k classes are stored
        pick = lambda x: np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)  # noqa: E731
        scores = pick(res.scores)
        prompt_part = pick(res.prompt_scores)
        ids = batch.image_ids[sl]
        # global part: the class prompt's column; local part: the descriptions' (they sum to the score)
        _write_predictions(out, run_id, ids, classes[order], scores, prompt_part, scores - prompt_part)
        text_index = res.text_index[order]  # (b, k, N): rows of texts; -2 the class prompt, -1 padding
        _write_alignments(out, run_id, ids, classes[order], batch.region_ids[sl][:, cols], pick(res.plan),
                          pick(res.similarity), _attr_ids(texts.attrs.ids, text_index), scores, config.alignments_top)


def _run_baseline(out: ScoredRows, run_id, method, batch: tables.RegionBatch, texts: MethodTexts, cls_index, classes, k,
                  config: MethodConfig) -> None:
    full, emb, n = batch.full, texts.attrs.embeddings, len(classes)
    if method in ("clip", "clip-e"):
        # a template ensemble is normalize(mean_t normalize(emb)) per class: the same segment mean as CuPL
        scores = baselines.clip_scores(full, baselines.cupl_class_text(emb, cls_index, n))
    elif method in ("dclip", "waffle", "dclip-nameless"):  # WaffleCLIP's and the name-free scores are DCLIP's mean
        scores = baselines.dclip_scores(full, emb, cls_index, n)
    elif method == "cupl":
        scores = baselines.cupl_scores(full, emb, cls_index, n)
    else:
        cols = _columns(batch, CROP_KINDS, "wca", "crops (index-images --regions crops)")
        photo = np.zeros((n, emb.shape[1]), np.float32)
        photo[np.searchsorted(classes, texts.photo.class_ids)] = texts.photo.embeddings
        res = baselines.wca_scores(
            full, batch.embeddings[:, cols], emb, cls_index, photo,
            image_scale=config.wca_image_scale, text_scale=config.wca_text_scale,
            patch_n=config.wca_patch_n, n_runs=config.wca_runs, seed=config.seed, score=config.wca_score,
        )
        scores = res.scores
        b, r = res.run_top1.shape
        out.add("sample_predictions", {
            "run_id": np.full(b * r, run_id, np.int64), "image_id": np.repeat(batch.image_ids, r).astype(np.int64),
            "sample": np.tile(np.arange(r, dtype=np.int32), b), "class_id": classes[res.run_top1].reshape(-1),
        })
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    _write_predictions(out, run_id, batch.image_ids, classes[order], np.take_along_axis(scores, order, 1))


def _write_predictions(out: ScoredRows, run_id, img_ids, class_ids, scores, global_scores=None, local_scores=None) -> None:
    b, k = class_ids.shape
    order = np.argsort(-scores, axis=1, kind="stable")

    def ranked(values):
        if values is None:
            return pa.nulls(b * k, pa.float64())
        return np.take_along_axis(values, order, 1).reshape(-1).astype(np.float64)

    out.add("predictions", {
        "run_id": np.full(b * k, run_id, np.int64),
        "image_id": np.repeat(img_ids, k).astype(np.int64),
        "class_id": np.take_along_axis(class_ids, order, 1).reshape(-1).astype(np.int64),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b),
        "score": ranked(scores),
        "global_score": ranked(global_scores),
        "local_score": ranked(local_scores),
    })


def _attr_ids(ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """attr_id of each plan column from row indices into the scored texts (-1 where the column is
    padding or, for AWT, the class prompt, which is not an attribute)."""
    index = np.asarray(index)
    return np.where(index >= 0, ids[np.clip(index, 0, None)], -1)


def _write_alignments(out: ScoredRows, run_id, image_ids, class_ids, region_ids, plan, similarity, attr_ids, scores,
                      alignments_top: int) -> None:
    """Store the non-zero OT plan entries on attributes with the similarity they were paid for.

    plan, similarity (B, K, M, N); region_ids (B, M) of the plan's rows; attr_ids (B, K, N) of
    its columns (-1: not stored); class_ids and scores (B, K)."""
    if alignments_top > 0:
        rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
        plan = plan * (rank < alignments_top)[:, :, None, None]
    b, k, m, n = np.nonzero((plan > 0) & (attr_ids >= 0)[:, :, None, :])
    if len(b) == 0:
        return
    out.add("alignments", {
        "run_id": np.full(len(b), run_id, np.int64),
        "image_id": image_ids[b].astype(np.int64),
        "class_id": class_ids[b, k].astype(np.int64),
        "region_id": region_ids[b, m].astype(np.int64),
        "attr_id": attr_ids[b, k, n].astype(np.int64),
        "mass": plan[b, k, m, n].astype(np.float64),
        "similarity": similarity[b, k, m, n].astype(np.float64),
    })
