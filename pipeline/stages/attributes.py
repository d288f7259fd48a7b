"""Stage 1: class attributes -> rows in the catalog, embeddings, Faiss indexes.

Attributes come from a DCLIP-style ``{class: [descriptor, ...]}`` file, a CuPL-style
``{class: [sentence, ...]}`` file, or an LLM (:mod:`pipeline.stages.llm`). Whatever the
source, :func:`add_attributes` stores them and :func:`encode_attributes` embeds what is
missing and rebuilds the attribute and class-prototype indexes. Class-name templates
("a photo of a {c}.") are not attributes: :func:`add_class_prompts` keeps them in their own
table, so exports, prototypes and evaluate's ``templates`` see exactly the user's attributes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stores import indexes, tables
from stores.catalog import Catalog

from ..errors import InputError
from ..inputs import DEFAULT_MAX_FILE_BYTES, load_json_file
from ..names import check_text, clean_class_name, clean_text, escape_controls, norm_class_name

STYLES = ("descriptors", "sentences")


# ---- prompts ----------------------------------------------------------------------------
PHOTO_PROMPTS = "clip"  # template set of the "a photo of a {c}." class prompts (named after CLIP's prompt)


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


def render_prompt(class_name: str, text: str, style: str, after_text: str = "") -> str:
    """The exact string that is encoded for one attribute."""
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

    def lines(self) -> list[str]:
        out = [f"{self.classes} classes, {self.attributes} attributes ({self.style})"]
        if self.empty:
            out.append(f"{len(self.empty)} classes with an empty list (encoded by name only): {', '.join(self.empty[:10])}")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicate class names merged: {', '.join(self.duplicates[:10])}")
        return out


def guess_style(mapping: dict[str, list[str]]) -> str:
    """CuPL files hold full sentences (long, ending in '.'); DCLIP files hold short phrases."""
    texts = [t for v in mapping.values() for t in v if t.strip()]
    if not texts:
        return "descriptors"
    words = np.mean([len(t.split()) for t in texts])
    periods = np.mean([t.rstrip().endswith(".") for t in texts])
    return "sentences" if words >= 7 or periods > 0.5 else "descriptors"


def read_attribute_json(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[dict[str, list[str]], ImportReport]:
    """Read a DCLIP/CuPL JSON; merge names equal after normalisation and report them.

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
        name = clean_class_name(key, where=f"{path}: key {escape_controls(repr(key))}")
        value = [clean_text(v, f"{path}: key {escape_controls(repr(key))}, item {i + 1}") for i, v in enumerate(value)]
        if not name:
            raise InputError(f"{path}: an empty class name; every key must name a class.")
        norm = name.lower()
        if norm in merged:
            report.duplicates.append(name)
        else:
            merged[norm], display[norm] = [], name
        for v in value:
            v = v.strip()
            if v not in merged[norm]:
                merged[norm].append(v)
    out = {}
    for norm, texts in merged.items():
        nonempty = [t for t in texts if t]
        if not nonempty:
            report.empty.append(display[norm])
        out[display[norm]] = nonempty or [""]
    report.classes = len(out)
    report.attributes = sum(len(v) for v in out.values())
    return out, report


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
) -> int:
    """Insert the attributes not already stored (same class, text, style). Returns how many."""
    if style not in STYLES:
        raise InputError(f"Unknown style {style!r}; use one of {', '.join(STYLES)}.")
    check_text(after_text, "--after-text", "text")
    for cls, texts in mapping.items():  # the last door before the store: no control characters
        clean_class_name(cls, where="a class name")
        for text in texts:
            check_text(text, f"class {escape_controls(repr(cls))}", "attribute text")  # cleaned by the readers
    with cat.transaction():
        class_ids = upsert_classes(cat, list(mapping))
        names = tables.class_names(cat)
        have = tables.attribute_keys(cat, style)
        next_id = tables.next_attr_id(cat)
        rows = []
        for cls, texts in mapping.items():
            cid = class_ids[cls]
            for text in texts:
                if (cid, text) in have:
                    continue
                have.add((cid, text))
                rows.append(dict(attr_id=next_id, class_id=cid, text=text,
                                 prompt=render_prompt(names[cid], text, style, after_text), source=source,
                                 style=style, prompt_version=prompt_version))
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


def _encode_missing(cat: Catalog, model, todo: list[tuple[int, str]], insert, what: str, batch_size: int,
                    progress: bool) -> int:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"encode {what}", unit="text", disable=not progress or not todo)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        emb = model.encode_texts([p for _, p in chunk], batch_size=batch_size)
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
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> ImportReport:
    """``build-attributes --from-json``: read, store and encode a DCLIP/CuPL file."""
    mapping, report = read_attribute_json(path, max_bytes)
    report.style = style or guess_style(mapping)
    claim_model(cat, model)
    report.attributes = add_attributes(
        cat, mapping, source=f"file:{Path(path).name}", style=report.style, prompt_version="file", after_text=after_text
    )
    encode_attributes(cat, model, progress=progress)
    return report
