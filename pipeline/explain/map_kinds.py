"""The one vocabulary of attribution-map kinds.

Every surface names a map by one of these words: ``explain --maps``, ``report --maps``,
``faithfulness --maps``, the ``map_kind`` column of the faithfulness tables, the JSON of
``explain --format json`` and the lines ``explain`` and ``report`` print. Nothing else
defines a kind name.
"""
from __future__ import annotations

from ..errors import InputError

PLAN_DENSE = "plan-dense"
CROP_BOXES = "crop-boxes"
OCCLUSION = "occlusion"
GRADCAM = "gradcam"
SIM_PLAIN = "sim-plain"
SIM_SCLIP = "sim-sclip"

#: what each kind is, one line each (help texts, docs, the report)
DESCRIPTIONS = {
    PLAN_DENSE: "the plan's crop masses placed inside each crop by its dense patch tokens (the default)",
    CROP_BOXES: "the plan's crop masses spread evenly over whole crop boxes",
    OCCLUSION: "drop of the class's LaZSL probability under a blurred window (slow)",
    GRADCAM: "Grad-CAM on the image tower's last block for the class's text",
    SIM_PLAIN: "cosine of the full view's plain last-layer patch tokens to the text",
    SIM_SCLIP: "the same with SCLIP-style patch tokens",
}
MAP_KINDS = tuple(DESCRIPTIONS)
#: the kinds ``explain`` and ``report`` draw (they come from the run's stored plan, or re-run it)
DRAWN_KINDS = (PLAN_DENSE, CROP_BOXES, OCCLUSION)
DEFAULT_KIND = PLAN_DENSE

#: the random baseline each kind is paired with: a random map at the same spatial granularity
RANDOM_OF = {
    PLAN_DENSE: "random-plan-dense",  # U(0,1) mass per crop and per patch token inside the same crops
    CROP_BOXES: "random-crop-boxes",  # U(0,1) mass per crop over the same whole boxes
    OCCLUSION: "random-grid",  # U(0,1) on an 8x8 grid, bilinear (the occlusion windows' scale)
    GRADCAM: "random-grid",
    SIM_PLAIN: "random-grid",
    SIM_SCLIP: "random-grid",
}
RANDOM_KINDS = tuple(dict.fromkeys(RANDOM_OF.values()))

#: ``faithfulness --baseline``: what deleted pixels become
BASELINES = ("blur", "mean", "black")
#: ``faithfulness --scorer``: the run's own method re-run on perturbed pixels (default), or the global DCLIP probability
#: the scorer of deletion/insertion: the run's own method, or the global DCLIP probability
OWN_METHOD_SCORER, DCLIP_SCORER = "method", "dclip"
SCORERS = (OWN_METHOD_SCORER, DCLIP_SCORER)


def parse_kinds(text: str | None, *, allowed: tuple[str, ...] = MAP_KINDS, option: str = "--maps") -> list[str]:
    """Comma-separated kind names (or ``all``) -> the kinds in vocabulary order; bad names are one error."""
    if text is None or text.strip() == "":
        return [DEFAULT_KIND]
    if text.strip() == "all":
        return list(allowed)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in allowed]
    if bad:
        raise InputError(f"{option}: unknown map kind(s) {', '.join(bad)}; use some of {', '.join(allowed)} or all.")
    return [k for k in allowed if k in kinds]


def check_drawn_kind(kind: str) -> str:
    if kind not in DRAWN_KINDS:
        raise InputError(f"--maps must be one of {', '.join(DRAWN_KINDS)} (got {kind!r}).")
    return kind
