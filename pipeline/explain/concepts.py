"""What ``explain`` and ``report`` add for (state, object) pairs and for mutual knowledge.

* a pair's prediction: its state and object, the MSCI split of its score into the pair branch
  and the state and object probabilities, and (``czsl-local``) the region that carried most of
  the state and the one that carried most of the object, with a map of each;
* a mutual-knowledge explanation (``pipeline mutual-knowledge``): the vision, shared and
  language concept sets and the MI score; ``explain IMAGE --concepts`` computes it for that
  image when the store does not have it yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from queries.attribution import attribution_map, scale_boxes
from stores import explanations, tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..names import escape_controls


# ---- pairs ----------------------------------------------------------------------------------
def pair_maps(cat: Catalog, pair: dict, image_id: int, sx: float, sy: float, height: int, width: int):
    """(state map, object map, boxes of the carrying regions in render pixels) from ``pair_regions``."""
    if pair is None or len(pair["region_ids"]) == 0:
        return None
    ids, _, boxes = tables.image_regions(cat, image_id)
    pos = np.searchsorted(ids, pair["region_ids"])
    b = scale_boxes(boxes[pos], sx, sy)
    return (attribution_map(b, pair["state_weight"], height, width), attribution_map(b, pair["object_weight"], height, width),
            b)


def pair_lines(pair: dict | None, boxes: np.ndarray | None = None, scale: float = 1.0) -> list[str]:
    """Text lines of a pair's explanation (``explain``)."""
    if pair is None:
        return []
    out = [f"pair   state {escape_controls(pair['state'])} + object {escape_controls(pair['object'])}"
           + ("" if pair.get("seen") is None else " (seen pair)" if pair["seen"] else " (unseen pair)")]
    br = pair.get("branches")
    if br:
        t = br["logit_scale"] or 0.0
        p = br["pair_weight"] * t * br["pair_score"]
        fs = br["state_weight"] * br["state_prob"] if br["state_weight"] else 1.0
        fo = br["object_weight"] * br["object_prob"] if br["object_weight"] else 1.0
        out.append(f"  score {p + fs * fo:.4f} = pair branch {br['pair_weight']:g}·{t:.1f}·{br['pair_score']:.4f} "
                   f"+ state P({escape_controls(pair['state'])}) {br['state_prob']:.3f}·{br['state_weight']:g} "
                   f"× object P({escape_controls(pair['object'])}) {br['object_prob']:.3f}·{br['object_weight']:g}")
    if len(pair["region_ids"]):
        for what, w in (("state", pair["state_weight"]), ("object", pair["object_weight"])):
            i = int(np.argmax(w))
            where = ""
            if boxes is not None:
                x0, y0, x1, y1 = (v / scale for v in boxes[i])
                where = f" (box {x0:.0f},{y0:.0f}-{x1:.0f},{y1:.0f})"
            out.append(f"  {what:6s} carried most by region {int(pair['region_ids'][i])}{where}: {100 * w[i]:.1f}% of the "
                       f"{what} attributes' transport mass, over {int((w > 0).sum())} regions")
    return out


# ---- mutual knowledge ------------------------------------------------------------------------
@dataclass
class ConceptView:
    """One stored mutual-knowledge explanation, ready to print or render."""

    run_id: int
    image_id: int
    class_name: str
    mi: float
    deletion_auc: float
    deletion_curve: list[float]
    vision: list[str]
    shared: list[str]
    language: list[str]
    rows: list[dict] = field(default_factory=list, repr=False)  # the concepts rows
    settings: dict = field(default_factory=dict)

    @property
    def vision_only(self) -> list[str]:
        return [c for c in self.vision if c not in self.shared]

    @property
    def language_only(self) -> list[str]:
        return [c for c in self.language if c not in self.shared]

    def lines(self) -> list[str]:
        q = lambda xs: "; ".join(escape_controls(x) for x in xs) or "-"  # noqa: E731
        curve = " → ".join(f"{v:.2f}" for v in self.deletion_curve)
        return [f"mutual knowledge (run {self.run_id}, class {escape_controls(self.class_name)}): MI {self.mi:.3f}, "
                f"concept-deletion AUC {self.deletion_auc:.3f}",
                f"  vision only   {q(self.vision_only)}",
                f"  shared        {q(self.shared)}",
                f"  language only {q(self.language_only)}",
                f"  deletion curve {curve}"]


def concept_view(cat: Catalog, run_id: int, image_id: int) -> ConceptView | None:
    row = tables.mutual_knowledge_row(cat, run_id, image_id)
    if row is None:
        return None
    rows = tables.concept_rows(cat, run_id, image_id)
    vision = [r["concept"] for r in rows if r["side"] == "vision"]
    keys = ("n_parts", "part_topk", "language_topk", "clustering", "foreground", "class_text", "model")
    return ConceptView(run_id, image_id, row["class_name"], row["mi"], row["deletion_auc"], list(row["deletion_curve"]),
                       vision, [c for c in vision if any(r["shared"] for r in rows if r["concept"] == c)],
                       [r["concept"] for r in rows if r["side"] == "language"], rows, {k: row[k] for k in keys})


def concept_run(cat: Catalog, image_id: int, run_id: int | None) -> tables.RunRecord:
    """``explain-concepts``: the given run, else the latest run that explained this image, else the latest run."""
    if run_id is not None:
        run = tables.get_run(cat, run_id)
        if run is None:
            raise StoreError(f"No run {run_id}; `pipeline sql \"select run_id, method from runs\"` lists them.")
        return run
    latest = explanations.latest_concept_run_id(cat, image_id)
    run = tables.get_run(cat, latest) if latest is not None else tables.latest_run(cat)
    if run is None:
        raise StoreError("No runs in the store; run `pipeline classify` first.")
    return run


def explain_image_concepts(cat: Catalog, image, run_id: int | None = None, *, model=None, config=None) -> ConceptView:
    """The image's mutual-knowledge explanation in a run, computed (and stored) first if missing;
    ``model`` is the store's model, or a callable that loads it (called only when needed)."""
    # heavy: imported on use (mutual knowledge: torch, faiss; resolve: PIL)
    from ..stages.mutual_knowledge import ConceptConfig, explain_concepts
    from .resolve import resolve_image

    img = resolve_image(cat, image)
    run = concept_run(cat, img["image_id"], run_id)
    view = concept_view(cat, run.run_id, img["image_id"])
    if view is None:
        if callable(model) and not hasattr(model, "encode_texts"):
            model = model()
        if model is None:
            raise StoreError(f"Run {run.run_id} has no mutual-knowledge explanation of {img['path']}; "
                             f"`pipeline mutual-knowledge --run {run.run_id}` makes them.")
        explain_concepts(cat, model, run.run_id, config=config or ConceptConfig(), image_ids=[img["image_id"]],
                         progress=False)
        view = concept_view(cat, run.run_id, img["image_id"])
    return view
