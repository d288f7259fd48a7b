"""The baselines: CLIP, CLIP-E, DCLIP, CuPL, WCA, WaffleCLIP and name-free DCLIP (full-view scores;
WCA also reads the crops). The math is :mod:`queries.baselines`."""
from __future__ import annotations

import numpy as np

from ..config import MethodConfig
from . import texts
from .registry import CROP_KINDS, Method, register


def _prompt_scores(ctx, batch, rows) -> None:
    """Cosine to each class's text, a template ensemble being normalize(mean_t normalize(emb))
    per class: the same segment mean as CuPL's."""
    from queries import baselines

    class_text = baselines.cupl_class_text(ctx.texts.attrs.embeddings, ctx.cls_index, len(ctx.classes))
    ctx.add_top_k(rows, batch.image_ids, baselines.clip_scores(batch.full, class_text))


def _dclip_scores(ctx, batch, rows) -> None:
    """The mean of cosines over each class's texts (DCLIP; WaffleCLIP's and the name-free ones too)."""
    from queries import baselines

    ctx.add_top_k(rows, batch.image_ids, baselines.dclip_scores(batch.full, ctx.texts.attrs.embeddings, ctx.cls_index,
                                                                len(ctx.classes)))


def _cupl_scores(ctx, batch, rows) -> None:
    from queries import baselines

    ctx.add_top_k(rows, batch.image_ids, baselines.cupl_scores(batch.full, ctx.texts.attrs.embeddings, ctx.cls_index,
                                                               len(ctx.classes)))


def _wca_scores(ctx, batch, rows) -> None:
    """WCA's weighted crops x sentences; each random draw's winner goes to ``sample_predictions``."""
    from queries import baselines

    config, n = ctx.config, len(ctx.classes)
    cols = ctx.spec.region_columns(batch)
    emb = ctx.texts.attrs.embeddings
    photo = np.zeros((n, emb.shape[1]), np.float32)
    photo[np.searchsorted(ctx.classes, ctx.texts.photo.class_ids)] = ctx.texts.photo.embeddings
    res = baselines.wca_scores(
        batch.full, batch.embeddings[:, cols], emb, ctx.cls_index, photo,
        image_scale=config.wca_image_scale, text_scale=config.wca_text_scale,
        patch_n=config.wca_patch_n, n_runs=config.wca_runs, seed=config.seed, score=config.wca_score,
    )
    rows.sample_predictions(ctx.run_id, batch.image_ids, ctx.classes[res.run_top1])
    ctx.add_top_k(rows, batch.image_ids, res.scores)


def _waffle_seeds(config) -> list:
    """One run per seed (seed, seed+1, ...); evaluate reports mean ± std over the group."""
    from dataclasses import replace

    return [replace(config, seed=config.seed + i) for i in range(config.waffle_seeds)]


register(Method("clip", "CLIP: cosine to 'a photo of a {c}.'.", texts.photo, _prompt_scores, MethodConfig,
                needs_text_encoder=True))
register(Method("clip-e", "CLIP with a template ensemble (--templates).", texts.template_ensemble, _prompt_scores,
                MethodConfig, needs_text_encoder=True))
register(Method("dclip", "DCLIP: mean cosine over the class's descriptors.", texts.descriptors, _dclip_scores,
                MethodConfig))
register(Method("cupl", "CuPL: cosine to the class's mean sentence.", texts.sentences, _cupl_scores, MethodConfig))
register(Method("wca", "WCA: crops weighted against sentences weighted by the class prompt.",
                texts.sentences_and_photo, _wca_scores, MethodConfig, region_kinds=CROP_KINDS,
                region_hint="crops (index-images --regions crops)", needs_text_encoder=True))
register(Method("waffle", "WaffleCLIP: DCLIP over random-word descriptors (--waffle-*).", texts.waffle, _dclip_scores,
                MethodConfig, needs_text_encoder=True, runs=_waffle_seeds))
register(Method("dclip-nameless", "DCLIP over descriptors without the class name (--nameless).", texts.nameless,
                _dclip_scores, MethodConfig, needs_text_encoder=True))
