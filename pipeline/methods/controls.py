"""Region controls of the binding methods (issue 23), no transport: DCLIP's score of each crop,
then the best crop (``best-region``) or the mean over crops (``crop-dclip``). A binding
method's gain over LaZSL is real only if it beats these (:mod:`queries.controls`)."""
from __future__ import annotations

from ..config import MethodConfig
from . import texts
from .registry import CROP_KINDS, PART_KINDS, Method, register


def _kinds(config) -> tuple[str, ...]:
    return PART_KINDS if config.control_parts else CROP_KINDS


def _control(score):
    def scorer(ctx, batch, rows) -> None:
        cols = ctx.spec.region_columns(batch, kinds=_kinds(ctx.config))
        res = score(batch.embeddings[:, cols], ctx.texts.attrs.embeddings, ctx.cls_index, len(ctx.classes))
        ctx.add_top_k(rows, batch.image_ids, res.scores)

    scorer.__doc__ = score.__doc__
    return scorer


def _best_region(regions, attr, attr_class, n_classes):
    from queries.controls import best_region_scores

    return best_region_scores(regions, attr, attr_class, n_classes)


def _crop_dclip(regions, attr, attr_class, n_classes):
    from queries.controls import crop_dclip_scores

    return crop_dclip_scores(regions, attr, attr_class, n_classes)


HINT = "crops (index-images --regions crops; --n-parts for part crops with --control-parts)"
register(Method("best-region", "Control: the best single crop's DCLIP score per class (--control-parts adds parts).",
                texts.descriptors, _control(_best_region), MethodConfig, region_kinds=CROP_KINDS, region_hint=HINT))
register(Method("crop-dclip", "Control: the mean over crops of the DCLIP score (--control-parts adds parts).",
                texts.descriptors, _control(_crop_dclip), MethodConfig, region_kinds=CROP_KINDS, region_hint=HINT))
