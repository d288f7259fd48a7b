"""Object-bound transport: LaZSL inside every candidate object (a crop with enough part crops
inside it); the class score is the best object's (:mod:`queries.binding`)."""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import setting
from ...errors import InputError
from . import texts
from .fields import LocalConfig
from .registry import PART_KINDS, Method, chunks, register


@dataclass(frozen=True)
class ObjectBoundConfig(LocalConfig):
    contain: float = setting(0.75, "object-bound: a smaller region is a part of an object when this share of its area lies "
                              "inside the object's box.", lo=0.0, hi=1.0, lo_open=True)
    min_parts: int = setting(2, "object-bound: parts a region needs to be a candidate object.", lo=1, hi=100_000)


def _object_bound_scores(ctx, batch, rows) -> None:
    # heavy: imported on use
    import numpy as np

    from queries import binding
    from stores.results import text_ids

    config = ctx.config
    cols = ctx.spec.region_columns(batch, with_full=True)
    n_max = int(np.bincount(ctx.cls_index).max())
    for sl in chunks(len(batch.image_ids), ctx.k * len(cols) * n_max):
        cand = ctx.shortlist(batch.full[sl], ctx.k)
        try:
            res = binding.object_bound_scores(
                batch.embeddings[sl][:, cols], batch.boxes[sl][:, cols], ctx.texts.attrs.embeddings, ctx.cls_index,
                cand, theta=config.theta, eps=config.eps, gamma=config.gamma, contain=config.contain,
                min_parts=config.min_parts, max_iter=config.max_iter, tol=config.tol,
            )
        except ValueError as exc:
            if "no region has" not in str(exc):
                raise
            raise InputError(f"{ctx.method}: {exc} (or lower --min-parts).") from None
        ids, region_ids, class_ids = batch.image_ids[sl], batch.region_ids[sl][:, cols], ctx.classes[cand]
        rows.predictions(ctx.run_id, ids, class_ids, res.scores, res.global_scores, res.local_scores)
        rows.alignments(ctx.run_id, ids, class_ids, region_ids, res.plan, res.similarity,
                        text_ids(ctx.texts.attrs.ids, res.text_index), res.scores, config.alignments_top)
        b = np.arange(len(ids))[:, None]
        rows.object_bindings(ctx.run_id, ids, class_ids, region_ids[b, res.region],
                             np.take_along_axis(res.n_parts, res.region, 1), res.scores)


register(Method("object-bound", "Object-bound transport: LaZSL inside the best candidate object (--contain, "
                "--min-parts).", texts.descriptors, _object_bound_scores, ObjectBoundConfig, region_kinds=PART_KINDS,
                region_hint="crops inside the full view (index-images --regions crops, and --n-parts for smaller part "
                "crops)", shortlisted=True, writes_alignments=True, writes_contrasts=True,
                writes_object_bindings=True, theta_field="theta"))
