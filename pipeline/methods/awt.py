"""AWT: augmented views x descriptions, entropy-weighted, by optimal transport (:mod:`queries.awt`)."""
from __future__ import annotations

import numpy as np

from stores.errors import StoreError
from stores.results import text_ids

from ..config import MethodConfig
from . import texts
from .registry import VIEW_KINDS, Method, MethodTexts, chunks, register


def _awt_texts(cat, config, model, method: str) -> MethodTexts:
    """The descriptors, plus the "a photo of a {c}." prompt as one more text per class
    (``--awt-texts descriptors+prompt``, AWT's code)."""
    attrs, kind = texts.stored_attributes(cat, "descriptors", "sentences")
    with_photo = config.awt_texts == "descriptors+prompt"
    return MethodTexts(attrs, kind, texts.photo_prompts(cat, model, method) if with_photo else None)


def _logit_scale(config, model) -> dict:
    if config.awt_logit_scale > 0:
        return {"awt_logit_scale": float(config.awt_logit_scale)}
    if model is None:
        raise StoreError("--method awt takes its logit scale from the model; pass --model/--pretrained of this "
                         "store, or --awt-logit-scale.")
    return {"awt_logit_scale": float(model.model.logit_scale.exp().detach().float().cpu())}


def _awt_scores(ctx, batch, rows) -> None:
    from queries import awt

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
        prompt_part = pick(res.prompt_scores)
        ids = batch.image_ids[sl]
        # global part: the class prompt's column; local part: the descriptions' (they sum to the score)
        rows.predictions(ctx.run_id, ids, classes[order], scores, prompt_part, scores - prompt_part)
        text_index = res.text_index[order]  # (b, k, N): rows of texts; -2 the class prompt, -1 padding
        rows.alignments(ctx.run_id, ids, classes[order], batch.region_ids[sl][:, cols], pick(res.plan),
                        pick(res.similarity), text_ids(tx.attrs.ids, text_index), scores, config.alignments_top)


register(Method("awt", "AWT: augmented views x descriptions, entropy-weighted transport (needs index-images "
                "--n-views).", _awt_texts, _awt_scores, MethodConfig, region_kinds=VIEW_KINDS,
                region_hint="AWT's views (index-images --n-views 50)", writes_alignments=True,
                needs_text_encoder=True, prepare=_logit_scale))
