"""AWT: augmented views x descriptions, entropy-weighted, by optimal transport (:mod:`queries.awt`)."""
from __future__ import annotations

from dataclasses import dataclass

from stores.errors import StoreError

from ...settings import setting
from . import texts
from .fields import SinkhornConfig
from .registry import VIEW_KINDS, Method, MethodTexts, chunks, register


@dataclass(frozen=True)
class AwtConfig(SinkhornConfig):
    awt_texts: str = setting("awt", "awt: its texts per class: awt = AWT's own descriptions (build-attributes "
                             "--from-json awt_cub.json), each 'a photo of the {c}. {d}' with the dataset's class "
                             "template, the first --awt-descriptions of them plus the class prompt, as AWT's code (a "
                             "store without them: descriptors+prompt, noted); descriptors+prompt = the descriptors "
                             "plus 'a photo of a {c}.'; descriptors = the descriptors alone.",
                             choices=("awt", "descriptors+prompt", "descriptors"))
    awt_descriptions: int = setting(50, "awt (--awt-texts awt): the first N descriptions of each class, as AWT's "
                                        "--num_descriptor (50); 0 = all.", lo=0, hi=100_000)
    awt_view_temperature: float = setting(0.5, "awt: view weights softmax(-entropy / τ) (AWT's 0.5).", lo=0.0, hi=1e4,
                                     lo_open=True)
    awt_text_temperature: float = setting(0.5, "awt: text weights softmax(-entropy / τ) (AWT's 0.5).", lo=0.0, hi=1e4,
                                     lo_open=True)
    awt_logit_scale: float = setting(0.0, "awt: logit scale of its entropies (0 = the model's logit_scale.exp(), CLIP's "
                                     "100).", lo=0.0, hi=1e4)


def _own_descriptions(cat, config, model, method: str) -> MethodTexts | None:
    """AWT's texts as its code builds them: the store's AWT descriptions (style ``awt``), the
    first ``config.awt_descriptions`` of each class, and each class's prompt ``template(c) + "."``
    (set ``awt-class``) as the class prompt; None when the store has no AWT descriptions."""
    # heavy: imported on use
    import numpy as np

    from stores import tables

    from ..attributes import add_class_texts, awt_class_prompts, first_per_class

    attrs = tables.attribute_matrix(cat, cat.model, "awt")
    if len(attrs) == 0:
        return None
    keep = first_per_class(attrs.class_ids, config.awt_descriptions)
    attrs = tables.TextMatrix(attrs.ids[keep], attrs.class_ids[keep], attrs.embeddings[keep])
    prompts = awt_class_prompts(cat)
    add_class_texts(cat, prompts, "awt-class")
    texts.encode_missing_prompts(cat, model, method)
    photo = tables.class_prompt_matrix(cat, cat.model, "awt-class")
    mine = np.isin(photo.class_ids, attrs.class_ids)
    photo = tables.TextMatrix(photo.ids[mine], photo.class_ids[mine], photo.embeddings[mine])
    templates = sorted({t for items in prompts.values() for t, _ in items})
    return MethodTexts(attrs, "awt", photo, extra={"awt": {"descriptions": config.awt_descriptions,
                                                          "class_templates": templates}})


def _awt_texts(cat, config, model, method: str) -> MethodTexts:
    """``--awt-texts awt`` (default): AWT's own descriptions and class prompts; a store without
    them falls back to ``descriptors+prompt`` and says so. ``descriptors+prompt``: the
    descriptors plus the "a photo of a {c}." prompt as one more text per class; ``descriptors``:
    the descriptors alone."""
    if config.awt_texts == "awt":
        own = _own_descriptions(cat, config, model, method)
        if own is not None:
            return own
    attrs, kind = texts.stored_attributes(cat, "descriptors", "sentences")
    with_photo = config.awt_texts in ("awt", "descriptors+prompt")
    out = MethodTexts(attrs, kind, texts.photo_prompts(cat, model, method) if with_photo else None)
    if config.awt_texts == "awt":  # no AWT descriptions: said in the params and to the user
        out.kind += " (no AWT descriptions in the store: --awt-texts descriptors+prompt)"
        out.note = ("awt: the store has no AWT descriptions (build-attributes --from-json awt_<dataset>.json); "
                    "scoring its descriptors plus 'a photo of a {c}.' (--awt-texts descriptors+prompt)")
    return out


def _logit_scale(config, model) -> dict:
    if config.awt_logit_scale > 0:
        return {"awt_logit_scale": float(config.awt_logit_scale)}
    if model is None:
        raise StoreError("--method awt takes its logit scale from the model; pass --model/--pretrained of this "
                         "store, or --awt-logit-scale.")
    return {"awt_logit_scale": float(model.model.logit_scale.exp().detach().float().cpu())}


def _awt_scores(ctx, batch, rows) -> None:
    # heavy: imported on use
    import numpy as np

    from queries import awt
    from stores.results import text_ids

    config, classes, tx = ctx.config, ctx.classes, ctx.texts
    cols = ctx.spec.region_columns(batch, with_full=True)
    n = len(classes)
    prompts = None
    if tx.photo is not None:
        prompts = np.zeros((n, tx.attrs.embeddings.shape[1]), np.float32)
        prompts[np.searchsorted(classes, tx.photo.class_ids)] = tx.photo.embeddings
    n_texts = int(np.bincount(ctx.cls_index).max()) + (prompts is not None)
    for sl in chunks(len(batch.image_ids), n * len(cols) * n_texts):
        res = awt.awt_scores(
            batch.embeddings[sl][:, cols], tx.attrs.embeddings, ctx.cls_index, prompts, n_classes=n,
            logit_scale=ctx.extra["awt_logit_scale"], view_temperature=config.awt_view_temperature,
            text_temperature=config.awt_text_temperature, eps=config.eps, max_iter=config.max_iter, tol=config.tol,
        )
        order = np.argsort(-res.scores, axis=1, kind="stable")[:, : ctx.k]  # the top-k classes are stored
        pick = lambda x: np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)  # noqa: E731
        scores = pick(res.scores)
        prompt_part = pick(res.global_scores)
        ids = batch.image_ids[sl]
        # global part: the class prompt's column; local part: the descriptions' (they sum to the score)
        rows.predictions(ctx.run_id, ids, classes[order], scores, prompt_part, scores - prompt_part)
        text_index = res.text_index[order]  # (b, k, N): rows of texts; -2 the class prompt, -1 padding
        rows.alignments(ctx.run_id, ids, classes[order], batch.region_ids[sl][:, cols], pick(res.plan),
                        pick(res.similarity), text_ids(tx.attrs.ids, text_index), scores, config.alignments_top)


register(Method("awt", "AWT: augmented views x descriptions, entropy-weighted transport (needs index-images "
                "--n-views).", _awt_texts, _awt_scores, AwtConfig, region_kinds=VIEW_KINDS,
                region_hint="AWT's views (index-images --n-views 50)", writes_alignments=True,
                needs_text_encoder=True, prepare=_logit_scale))
