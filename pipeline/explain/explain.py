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

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from queries.attribution import Alignment, attribute_contributions, attribute_weights, attribution_map, class_weights
from queries.attribution import coverage_count, scale_boxes, score_parts, shares
from stores import files, tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..errors import InputError
from ..imaging import open_image, read_image_file
from ..methods import find_method
from ..names import norm_class_name
from .concepts import concept_view, pair_lines, pair_maps
from .contrasts import contrast_panels, missing_true_note

MAX_RENDER_SIDE = 1024  # overlays of larger images are drawn at this size (boxes scaled to match)


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
    map_kind: str = "boxes"  # plan | boxes | occlusion (pipeline.explain.pixel_maps)
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
        from .pixel_maps import KIND_NAMES

        out = []
        if c.full_map is not None:
            out.append(f"maps   {KIND_NAMES.get(c.map_kind, c.map_kind)}; class map peak at x={c.peak[0]}, y={c.peak[1]} px")
        if c.map_note:
            out.append(f"note   {c.map_note}")
        if c.map_cost:
            k = c.map_cost
            out.append(f"cost   occlusion: {k['windows']} windows of {k['window_px']} px, {k['encoder_passes']} encoder "
                       f"passes, {k['seconds']:.1f} s")
        out += [f"faith  {h}" for h in self.honesty]
        return out


# ---- reading the store ------------------------------------------------------------------
def resolve_run(cat: Catalog, run_id: int | None = None) -> tables.RunRecord:
    """The given run, or the latest run that stored alignments; it must have alignments."""
    if run_id is None:
        run = tables.latest_run(cat, with_alignments=True)
        if run is None:
            raise StoreError(
                "No run with alignments in the store; explanations come from an OT run: `pipeline classify --method lazsl`."
            )
        return run
    run = tables.get_run(cat, run_id)
    if run is None:
        raise InputError(f"No run {run_id}; list runs with `pipeline sql \"select run_id, method from runs\"`.")
    if not tables.run_has_alignments(cat, run_id):
        raise InputError(f"Run {run_id} ({run.method}) stored no alignments; explanations need an OT run (--method lazsl).")
    return run


def resolve_image(cat: Catalog, image: str | int | Path) -> dict:
    """An indexed image by image_id, path (as given or resolved), file content, or unique path suffix."""
    s = str(image)
    rows = []
    if isinstance(image, (int, np.integer)) or s.strip().isdigit():  # an id pasted with its line end
        rows = tables.find_images(cat, image_id=int(s.strip()))
    if not rows:
        rows = tables.find_images(cat, paths=[s, str(Path(s).expanduser().resolve())])
    if not rows and Path(s).is_file():
        import hashlib

        try:
            data = read_image_file(s)  # bounded like index-images: a huge file is no indexed image
        except (ValueError, OSError):
            data = None
        if data is not None:
            rows = tables.find_images(cat, sha256=hashlib.sha256(data).hexdigest())
    if not rows:
        rows = tables.find_images(cat, path_suffix="/" + s.lstrip("./"))
        if len(rows) > 1:
            raise InputError(f"{s} matches {len(rows)} indexed images; give a longer path or the image_id.")
    if not rows:
        raise InputError(f"{s} is not an indexed image in {cat.root}; index it with `pipeline index-images`, or pass an image_id.")
    r = rows[0]
    return dict(image_id=int(r["image_id"]), path=r["path"], width=int(r["width"]), height=int(r["height"]),
                label=r["label"])


def load_alignment(cat: Catalog, run_id: int, image_id: int, class_id: int) -> Alignment:
    return Alignment.from_rows(tables.alignment_rows(cat, run_id, image_id, class_id))


def image_predictions(cat: Catalog, run: tables.RunRecord, image_id: int) -> list[dict]:
    """The run's ranked classes for an image, with the score's global and local parts."""
    spec = find_method(run.method)
    theta = run.params.get("config", {}).get(spec.theta_field) if spec is not None and spec.theta_field else None
    return [dict(p, parts=score_parts(p["score"], p["global_score"], p["local_score"], theta))
            for p in tables.image_predictions(cat, run.run_id, image_id)]


def load_image(path: str, size: tuple[int, int] | None = None) -> Image.Image:
    """The image as indexed (EXIF-rotated RGB), optionally resized to (w, h)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: the indexed image file is gone; overlays need the pixels (the maps are in the store).")
    try:
        img = open_image(read_image_file(p))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc.strerror or exc}).") from None
    return resized(img, size)


def resized(img: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``img`` at (w, h) (bilinear), or as it is."""
    return img if size is None or img.size == tuple(size) else img.resize(size, Image.Resampling.BILINEAR)


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


def prepare_image(cat: Catalog, run_id: int, img: dict, class_ids: list[int], max_side: int = MAX_RENDER_SIDE):
    """Alignments of the classes, the regions that took part, and the render geometry."""
    all_ids, kinds, all_boxes = tables.image_regions(cat, img["image_id"])
    als = {cid: load_alignment(cat, run_id, img["image_id"], cid) for cid in class_ids}
    used = np.unique(np.concatenate([al.regions() for al in als.values()] + [np.zeros(0, np.int64)]))
    keep = np.isin(all_ids, used)
    scale = min(1.0, max_side / max(img["width"], img["height"]))
    w, h = max(1, round(img["width"] * scale)), max(1, round(img["height"] * scale))
    boxes = scale_boxes(all_boxes[keep], w / img["width"], h / img["height"])
    kind = kinds[int(np.flatnonzero(keep)[0])] if keep.any() else "crop"
    return als, all_ids[keep], boxes, (w, h), scale, kind


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return (s[:n].rstrip("-") or "x")


def file_slug(text: str, n: int = 40) -> str:
    """A file-name part for ``text`` that never collides: a readable slug plus a short hash of
    the exact text ("C++" and "C#" both slug to "c"; their files must not overwrite each other)."""
    import hashlib

    return f"{_slug(text, n)}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def explain_image(
    cat: Catalog,
    image: str | int | Path,
    run_id: int | None = None,
    class_name: str | None = None,
    attribute: str | None = None,
    out_dir: str | Path = "explanations",
    write: bool = True,
    maps: str = "plan",
    model=None,
) -> ExplainResult:
    """Explain one image's prediction (or ``class_name``'s score) in a run; write PNG overlays.

    Overlays: ``OUT/<stem>-<image_id>.<class>-<hash>.png`` (class map) and
    ``OUT/<stem>-<image_id>.<class>-<hash>.attr<id>-<text>.png`` per attribute (only ``attribute``
    when given); ``<hash>`` is a short hash of the exact class name, so names that slug alike
    never share a file. Each map is also written as ``.npy`` (float32, the original image's
    pixels) next to its PNG.

    ``maps``: ``plan`` (default: plan-dense), ``boxes`` or ``occlusion``
    (:mod:`pipeline.explain.pixel_maps`); ``model`` (or a zero-argument loader) is the store's
    model, needed by ``plan`` and ``occlusion``.
    """
    from .pixel_maps import class_maps, peak, resize_map
    from .plots import heat_overlay, image_scale, png_bytes

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
    from ..stages.compositional import pair_explanation  # (state, object) pairs; mutual knowledge

    res.pair = pair_explanation(cat, run, img["image_id"], pred["class_id"])
    pmaps = pair_maps(cat, res.pair, img["image_id"], w / img["width"], h / img["height"], h, w)
    res.pair_boxes = pmaps[2] if pmaps else None
    res.concepts = concept_view(cat, run_id, img["image_id"])
    if pred["rank"] == 1:  # why the prediction and not the runner-up / the true class
        res.contrasts = contrast_panels(cat, run, img["image_id"])
        res.contrast_note = missing_true_note(cat, run, img["image_id"], img["label"], res.contrasts)
    original = None  # decoded once, for the maps and the overlays
    if maps != "boxes" or write:
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
        from .compare import honesty_lines

        res.honesty = honesty_lines(cat, run_id, cm.kind)
    if write:
        out = Path(out_dir)
        out.mkdir(exist_ok=True)  # the folder the user named; never its parents
        base = resized(original, (w, h))
        stem = f"{_slug(Path(img['path']).stem)}-{img['image_id']}"  # the image id alone is unique
        cslug = file_slug(pred["name"])
        ce.overlay = out / f"{stem}.{cslug}.png"
        drawn = [a for a in ce.attributes if a.map is not None]
        scale_ = image_scale([ce.map] + [a.map for a in drawn])  # one colour scale for every map of the image
        label = "mass/px" if ce.map_kind != "occlusion" else "drop"
        obox = scale_boxes([ce.object["box"]], w / img["width"], h / img["height"])[0] if ce.object is not None else None
        files.write_bytes(ce.overlay, png_bytes(heat_overlay(base, ce.map, scale_, label=label, box=obox)))
        res.files.append(ce.overlay)
        ce.npy = files.write_bytes(out / f"{stem}.{cslug}.npy", npy_bytes(ce.full_map))
        res.files.append(ce.npy)
        for a in drawn:
            a.overlay = out / f"{stem}.{cslug}.attr{a.attr_id}-{_slug(a.text, 30)}.png"
            files.write_bytes(a.overlay, png_bytes(heat_overlay(base, a.map, scale_, label=label)))
            res.files.append(a.overlay)
            if a.full_map is not None:
                a.npy = files.write_bytes(a.overlay.with_suffix(".npy"), npy_bytes(a.full_map))
                res.files.append(a.npy)
        if pmaps is not None:  # where the pair's state and its object were found
            pscale = image_scale([pmaps[0], pmaps[1]])
            for what, heat in (("state", pmaps[0]), ("object", pmaps[1])):
                path = out / f"{stem}.{cslug}.{what}-{_slug(res.pair[what], 30)}.png"
                res.files.append(files.write_bytes(path, png_bytes(heat_overlay(base, heat, pscale))))
    return res


def npy_bytes(a: np.ndarray) -> bytes:
    """A map as the bytes of a ``.npy`` file (float32)."""
    import io

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
