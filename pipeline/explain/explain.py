"""``pipeline explain``: pixel-level attribution maps of one image's prediction.

Reads the run's ``alignments`` (the OT plan: which region carried which attribute, how
much), the image's ``regions`` (boxes) and the image itself; the maps are computed by
``queries.explain`` and written as PNG overlays (heatmap blended on the image):

* one per attribute of the class: region r's transport mass toward the attribute, spread
  over r's box and divided by how many of the plan's boxes cover each pixel;
* one for the class: each region's contribution above the class's average similarity
  (``queries.explain.class_weights`` says why plain mass would be flat for LaZSL).

For an ``object-bound`` run the class was carried by one object (a region whose box holds the
regions of its plan): its box is printed and drawn on the class overlay (``object_bindings``).

Only regions that took part in the class's plan (mass > 0; LaZSL drops the crops least like
the full image) count in the coverage normalisation.
"""
from __future__ import annotations

import functools
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from queries.attribution import Alignment, attribute_contributions, attribute_weights, attribution_map, class_weights
from queries.attribution import coverage_count, scale_boxes, shares
from stores import files, tables
from stores.catalog import Catalog

from ..errors import InputError
from ..names import norm_class_name
from .concepts import concept_view, pair_lines, pair_maps
from .contrasts import contrast_panels, missing_true_note
from .honesty import honesty_lines
from .map_kinds import CROP_BOXES, DEFAULT_KIND, OCCLUSION
from .pixel_maps import class_maps, peak, resize_map
from .resolve import (  # noqa: F401  (re-exported: callers import them from here)
    MAX_RENDER_SIDE,
    image_predictions,
    load_alignment,
    load_image,
    prepare_image,
    resized,
    resolve_image,
    resolve_run,
)


@dataclass
class AttributeExplanation:
    attr_id: int
    text: str
    mass: float
    similarity: float  # mass-weighted mean fused similarity
    contribution: float  # Σ mass·similarity
    share: float  # contribution / Σ contributions of the class (its share of the score)
    weights: np.ndarray = field(repr=False)  # per region (ExplainResult.region_ids order)
    map: np.ndarray | None = field(default=None, repr=False)
    overlay: Path | None = None
    full_map: np.ndarray | None = field(default=None, repr=False)  # (H, W) in the original image's pixels
    peak: list[int] | None = None  # [x, y] of full_map's maximum, original pixels
    npy: Path | None = None  # full_map as written


@dataclass
class ClassExplanation:
    class_id: int
    name: str
    rank: int
    score: float
    global_score: float | None  # raw DCLIP score of the full image (predictions.global_score)
    local_score: float | None  # Σ T·S over the crops (predictions.local_score)
    attributes: list[AttributeExplanation]
    weights: np.ndarray = field(repr=False)  # class_weights per region
    map: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)  # pixels covered by the plan's regions
    overlay: Path | None = None
    parts: tuple[float, float] | None = None  # ((1-θ)·global, θ·local): they sum to the score
    object: dict | None = None  # object-bound: the object that carried the class (region_id, kind, n_parts, box)
    map_kind: str = CROP_BOXES  # a name of pipeline.explain.map_kinds.DRAWN_KINDS
    map_note: str | None = None
    map_cost: dict | None = None  # occlusion: windows, encoder passes, seconds
    full_map: np.ndarray | None = field(default=None, repr=False)  # (H, W) original pixels
    peak: list[int] | None = None
    npy: Path | None = None

    def split_line(self) -> str:
        if self.parts is None:
            return f"score {self.score:.4f}"
        g, loc = self.parts
        tot = abs(g) + abs(loc)
        pct = (lambda v: f" ({100 * abs(v) / tot:.1f}%)") if tot else (lambda v: "")
        return f"score {self.score:.4f} = global part {g:.4f}{pct(g)} + local part {loc:.4f}{pct(loc)}"


@dataclass
class ExplainResult:
    run_id: int
    method: str
    image_id: int
    path: str
    label: str | None
    width: int  # size the maps are drawn at (the image's, or scaled down to MAX_RENDER_SIDE)
    height: int
    scale: float  # render size / original size
    region_ids: np.ndarray = field(repr=False)  # regions that took part (mass > 0), sorted
    boxes: np.ndarray = field(repr=False)  # their boxes, in render pixels
    region_kind: str = "crop"
    classes: list[ClassExplanation] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    pair: dict | None = None  # a (state, object) pair's state, object, branch split and carrying regions
    concepts: object | None = None  # the stored mutual-knowledge explanation (explain.concepts.ConceptView)

    pair_boxes: np.ndarray | None = field(default=None, repr=False)  # boxes of the pair's carrying regions (render px)
    contrasts: list = field(default_factory=list)  # "why A and not B" (explain.contrasts.ContrastPanel), prediction only
    contrast_png: Path | None = None  # the headline attribute of both classes side by side (contrast_png)
    contrast_note: str | None = None  # why a wrong prediction has no contrast with its true class
    honesty: list[str] = field(default_factory=list)  # how the shown map kind scored on this store (faithfulness)

    def summary_lines(self, top: int | None = 10) -> list[str]:
        out = [f"image  {self.path}" + (f"  (label: {self.label})" if self.label else ""),
               f"run    {self.run_id} ({self.method}); maps from {len(self.region_ids)} {self.region_kind} regions"]
        for c in self.classes:
            out.append(f"class  {c.name}  (rank {c.rank})  {c.split_line()}")
            if c.object is not None:
                x0, y0, x1, y1 = (round(v) for v in c.object["box"])
                out.append(f"object region {c.object['region_id']} ({c.object['kind']}, box {x0},{y0},{x1},{y1} px, "
                           f"{c.object['n_parts']} parts) carried the class")
            out.append(f"  {'share':>7}  {'contrib':>9}  {'mass':>7}  {'sim':>7}  attribute")
            for a in c.attributes[: top or None]:
                out.append(f"  {100 * a.share:6.1f}%  {a.contribution:9.4f}  {a.mass:7.4f}  {a.similarity:7.4f}  {a.text}")
            if top and len(c.attributes) > top:
                out.append(f"  ... {len(c.attributes) - top} more")
            out += self.map_lines(c)
        for p in self.contrasts:
            out += p.lines()
        if self.contrast_note:
            out.append(self.contrast_note)
        out += pair_lines(self.pair, self.pair_boxes, self.scale)
        if self.concepts is not None:
            out += self.concepts.lines()
        if self.files:
            out.append("overlays and maps (.npy, image pixels):")
            out += [f"  {f}" for f in self.files]
        return out


    def map_lines(self, c: ClassExplanation) -> list[str]:
        out = []
        if c.full_map is not None:
            out.append(f"maps   {c.map_kind}; class map peak at x={c.peak[0]}, y={c.peak[1]} px")
        if c.map_note:
            out.append(f"note   {c.map_note}")
        if c.map_cost:
            k = c.map_cost
            out.append(f"cost   occlusion: {k['windows']} windows of {k['window_px']} px, {k['encoder_passes']} encoder "
                       f"passes, {k['seconds']:.1f} s")
        out += [f"faith  {h}" for h in self.honesty]
        return out


# ---- maps -------------------------------------------------------------------------------
def explain_class(al: Alignment, region_ids: np.ndarray, boxes: np.ndarray, height: int, width: int,
                  texts: dict[int, str], pred: dict, attributes: list[int] | None = None,
                  maps: bool = True) -> ClassExplanation:
    """Contributions, shares and maps of one class from its alignment rows.

    ``region_ids``/``boxes`` are the regions that took part (render pixels); ``attributes``
    limits which attribute maps are drawn (None: every attribute that carried mass).
    """
    contrib = attribute_contributions(al)
    sh = shares([c[3] for c in contrib])
    cw = class_weights(al, region_ids)
    attrs = []
    for (aid, m, sim, c), s in zip(contrib, sh):
        w = attribute_weights(al, region_ids, aid)
        a = AttributeExplanation(aid, texts.get(aid, f"attribute {aid}"), m, sim, c, float(s), w)
        if maps and (attributes is None or aid in attributes):
            a.map = attribution_map(boxes, w, height, width)
        attrs.append(a)
    ce = ClassExplanation(pred["class_id"], pred["name"], pred["rank"], pred["score"], pred.get("global_score"),
                          pred.get("local_score"), attrs, cw, parts=pred.get("parts"))
    if maps:
        ce.map = attribution_map(boxes, cw, height, width)
        ce.mask = coverage_count(boxes, height, width) > 0
    return ce


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return (s[:n].rstrip("-") or "x")


def file_slug(text: str, n: int = 40) -> str:
    """A file-name part for ``text`` that never collides: a readable slug plus a short hash of
    the exact text ("C++" and "C#" both slug to "c"; their files must not overwrite each other)."""
    return f"{_slug(text, n)}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def explain_image(
    cat: Catalog,
    image: str | int | Path,
    run_id: int | None = None,
    class_name: str | None = None,
    attribute: str | None = None,
    out_dir: str | Path = "explanations",
    write: bool = True,
    maps: str = DEFAULT_KIND,
    model=None,
) -> ExplainResult:
    """Explain one image's prediction (or ``class_name``'s score) in a run; write PNG overlays.

    Overlays: ``OUT/<stem>-<image_id>.<class>-<hash>.png`` (class map) and
    ``OUT/<stem>-<image_id>.<class>-<hash>.attr<id>-<text>.png`` per attribute (only ``attribute``
    when given); ``<hash>`` is a short hash of the exact class name, so names that slug alike
    never share a file. Each map is also written as ``.npy`` (float32, the original image's
    pixels) next to its PNG.

    ``maps``: ``plan-dense`` (default), ``crop-boxes`` or ``occlusion``
    (:mod:`pipeline.explain.pixel_maps`); ``model`` (or a zero-argument loader) is the store's
    model, needed by ``plan`` and ``occlusion``.
    """
    from .plots import heat_overlay, image_scale, map_scales, png_bytes  # heavy: imported on use (matplotlib)

    run = resolve_run(cat, run_id)
    run_id, method = run.run_id, run.method
    img = resolve_image(cat, image)
    preds = image_predictions(cat, run, img["image_id"])
    if not preds:
        raise InputError(f"Run {run_id} has no predictions for {img['path']} (indexed after the run? re-run classify).")
    if class_name is None:
        pred = preds[0]
    else:
        want = norm_class_name(class_name)
        names = tables.class_ids_by_norm(cat)
        if want not in names:
            raise InputError(f"No class {class_name!r} in the store.")
        match = [p for p in preds if p["class_id"] == names[want]]
        if not match:
            raise InputError(
                f"{class_name!r} was not among run {run_id}'s candidates for this image (the top-k shortlist); "
                "re-run classify with a larger --top-k."
            )
        pred = match[0]
    als, region_ids, boxes, (w, h), scale, kind = prepare_image(cat, run_id, img, [pred["class_id"]])
    al = als[pred["class_id"]]
    if len(al) == 0:
        raise InputError(f"Run {run_id} stored no alignments for {pred['name']!r} on this image (see --alignments-top).")
    texts = tables.attribute_texts(cat, np.unique(al.attr_id))
    only = None
    if attribute is not None:
        only = _match_attribute(texts, attribute, pred["name"])
    ce = explain_class(al, region_ids, boxes, h, w, texts, pred, attributes=only)
    ce.object = tables.object_binding(cat, run_id, img["image_id"], pred["class_id"])  # object-bound runs only
    res = ExplainResult(run_id, method, img["image_id"], img["path"], img["label"], w, h, scale, region_ids, boxes, kind, [ce])
    if only is not None:
        ce.attributes = [a for a in ce.attributes if a.attr_id in only]
    from ..stages.compositional import pair_explanation  # heavy: imported on use ((state, object) pairs: torch, faiss)

    res.pair = pair_explanation(cat, run, img["image_id"], pred["class_id"])
    pmaps = pair_maps(cat, res.pair, img["image_id"], w / img["width"], h / img["height"], h, w)
    res.pair_boxes = pmaps[2] if pmaps else None
    res.concepts = concept_view(cat, run_id, img["image_id"])
    if pred["rank"] == 1:  # why the prediction and not the runner-up / the true class
        res.contrasts = contrast_panels(cat, run, img["image_id"])
        res.contrast_note = missing_true_note(cat, run, img["image_id"], img["label"], res.contrasts)
    original, cm = None, None  # decoded once, for the maps and the overlays
    if callable(model) and not hasattr(model, "encode_images"):
        model = functools.cache(model)  # a loader: load once, for this class and a contrast's other class
    if maps != CROP_BOXES or write:
        original = load_image(img["path"])
        cm = class_maps(cat, run, img, original, pred["class_id"], al, kind=maps, model=model)
        ce.map_kind, ce.map_note, ce.map_cost = cm.kind, cm.note, cm.cost
        ce.full_map, ce.peak = cm.class_map, peak(cm.class_map)
        ce.map = resize_map(cm.class_map, (w, h))
        for a in ce.attributes:
            a.full_map = cm.attribute_map(a.attr_id)
            if a.full_map is not None:
                a.peak = peak(a.full_map)
                a.map = resize_map(a.full_map, (w, h)) if a.map is not None else None
        res.honesty = honesty_lines(cat, run_id, cm.kind)
    if write:
        out = Path(out_dir)
        out.mkdir(exist_ok=True)  # the folder the user named; never its parents
        base = resized(original, (w, h))
        stem = f"{_slug(Path(img['path']).stem)}-{img['image_id']}"  # the image id alone is unique
        cslug = file_slug(pred["name"])
        ce.overlay = out / f"{stem}.{cslug}.png"
        drawn = [a for a in ce.attributes if a.map is not None]
        # the class map on its own scale; attribute maps on the largest of all the class's attribute maps
        class_scale, attr_scale = map_scales(ce.full_map, cm.attribute_maps if cm is not None else [a.map for a in drawn])
        label = "mass/px" if ce.map_kind != OCCLUSION else "drop"
        obox = scale_boxes([ce.object["box"]], w / img["width"], h / img["height"])[0] if ce.object is not None else None
        files.write_bytes(ce.overlay, png_bytes(heat_overlay(base, ce.map, class_scale, label=label, box=obox,
                                                             title=f"{pred['name']}: class map ({ce.map_kind})")))
        res.files.append(ce.overlay)
        ce.npy = files.write_bytes(out / f"{stem}.{cslug}.npy", npy_bytes(ce.full_map))
        res.files.append(ce.npy)
        for a in drawn:
            a.overlay = out / f"{stem}.{cslug}.attr{a.attr_id}-{_slug(a.text, 30)}.png"
            files.write_bytes(a.overlay, png_bytes(heat_overlay(base, a.map, attr_scale, label=label,
                                                                title=f"{pred['name']}: {a.text}")))
            res.files.append(a.overlay)
            if a.full_map is not None:
                a.npy = files.write_bytes(a.overlay.with_suffix(".npy"), npy_bytes(a.full_map))
                res.files.append(a.npy)
        if res.contrasts:
            path = contrast_png(cat, run, img, original, base, res.contrasts, cm, maps, model,
                                out / f"{stem}.{cslug}", label)
            if path is not None:
                res.files.append(path)
                res.contrast_png = path
        if pmaps is not None:  # where the pair's state and its object were found
            pscale = image_scale([pmaps[0], pmaps[1]])
            for what, heat in (("state", pmaps[0]), ("object", pmaps[1])):
                path = out / f"{stem}.{cslug}.{what}-{_slug(res.pair[what], 30)}.png"
                res.files.append(files.write_bytes(path, png_bytes(heat_overlay(base, heat, pscale))))
    return res


def contrast_png(cat: Catalog, run, img: dict, original, base, panels: list, cm, maps: str, model, stem: Path,
                 label: str) -> Path | None:
    """The headline attribute of "why A and not B" (vs the true class, else the runner-up) for
    both classes side by side, on one colour scale: ``<stem>.vs-<B>.png``. None when the headline
    names no attribute (the class prompt alone) or neither map exists."""
    from .plots import heat_overlay, image_scale, png_bytes  # heavy: imported on use (matplotlib)

    panel = next((p for p in panels if p.true_class), panels[0])
    row = panel.headline_attribute
    if row is None:
        return None
    other = class_maps(cat, run, img, original, panel.other_class_id,
                       load_alignment(cat, run.run_id, img["image_id"], panel.other_class_id), kind=maps, model=model)
    sides = [(panel.class_name, row["attribute"], cm.attribute_map(row["attr_id"]) if row.get("attr_id") is not None else None),
             (panel.other_name, row["other_attribute"],
              other.attribute_map(row["other_attr_id"]) if row.get("other_attr_id") is not None else None)]
    sides = [(name, text, resize_map(m, base.size)) for name, text, m in sides if m is not None]
    if not sides:
        return None
    scale = image_scale([m for _, _, m in sides])  # one scale for both: their masses compare directly
    pics = [heat_overlay(base, m, scale, label=label, title=f"{name}: {text}", colorbar=i == len(sides) - 1)
            for i, (name, text, m) in enumerate(sides)]
    top = max(p.size[1] for p in pics)
    canvas = PILImage.new("RGB", (sum(p.size[0] for p in pics) + 8 * (len(pics) - 1), top), (255, 255, 255))
    x = 0
    for p in pics:
        canvas.paste(p, (x, top - p.size[1]))
        x += p.size[0] + 8
    return files.write_bytes(stem.parent / f"{stem.name}.vs-{file_slug(panel.other_name)}.png", png_bytes(canvas))


def npy_bytes(a: np.ndarray) -> bytes:
    """A map as the bytes of a ``.npy`` file (float32)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.float32), allow_pickle=False)
    return buf.getvalue()


def _match_attribute(texts: dict[int, str], attribute: str, class_name: str) -> list[int]:
    if attribute.isdigit() and int(attribute) in texts:
        return [int(attribute)]
    want = attribute.strip().lower()
    exact = [a for a, t in texts.items() if t.strip().lower() == want]
    if exact:
        return exact
    part = [a for a, t in texts.items() if want in t.lower()]
    if len(part) == 1:
        return part
    listing = "; ".join(sorted(texts.values()))
    if part:
        raise InputError(f"--attribute {attribute!r} matches {len(part)} attributes of {class_name!r}: {listing}")
    raise InputError(f"No attribute {attribute!r} carried mass for {class_name!r}; its attributes: {listing}")
