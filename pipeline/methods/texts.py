"""Which stored texts a method scores against: the ``texts`` of each :class:`~.registry.Method`.

Each builder takes ``(cat, config, model, name)`` and returns :class:`~.registry.MethodTexts`;
class prompts (every text that is not a user attribute) are encoded on first use, in
``class_prompts``, which needs the text encoder (``model``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..errors import InputError
from ..inputs import read_text_bounded
from ..names import check_text, norm_class_name
from ..stages.attributes import PHOTO_PROMPTS, add_class_prompts, add_class_texts, dclip_sentence, encode_class_prompts
from ..stages.control_prompts import DCLIP_TEMPLATE, WAFFLE_TEMPLATE, load_random_words, waffle_prompts
from .registry import MethodTexts

CLIP_TEMPLATE = "a photo of a {}."


def load_templates(spec: str) -> list[str]:
    """'openai' -> open_clip's 80 ImageNet templates; 'simple' -> its 7; else a file, one per line with {}."""
    if spec in ("openai", "simple"):
        import open_clip

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


def ensemble_set_name(templates: str) -> str:
    """The template set name of a ``--templates`` ensemble."""
    return f"ensemble-{Path(templates).name}"


def encode_missing_prompts(cat: Catalog, model, method: str) -> None:
    """Encode the class prompts that have no embedding yet (the text encoder is needed then)."""
    if not tables.class_prompts_without_embedding(cat, cat.model):
        return
    if model is None:
        raise StoreError(f"--method {method} needs the text encoder to write class prompts; "
                         f"pass --model/--pretrained of this store ({cat.model}).")
    encode_class_prompts(cat, model)


def class_prompts(cat: Catalog, model, templates: list[str], template_set: str, method: str) -> tables.TextMatrix:
    """The class prompts of ``template_set`` (written and encoded when missing)."""
    fp = cat.model
    have = tables.class_prompt_matrix(cat, fp, template_set)
    if len(have) < tables.class_count(cat) * len(templates):
        if model is None:
            raise StoreError(f"--method {method} needs the text encoder to write class prompts; "
                             f"pass --model/--pretrained of this store ({fp}).")
        add_class_prompts(cat, templates, template_set)
        encode_class_prompts(cat, model)
        have = tables.class_prompt_matrix(cat, fp, template_set)
    return have


def photo_prompts(cat: Catalog, model, method: str) -> tables.TextMatrix:
    """The "a photo of a {c}." prompt of every class."""
    return class_prompts(cat, model, [CLIP_TEMPLATE], PHOTO_PROMPTS, method)


def concat(a: tables.TextMatrix, b: tables.TextMatrix) -> tables.TextMatrix:
    return tables.TextMatrix(np.concatenate([a.ids, b.ids]), np.concatenate([a.class_ids, b.class_ids]),
                             np.concatenate([a.embeddings, b.embeddings]))


def stored_attributes(cat: Catalog, first: str, second: str) -> tuple[tables.TextMatrix, str]:
    """The encoded attributes of style ``first``, else (said in the kind) of style ``second``."""
    attrs, kind = tables.attribute_matrix(cat, cat.model, first), first
    if len(attrs) == 0:  # a store with only the other style: use it, and say so in params
        attrs, kind = tables.attribute_matrix(cat, cat.model, second), f"{second} (no {first} in the store)"
    if len(attrs) == 0:
        raise StoreError("No encoded attributes in the store; run `pipeline build-attributes` first.")
    return attrs, kind


def descriptors(cat: Catalog, config, model, method: str) -> MethodTexts:
    """The descriptors (CuPL sentences in a store that has no descriptors)."""
    return MethodTexts(*stored_attributes(cat, "descriptors", "sentences"))


def sentences(cat: Catalog, config, model, method: str) -> MethodTexts:
    """The CuPL sentences (descriptors in a store that has none)."""
    return MethodTexts(*stored_attributes(cat, "sentences", "descriptors"))


def sentences_and_photo(cat: Catalog, config, model, method: str) -> MethodTexts:
    """The CuPL sentences, plus the "a photo of a {c}." prompt that weights them (WCA)."""
    attrs, kind = stored_attributes(cat, "sentences", "descriptors")
    return MethodTexts(attrs, kind, photo_prompts(cat, model, method))


def photo(cat: Catalog, config, model, method: str) -> MethodTexts:
    """The class prompt "a photo of a {c}." (template set ``clip``)."""
    return MethodTexts(photo_prompts(cat, model, method), f"class prompts {PHOTO_PROMPTS}")


def template_ensemble(cat: Catalog, config, model, method: str) -> MethodTexts:
    """``config.templates``' ensemble (template set ``ensemble-<name>``)."""
    name = ensemble_set_name(config.templates)
    return MethodTexts(class_prompts(cat, model, load_templates(config.templates), name, method), f"class prompts {name}")


def _descriptor_after_text(cat: Catalog) -> str:
    """What build-attributes appended to the store's descriptor prompts (``--after-text``, "."
    for ImageNet), read back from a stored prompt, so waffle's prompts take the same form."""
    for name, rows in tables.attributes_by_class(cat, "descriptors").items():
        for text, prompt in rows:
            if text.strip():
                head = f"{name}, {dclip_sentence(text)}"
                return prompt[len(head):] if prompt.startswith(head) else ""
    return ""


def waffle(cat: Catalog, config, model, method: str) -> MethodTexts:
    """WaffleCLIP's random descriptors for the store's classes (seed ``config.seed``), stored as
    class prompts (template set ``waffle:<seed>:<digest>``, a function of the class names, the
    seed, the count and the template)."""
    names = tables.class_names(cat)
    if not names:
        raise StoreError("No classes in the store; run `pipeline build-attributes` first.")
    template = WAFFLE_TEMPLATE if config.waffle_template == "paper" else DCLIP_TEMPLATE + _descriptor_after_text(cat)
    w = waffle_prompts(list(names.values()), load_random_words(), count=config.waffle_count, seed=config.seed,
                       template=template)
    digest = hashlib.sha256(json.dumps([w.descriptors, template]).encode()).hexdigest()[:8]
    template_set = f"waffle:{config.seed}:{digest}"
    # one template per random descriptor, with {} where the class name goes (as the CLIP templates)
    templates = [template.format(name="{}", sentence=dclip_sentence(d)) for d in w.descriptors]
    attrs = class_prompts(cat, model, templates, template_set, method)
    extra = {"waffle": {k: w.params[k] for k in ("n_words", "word_length", "n_groups", "n_chars", "count", "seed")}
             | {"template": template, "word_list": "random-words-v1", "descriptors": w.descriptors}}
    return MethodTexts(attrs, f"class prompts {template_set}", extra=extra)


def nameless(cat: Catalog, config, model, method: str) -> MethodTexts:
    """Class-name-free prompts: each stored descriptor alone (set ``nameless``), plus the
    "a photo of a {c}." prompt once per class when ``config.nameless == "photo"`` (arXiv 2412.11917)."""
    by_class = tables.attributes_by_class(cat, "descriptors")
    if not by_class:
        raise StoreError(f"--method {method} needs descriptors (a DCLIP-style file); the store has none.")
    ids = tables.class_ids_by_norm(cat)
    texts = {ids[norm_class_name(name)]: [(text.strip(), text.strip()) for text, _ in rows if text.strip()]
             for name, rows in by_class.items()}
    add_class_texts(cat, texts, "nameless")
    encode_missing_prompts(cat, model, method)
    attrs = tables.class_prompt_matrix(cat, cat.model, "nameless")
    if config.nameless == "photo":
        return MethodTexts(concat(attrs, photo_prompts(cat, model, method)), f"class prompts nameless+{PHOTO_PROMPTS}")
    empty = sorted(set(texts) - set(attrs.class_ids.tolist()))
    if empty:
        names = tables.class_names(cat)
        raise InputError(f"--nameless none: {len(empty)} class(es) have no descriptor to score by "
                         f"({', '.join(names[c] for c in empty[:5])}); use --nameless photo.")
    return MethodTexts(attrs, "class prompts nameless")
