"""Compositional (state, object) pair methods: a stage of their own
(:func:`pipeline.stages.compositional.classify_compositional`), MSCI-style branches."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ...settings import setting
from .fields import LocalConfig
from .registry import CROP_KINDS, Method, register


@dataclass(frozen=True)
class PairConfig(LocalConfig):
    """MSCI's combination of the pair, state and object branches (θ, ε, γ: czsl-local's LaZSL)."""

    pair_weight: float = setting(1.0, "czsl-*: MSCI weight w_p of the pair branch, score = w_p·t·pair + (w_s·P_state)·"
                                 "(w_o·P_object).", lo=0.0, hi=1000.0)
    state_weight: float = setting(1.0, "czsl-*: MSCI weight w_s of the state branch's probability (0 leaves the factor "
                                  "out, as MSCI).", lo=0.0, hi=1000.0)
    object_weight: float = setting(1.0, "czsl-*: MSCI weight w_o of the object branch's probability (0 leaves the factor "
                                   "out).", lo=0.0, hi=1000.0)
    logit_scale: float = setting(0.0, "czsl-*: CLIP's logit scale t in the combination (0 = the model's own "
                                 "exp(logit_scale)).", lo=0.0, hi=1000.0)
    open_world: bool = setting(False, "czsl-*: score every stored pair, the open-world-only ones too (else the closed "
                                 "world).")
    feasibility_threshold: float = setting(-1.0, "czsl-* open world: leave out pairs whose name prompt is less similar "
                                            "than this to both its state's and its object's (-1 keeps every pair; seen "
                                            "pairs are always kept).", lo=-1.0, hi=1.0)


def _stage(cat, method: str, config, *, pair_style: str, local: bool, **kwargs):
    # heavy: imported on use
    from ..compositional import classify_compositional

    return classify_compositional(cat, method, config, pair_style=pair_style, local=local, **kwargs)


register(Method("czsl-clip", "Pairs: CLIP prompts for the pair, its state and its object.", None, None, PairConfig,
                needs_text_encoder=True, stage=partial(_stage, pair_style="prompts", local=False)))
register(Method("czsl-dclip", "Pairs: DCLIP descriptors of the pair, its state and its object.", None, None,
                PairConfig, needs_text_encoder=True, stage=partial(_stage, pair_style="descriptors", local=False)))
register(Method("czsl-local", "Pairs: LaZSL transport of crops to the pair's descriptors; regions carry the state "
                "and the object.", None, None, PairConfig, region_kinds=CROP_KINDS, writes_alignments=True,
                needs_text_encoder=True, stage=partial(_stage, pair_style="descriptors", local=True)))
