"""LaZSL: optimal transport between crops and a class's descriptors, on a Faiss shortlist
(:mod:`queries.lazsl`)."""
from __future__ import annotations

from stores.results import text_ids

from ..config import MethodConfig
from . import texts
from .registry import CROP_KINDS, Method, register


def _lazsl_scores(ctx, batch, rows) -> None:
    from queries import lazsl

    config = ctx.config
    cols = ctx.spec.region_columns(batch)
    cand = ctx.shortlist(batch.full, ctx.k)
    res = lazsl.lazsl_scores(
        batch.full, batch.embeddings[:, cols], ctx.texts.attrs.embeddings, ctx.cls_index, cand,
        theta=config.theta, eps=config.eps, gamma=config.gamma, max_iter=config.max_iter, tol=config.tol,
    )
    class_ids = ctx.classes[cand]
    rows.predictions(ctx.run_id, batch.image_ids, class_ids, res.scores, res.global_scores, res.local_scores)
    rows.alignments(ctx.run_id, batch.image_ids, class_ids, batch.region_ids[:, cols], res.plan, res.fused,
                    text_ids(ctx.texts.attrs.ids, res.attr_index), res.scores, config.alignments_top)


register(Method("lazsl", "LaZSL: transport between crops and descriptors on the Faiss shortlist (--theta, --eps).",
                texts.descriptors, _lazsl_scores, MethodConfig, region_kinds=CROP_KINDS,
                region_hint="regions besides the full view (index-images --regions crops|grid|patches)",
                shortlisted=True, writes_alignments=True, writes_contrasts=True, theta_field="theta"))
