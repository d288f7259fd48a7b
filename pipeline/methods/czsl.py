"""Compositional (state, object) pair methods: a stage of their own
(:func:`pipeline.stages.compositional.classify_compositional`), MSCI-style branches."""
from __future__ import annotations

from functools import partial

from ..config import MethodConfig
from .registry import CROP_KINDS, Method, register


def _stage(cat, method: str, config, *, pair_style: str, local: bool, **kwargs):
    from ..stages.compositional import classify_compositional

    return classify_compositional(cat, method, config, pair_style=pair_style, local=local, **kwargs)


register(Method("czsl-clip", "Pairs: CLIP prompts for the pair, its state and its object.", None, None, MethodConfig,
                needs_text_encoder=True, stage=partial(_stage, pair_style="prompts", local=False)))
register(Method("czsl-dclip", "Pairs: DCLIP descriptors of the pair, its state and its object.", None, None,
                MethodConfig, needs_text_encoder=True, stage=partial(_stage, pair_style="descriptors", local=False)))
register(Method("czsl-local", "Pairs: LaZSL transport of crops to the pair's descriptors; regions carry the state "
                "and the object.", None, None, MethodConfig, region_kinds=CROP_KINDS, writes_alignments=True,
                needs_text_encoder=True, stage=partial(_stage, pair_style="descriptors", local=True)))
