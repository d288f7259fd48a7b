"""The baselines: CLIP, CLIP-E, DCLIP, CuPL, WCA, WaffleCLIP and name-free DCLIP (full-view scores;
WCA also reads the crops). The math is :mod:`queries.baselines`."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ...settings import setting
from . import fields, texts
from .registry import CROP_KINDS, Method, register


@dataclass(frozen=True)
class TemplatesConfig(fields.RankedConfig):
    templates: str = setting("openai", "clip-e templates: openai (80), simple (7), or a text file with one {} template a "
                                  "line.")


@dataclass(frozen=True)
class WcaConfig(fields.RankedConfig):
    wca_score: str = setting("code", "WCA scoring: code (the released code's) or paper (the paper's formula).",
                        choices=("code", "paper"))
    seed: int = fields.seed()
    wca_patch_n: int = setting(60, "WCA: crops drawn (with replacement) per run.", lo=1, hi=100_000, cli=False)
    wca_runs: int = setting(20, "WCA: independent crop draws, averaged.", lo=1, hi=1000, cli=False)
    wca_image_scale: float = setting(math.exp(4.0), "WCA: crop-weight softmax scale (e^4).", lo=0.0, hi=1e4, lo_open=True,
                                cli=False)
    wca_text_scale: float = setting(math.exp(2.0), "WCA: sentence-weight softmax scale (e^2).", lo=0.0, hi=1e4,
                               lo_open=True, cli=False)


@dataclass(frozen=True)
class WaffleConfig(fields.RankedConfig):
    seed: int = fields.seed()
    waffle_count: int = setting(15, "waffle: random-word and random-character descriptor pairs per class (15 -> 30 "
                               "prompts).", lo=1, hi=1000)
    waffle_seeds: int = setting(1, "waffle: seeds to run (seed, seed+1, ...), one run each; evaluate reports acc1 mean ± "
                              "std over them.", lo=1, hi=100)
    waffle_template: str = setting("paper", "waffle: prompt form: paper ('A photo of a {c}, which has {random}.', "
                                   "WaffleCLIP's default) or dclip ('{c}, which has {random}', as the store's "
                                   "descriptors).", choices=("paper", "dclip"))
    waffle_characters: str = setting("descriptors", "waffle: alphabet of the random-character descriptors: descriptors "
                                     "(every character of the store's descriptors, as WaffleCLIP's code; its sentences "
                                     "when it has none) or a-z.", choices=("descriptors", "a-z"))


@dataclass(frozen=True)
class NamelessConfig(fields.RankedConfig):
    nameless: str = setting("photo", "dclip-nameless: photo = each descriptor alone plus one 'a photo of a {c}.' per class "
                       "(arXiv 2412.11917); none = the descriptors alone, no class name anywhere.",
                       choices=("photo", "none"))


def _prompt_scores(ctx, batch, rows) -> None:
    """Cosine to each class's text, a template ensemble being normalize(mean_t normalize(emb))
    per class: the same segment mean as CuPL's."""
    # heavy: imported on use
    from queries import baselines

    class_text = baselines.cupl_class_text(ctx.texts.attrs.embeddings, ctx.cls_index, len(ctx.classes))
    ctx.add_top_k(rows, batch.image_ids, baselines.clip_scores(batch.full, class_text))


def _dclip_scores(ctx, batch, rows) -> None:
    """The mean of cosines over each class's texts (DCLIP; WaffleCLIP's and the name-free ones too)."""
    # heavy: imported on use
    from queries import baselines

    ctx.add_top_k(rows, batch.image_ids, baselines.dclip_scores(batch.full, ctx.texts.attrs.embeddings, ctx.cls_index,
                                                                len(ctx.classes)))


def _cupl_scores(ctx, batch, rows) -> None:
    # heavy: imported on use
    from queries import baselines

    ctx.add_top_k(rows, batch.image_ids, baselines.cupl_scores(batch.full, ctx.texts.attrs.embeddings, ctx.cls_index,
                                                               len(ctx.classes)))


def _wca_scores(ctx, batch, rows) -> None:
    """WCA's weighted crops x sentences; each random draw's winner goes to ``sample_predictions``."""
    # heavy: imported on use
    import numpy as np

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
    return [replace(config, seed=config.seed + i) for i in range(config.waffle_seeds)]


register(Method("clip", "CLIP: cosine to 'a photo of a {c}.'.", texts.photo, _prompt_scores, fields.RankedConfig,
                needs_text_encoder=True))
register(Method("clip-e", "CLIP with a template ensemble (--templates).", texts.template_ensemble, _prompt_scores,
                TemplatesConfig, needs_text_encoder=True))
register(Method("dclip", "DCLIP: mean cosine over the class's descriptors.", texts.descriptors, _dclip_scores,
                fields.RankedConfig))
register(Method("cupl", "CuPL: cosine to the class's mean sentence.", texts.sentences, _cupl_scores,
                fields.RankedConfig))
register(Method("wca", "WCA: crops weighted against sentences weighted by the class prompt.",
                texts.sentences_and_photo, _wca_scores, WcaConfig, region_kinds=CROP_KINDS,
                region_hint="crops (index-images --regions crops)", needs_text_encoder=True))
register(Method("waffle", "WaffleCLIP: DCLIP over random-word descriptors (--waffle-*).", texts.waffle, _dclip_scores,
                WaffleConfig, needs_text_encoder=True, runs=_waffle_seeds))
register(Method("dclip-nameless", "DCLIP over descriptors without the class name (--nameless).", texts.nameless,
                _dclip_scores, NamelessConfig, needs_text_encoder=True))
