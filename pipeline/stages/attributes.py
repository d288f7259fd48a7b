"""Stage 1: class attributes -> rows in the catalog, embeddings, Faiss indexes.

Attributes come from a DCLIP-style ``{class: [descriptor, ...]}`` file, a CuPL-style
``{class: [sentence, ...]}`` file, or an LLM (:mod:`pipeline.stages.llm`). Whatever the
source, :func:`add_attributes` stores them and :func:`encode_attributes` embeds what is
missing and rebuilds the attribute and class-prototype indexes. Class-name templates
("a photo of a {c}.") are not attributes: :func:`add_class_prompts` keeps them in their own
table, so exports, prototypes and evaluate's ``templates`` see exactly the user's attributes.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from stores import indexes, tables
from stores.catalog import Catalog

from ..errors import InputError
from ..inputs import DEFAULT_MAX_FILE_BYTES, load_json_file
from ..names import check_text, clean_class_name, clean_text, escape_controls, norm_class_name

#: the attribute style of AWT's description files (a style, not the method of the same name)
AWT_STYLE = "awt"
STYLES = ("descriptors", "sentences", AWT_STYLE)
PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"
#: AWT's class template of each dataset (``AWT_zero_shot/data/cls_to_names.py``, ``CUSTOM_TEMPLATES``;
#: its description files are ``<dataset>.json``), without the final period.
AWT_DEFAULT_TEMPLATE = "a photo of a {}"
AWT_DESCRIPTIONS = 50  # AWT's ``--num_descriptor``: the first 50 descriptions of each class


# ---- prompts ----------------------------------------------------------------------------
def dclip_sentence(descriptor: str) -> str:
    """DCLIP's descriptor rule (loading_helpers.py): a plain prefix test, kept as-is so prompts
    match the published ones ("antlers" -> "which is antlers" is their behaviour too)."""
    d = descriptor.strip()
    if d.startswith("a"):
        return f"which is {d}"
    if d.startswith(("has", "often", "typically", "may", "can")):
        return f"which {d}"
    if d.startswith("used"):
        return f"which is {d}"
    return f"which has {d}"


def awt_class_prompt(class_name: str, template: str) -> str:
    """AWT's class prompt, ``template.format(c) + "."`` (cub: "a photo of the {c}.")."""
    return template.replace("{}", class_name) + "."  # never str.format: a template is text, not code


def render_prompt(class_name: str, text: str, style: str, after_text: str = "",
                  class_template: str = AWT_DEFAULT_TEMPLATE) -> str:
    """The exact string that is encoded for one attribute.

    ``awt``: AWT's ``template.format(c) + ". " + description`` (an empty description gives the
    class prompt and a blank, which the tokenizer drops: upstream encodes exactly that)."""
    if style == AWT_STYLE:
        return f"{class_template.replace('{}', class_name)}. {text.strip()}"
    if style == "descriptors":
        if not text.strip():
            # DCLIP turns an empty list into [''] and encodes "donuts, which has " (a dangling
            # clause); we encode the bare class name instead, which is what that row meant.
            return f"{class_name}{after_text}"
        return f"{class_name}, {dclip_sentence(text)}{after_text}"
    if style == "sentences":
        return text.strip()
    raise InputError(f"Unknown style {style!r}; use one of {', '.join(STYLES)}.")


# ---- reading input files ----------------------------------------------------------------
@dataclass
class ImportReport:
    classes: int = 0
    attributes: int = 0
    empty: list[str] = field(default_factory=list)  # classes that came with no descriptor
    duplicates: list[str] = field(default_factory=list)  # names merged after normalisation
    style: str = "descriptors"
    repeated_texts: int = 0  # texts that repeat within their class, kept (upstream averages over them)
    class_template: str | None = None  # awt: the class template its prompts were built with

    def lines(self) -> list[str]:
        out = [f"{self.classes} classes, {self.attributes} attributes ({self.style})"]
        if self.class_template:
            out.append(f"AWT prompts: \"{self.class_template}. {{description}}\" (class prompt "
                       f"\"{self.class_template}.\")")
        if self.repeated_texts:
            out.append(f"{self.repeated_texts} texts repeat within their class; kept, so class means weigh them "
                       f"as the file does")
        if self.empty:
            out.append(f"{len(self.empty)} classes with an empty list (encoded by name only): {', '.join(self.empty[:10])}")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicate class names merged: {', '.join(self.duplicates[:10])}")
        return out


def guess_style(mapping: dict[str, list[str]], path: str | Path | None = None) -> str:
    """CuPL files hold full sentences (long, ending in '.'); DCLIP files hold short phrases;
    AWT's description files are named ``awt_<dataset>.json`` here and hold 50 or more
    sentences for every class (CuPL's hold at most 48)."""
    texts = [t for v in mapping.values() for t in v if t.strip()]
    if not texts:
        return "descriptors"
    words = np.mean([len(t.split()) for t in texts])
    periods = np.mean([t.rstrip().endswith(".") for t in texts])
    style = "sentences" if words >= 7 or periods > 0.5 else "descriptors"
    named_awt = path is not None and Path(path).name.lower().startswith(("awt_", "awt-"))
    if named_awt or (style == "sentences" and min(len(v) for v in mapping.values()) >= AWT_DESCRIPTIONS):
        return AWT_STYLE
    return style


@lru_cache(maxsize=1)
def awt_templates() -> dict[str, str]:
    """Dataset name -> AWT's class template (``pipeline/prompts/templates/awt.json``)."""
    data = json.loads((PROMPT_DIR / "templates" / "awt.json").read_text(encoding="utf-8"))
    return dict(data["templates"])


def awt_template_for(path: str | Path) -> str | None:
    """AWT's class template of the dataset a description file is named after (``awt_cub.json``
    or upstream's ``cub.json``), or None when the name is not one of AWT's datasets."""
    stem = Path(path).stem.lower()
    for prefix in ("awt_", "awt-"):
        stem = stem.removeprefix(prefix)
    return awt_templates().get(stem)


def read_attribute_lists(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[dict[str, list[str]], ImportReport]:
    """Read a DCLIP/CuPL/AWT JSON: each class's texts in order, repeats and blanks kept, as the
    upstream code reads the list; names equal after normalisation are merged (reported), the
    second list adding the texts the first lacks.

    Bounded: at most ``max_bytes`` (checked before reading) and nested at most a few levels
    (checked before parsing); class names and texts with control characters are refused,
    naming the key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass a JSON file of {{class: [descriptor, ...]}}.")
    pairs = load_json_file(path, max_bytes, object_pairs_hook=list)
    if not isinstance(pairs, list) or not all(isinstance(p, tuple) or isinstance(p, list) for p in pairs):
        raise InputError(f"{path}: expected a JSON object mapping class names to lists of strings.")
    report = ImportReport()
    merged: dict[str, list[str]] = {}
    display: dict[str, str] = {}
    for key, value in pairs:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{path}: the value of {escape_controls(repr(key))} must be a list of strings.")
        where = f"{path}: key {escape_controls(repr(key))}"  # once per key: 200,000 classes import in seconds
        name = clean_class_name(key, where=where)
        value = [clean_text(v, f"{where}, item {i + 1}") for i, v in enumerate(value)]  # clean_text strips
        if not name:
            raise InputError(f"{path}: an empty class name; every key must name a class.")
        norm = name.lower()
        if norm in merged:
            report.duplicates.append(name)
            merged[norm] += [v for v in value if v not in merged[norm]]
        else:
            merged[norm], display[norm] = list(value), name
    out = {display[norm]: texts for norm, texts in merged.items()}
    _count(out, report)
    return out, report


def drop_blank_texts(mapping: dict[str, list[str]], report: ImportReport) -> dict[str, list[str]]:
    """DCLIP/CuPL: blank texts dropped; a class left with none keeps one ``""`` (encoded by its
    name, :func:`render_prompt`) and is reported."""
    out = {}
    for name, texts in mapping.items():
        nonempty = [t for t in texts if t]
        if not nonempty:
            report.empty.append(name)
        out[name] = nonempty or [""]
    _count(out, report)
    return out


def _count(mapping: dict[str, list[str]], report: ImportReport) -> None:
    report.classes = len(mapping)
    report.attributes = sum(len(v) for v in mapping.values())
    report.repeated_texts = sum(len(v) - len(set(v)) for v in mapping.values())


def read_attribute_json(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[dict[str, list[str]], ImportReport]:
    """:func:`read_attribute_lists` with blank texts dropped (:func:`drop_blank_texts`): a
    DCLIP/CuPL file as stored. Texts that repeat within a class are kept with their count."""
    lists, report = read_attribute_lists(path, max_bytes)
    return drop_blank_texts(lists, report), report


# ---- writing to the store ---------------------------------------------------------------
def upsert_classes(cat: Catalog, names: list[str]) -> dict[str, int]:
    """Class name -> class_id, creating the classes that are new (matched after normalisation)."""
    existing = tables.class_ids_by_norm(cat)
    next_id = tables.next_class_id(cat)
    ids: dict[str, int] = {}
    new_ids, new_names, new_norms = [], [], []
    for name in names:
        norm = norm_class_name(name)
        if norm not in existing:
            existing[norm] = next_id
            new_ids.append(next_id)
            new_names.append(clean_class_name(name))
            new_norms.append(norm)
            next_id += 1
        ids[name] = existing[norm]
    tables.insert_classes(cat, new_ids, new_names, new_norms)
    return ids


def add_attributes(
    cat: Catalog,
    mapping: dict[str, list[str]],
    *,
    source: str,
    style: str,
    prompt_version: str | None = None,
    after_text: str = "",
    class_template: str = AWT_DEFAULT_TEMPLATE,
) -> int:
    """Insert the attributes not already stored; returns how many.

    A text that repeats within a class is stored once per occurrence (its own row), so a class
    mean over its rows is the mean over the list, as upstream computes it. Importing the same
    lists again adds nothing: a class's text is added only as often as the list holds it more
    times than the store (same class, text and style)."""
    if style not in STYLES:
        raise InputError(f"Unknown style {style!r}; use one of {', '.join(STYLES)}.")
    check_text(after_text, "--after-text", "text")
    check_text(class_template, "--awt-template", "template")
    for cls, texts in mapping.items():  # the last door before the store: no control characters
        clean_class_name(cls, where="a class name")
        for text in texts:
            check_text(text, f"class {escape_controls(repr(cls))}", "attribute text")  # cleaned by the readers
    with cat.transaction():
        class_ids = upsert_classes(cat, list(mapping))
        names = tables.class_names(cat)
        stored = tables.attribute_key_counts(cat, style)
        next_id = tables.next_attr_id(cat)
        rows = []
        for cls, texts in mapping.items():
            cid = class_ids[cls]
            seen: Counter = Counter()
            for text in texts:
                seen[(cid, text)] += 1
                if seen[(cid, text)] <= stored[(cid, text)]:
                    continue
                stored[(cid, text)] += 1
                rows.append(dict(attr_id=next_id, class_id=cid, text=text,
                                 prompt=render_prompt(names[cid], text, style, after_text, class_template),
                                 source=source, style=style, prompt_version=prompt_version))
                next_id += 1
        tables.insert_attributes(cat, rows)
    return len(rows)


def add_class_prompts(cat: Catalog, templates: list[str], template_set: str) -> int:
    """Store ``template.format(class name)`` for every class and template (not yet stored)."""
    with cat.transaction():
        have = tables.class_prompt_keys(cat, template_set)
        next_id = tables.next_prompt_id(cat)
        rows = []
        for cid, name in tables.class_names(cat).items():
            for t in templates:
                prompt = t.replace("{}", name)  # never str.format: a template is text, not code
                if (cid, prompt) in have:
                    continue
                have.add((cid, prompt))
                rows.append(dict(prompt_id=next_id, class_id=cid, template_set=template_set, template=t, prompt=prompt))
                next_id += 1
        tables.insert_class_prompts(cat, rows)
    return len(rows)


def add_class_texts(cat: Catalog, texts: dict[int, list[tuple[str | None, str]]], template_set: str) -> int:
    """Store per-class prompts that are not one template for every class (WaffleCLIP's random
    descriptors, class-name-free descriptors): ``texts[class_id] = [(template, prompt), ...]``.
    Prompts already stored in the set are skipped. Returns how many were added."""
    with cat.transaction():
        have = tables.class_prompt_keys(cat, template_set)
        next_id = tables.next_prompt_id(cat)
        rows = []
        for cid, items in texts.items():
            for template, prompt in items:
                if (cid, prompt) in have:
                    continue
                have.add((cid, prompt))
                rows.append(dict(prompt_id=next_id, class_id=cid, template_set=template_set, template=template,
                                 prompt=prompt))
                next_id += 1
        tables.insert_class_prompts(cat, rows)
    return len(rows)


def awt_class_prompts(cat: Catalog) -> dict[int, list[tuple[str, str]]]:
    """AWT's class prompt of every class with AWT descriptions, ``template(c) + "."``, read back
    from a stored prompt (``"{template(c)}. {description}"``): ``{class_id: [(template, prompt)]}``,
    as :func:`add_class_texts` takes them."""
    ids = tables.class_ids_by_norm(cat)
    out = {}
    for name, rows in tables.attributes_by_class(cat, AWT_STYLE).items():
        text, prompt = rows[0]
        head = prompt[: len(prompt) - len(text.strip()) - 2]  # the prompt without ". {description}"
        out[ids[norm_class_name(name)]] = [(head.replace(name, "{}", 1), head + ".")]
    return out


def first_per_class(class_ids: np.ndarray, n: int) -> np.ndarray:
    """Mask of the first ``n`` rows of each class, in row order (``n`` = 0: every row): AWT's
    cut to its first 50 descriptions.

    >>> first_per_class(np.array([3, 3, 1, 3, 1]), 2).tolist()
    [True, True, True, False, True]
    """
    class_ids = np.asarray(class_ids)
    if n <= 0:
        return np.ones(len(class_ids), bool)
    order = np.argsort(class_ids, kind="stable")
    sorted_ids = class_ids[order]
    starts = np.searchsorted(sorted_ids, sorted_ids, side="left")
    rank = np.empty(len(class_ids), np.int64)
    rank[order] = np.arange(len(class_ids)) - starts
    return rank < n


def _encode_missing(cat: Catalog, model, todo: list[tuple[int, str]], insert, what: str, batch_size: int,
                    progress: bool) -> int:
    # heavy: imported on use
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"encode {what}", unit="text", disable=not progress or not todo)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        position = {p: j for j, p in enumerate(dict.fromkeys(p for _, p in chunk))}  # a repeated text: encoded once
        emb = model.encode_texts(list(position), batch_size=batch_size)
        emb = emb[[position[p] for _, p in chunk]] if len(position) < len(chunk) else emb
        with cat.transaction():
            insert(cat, [pid for pid, _ in chunk], model.fingerprint, emb)
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def encode_attributes(cat: Catalog, model, batch_size: int = 256, progress: bool = True) -> int:
    """Embed every attribute prompt that has no embedding for ``model`` yet; rebuild the indexes."""
    claim_model(cat, model)
    todo = tables.attributes_without_embedding(cat, model.fingerprint)
    n = _encode_missing(cat, model, todo, tables.insert_attribute_embeddings, "attributes", batch_size, progress)
    rebuild_attribute_indexes(cat, model.fingerprint)
    return n


def encode_class_prompts(cat: Catalog, model, batch_size: int = 256) -> int:
    """Embed the class prompts (templates) that have no embedding for ``model`` yet."""
    claim_model(cat, model)
    todo = tables.class_prompts_without_embedding(cat, model.fingerprint)
    return _encode_missing(cat, model, todo, tables.insert_class_prompt_embeddings, "class prompts", batch_size, False)


def claim_model(cat: Catalog, model) -> None:
    """The store's one model record: set by the first write, checked by every later one."""
    cat.claim_model(model.fingerprint, model.name, model.pretrained, model.embed_dim, model.image_size)


def prototype_attributes(cat: Catalog, model: str) -> tables.TextMatrix:
    """The attributes the class prototypes are made of: descriptors, else CuPL sentences."""
    return indexes.prototype_attributes(cat, model)


def rebuild_attribute_indexes(cat: Catalog, model: str) -> None:
    """faiss/attributes.index and faiss/class_prototypes.index (:mod:`stores.indexes`)."""
    indexes.rebuild_attribute_indexes(cat, model)


def import_attribute_file(
    cat: Catalog, model, path: str | Path, *, style: str | None = None, after_text: str = "", progress: bool = True,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES, awt_template: str | None = None,
) -> ImportReport:
    """``build-attributes --from-json``: read, store and encode a DCLIP/CuPL/AWT file.

    AWT's description files (style ``awt``) keep every text, blanks included (AWT encodes them),
    and are encoded as AWT does: ``"{template(c)}. {description}"``, the template being
    ``awt_template`` or AWT's own for the dataset the file is named after."""
    lists, report = read_attribute_lists(path, max_bytes)
    report.style = style or guess_style(lists, path)
    mapping = lists if report.style == AWT_STYLE else drop_blank_texts(lists, report)
    template = AWT_DEFAULT_TEMPLATE
    if report.style == AWT_STYLE:
        template = awt_template or awt_template_for(path) or AWT_DEFAULT_TEMPLATE
        if "{}" not in template:
            raise InputError(f"--awt-template {template!r}: put {{}} where the class name goes.")
        report.class_template = template
    claim_model(cat, model)
    report.attributes = add_attributes(
        cat, mapping, source=f"file:{Path(path).name}", style=report.style, prompt_version="file", after_text=after_text,
        class_template=template,
    )
    encode_attributes(cat, model, progress=progress)
    return report
