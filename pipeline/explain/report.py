"""``pipeline report``: one static HTML page per run, readable from disk with no server.

Everything is inside the file: pictures are base64 ``data:`` URIs, the CSS is inline and
there is no script. Every string that came from a user, a file or an LLM (class names,
attributes, paths, labels, run parameters) goes through Jinja2's autoescaping.

Per image: the top-k classes with their scores split into the global and local parts, the
predicted class's attributes ranked by contribution (bars), the class heatmap and the
heatmaps of the top attributes, and "why A and not B" against the runner-up and, for a wrong
prediction, the true class: the score gap split into signed per-attribute terms in which what
both classes share cancels (``pipeline.explain.contrasts``), both classes' attributes side by
side, and the true class's own attributes. At the top: accuracy, a per-class accuracy chart,
the deletion/insertion curves of the latest ``pipeline faithfulness`` run, and the
descriptors that never carried mass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from stores import explanations, files, tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..errors import InputError
from ..names import norm_class_name
from .concepts import concept_view
from .contrasts import contrast_panels, missing_true_note, term_text
from .explain import explain_class
from .honesty import honesty_lines
from .map_kinds import CROP_BOXES, DEFAULT_KIND
from .pixel_maps import class_maps, resize_map
from .resolve import image_predictions, load_image, prepare_image, resized
from .plots import accuracy_png, curves_png, data_uri, heat_overlay, map_scales, png_bytes, thumbnail

TEMPLATE = "report.html.j2"


@dataclass
class ReportResult:
    path: Path
    run_id: int
    images: int
    bytes: int
    plots: list[Path] = field(default_factory=list)  # PNG files written with plots_dir


def report_run(cat: Catalog, run_id: int | None = None) -> tables.RunRecord:
    """The given run, else the latest OT run, else the latest run."""
    run = (tables.get_run(cat, run_id) if run_id is not None
           else tables.latest_run(cat, with_alignments=True) or tables.latest_run(cat))
    if run is None:
        if run_id is not None:
            raise InputError(f"No run {run_id}; list runs with `pipeline sql \"select run_id, method from runs\"`.")
        raise StoreError("No runs in the store; run `pipeline classify` first.")
    return run


def _label_classes(cat: Catalog) -> dict[str, tuple[int, str]]:
    names = tables.class_names(cat)
    return {norm: (cid, names[cid]) for norm, cid in tables.class_ids_by_norm(cat).items()}


def accuracy_by_class(cat: Catalog, run_id: int) -> list[tuple[str, int, int]]:
    """(true class, correct, total) over the run's labelled images whose label is a known class."""
    by_norm = _label_classes(cat)
    acc: dict[str, list[int]] = {}
    for r in tables.top1_images(cat, run_id):
        hit = by_norm.get(norm_class_name(r["label"])) if r["label"] else None
        if hit is None:
            continue
        a = acc.setdefault(hit[1], [0, 0])
        a[0] += int(r["class_id"] == hit[0])
        a[1] += 1
    return [(n, c, t) for n, (c, t) in sorted(acc.items())]


def faithfulness_summary(cat: Catalog, run_id: int) -> dict | None:
    summary = tables.latest_faithfulness(cat, run_id)
    if summary is None:
        return None
    png = curves_png(summary["curves"], summary["aucs"]) if summary["curves"] else None
    return dict(faith_run_id=summary["faith_run_id"], images=summary["images"], params=summary["params"],
                aucs=summary["aucs"], png=png, plot=data_uri(png) if png else None, pointing=summary["pointing"])


def _image_card(cat: Catalog, run: tables.RunRecord, img: dict, by_norm: dict, top_k: int, top_attrs: int, attr_maps: int,
                thumb: int, maps: str = "plan", model=None) -> dict:
    run_id = run.run_id
    preds = image_predictions(cat, run, img["image_id"])
    top = preds[0]
    true = by_norm.get(norm_class_name(img["label"])) if img["label"] else None
    true_pred = next((p for p in preds if true and p["class_id"] == true[0]), None)
    card = dict(
        path=img["path"], name=f"{Path(img['path']).parent.name}/{Path(img['path']).name}", label=img["label"],
        image_id=img["image_id"],
        classes=[dict(p, is_true=bool(true and p["class_id"] == true[0])) for p in preds[:top_k]],
        predicted=top["name"], correct=None if true is None else top["class_id"] == true[0],
        true_name=true[1] if true else None, true_rank=true_pred["rank"] if true_pred else None,
        split=None, attributes=[], maps=[], contrasts=[], true_attributes=[], tip_note=None, error=None, more_attributes=0,
        concepts=concept_view(cat, run_id, img["image_id"]),  # mutual knowledge, when `pipeline mutual-knowledge` ran
    )
    if top.get("parts") is not None:
        g, loc = top["parts"]
        tot = abs(g) + abs(loc)
        card["split"] = dict(glob=g, local=loc, gpct=100 * abs(g) / tot if tot else 0, lpct=100 * abs(loc) / tot if tot else 0)
    wanted = [top["class_id"]] + ([true[0]] if true and true[0] != top["class_id"] and true_pred else [])
    als, region_ids, boxes, (w, h), _, kind = prepare_image(cat, run_id, img, wanted, max_side=2 * thumb)
    al = als[top["class_id"]]
    if len(al) == 0:
        card["error"] = "no alignments for this class in this run (not an OT run, or --alignments-top)"
        try:
            card["maps"].append(dict(title="image", uri=data_uri(png_bytes(thumbnail(load_image(img["path"]), thumb)))))
        except InputError as exc:
            card["error"] += f"; {exc}"
        return card
    texts = tables.attribute_texts(cat, np.unique(np.concatenate([a.attr_id for a in als.values()])))
    ce = explain_class(al, region_ids, boxes, h, w, texts, top)
    maxabs = max((abs(a.contribution) for a in ce.attributes), default=0) or 1.0
    for a in ce.attributes[:top_attrs]:
        card["attributes"].append(dict(text=a.text, share=100 * a.share, contribution=a.contribution, mass=a.mass,
                                       similarity=a.similarity, width=100 * abs(a.contribution) / maxabs,
                                       negative=a.contribution < 0))
    card["more_attributes"] = max(0, len(ce.attributes) - top_attrs)
    try:
        original = load_image(img["path"])
    except InputError as exc:
        card["error"] = str(exc)
    else:
        base = resized(original, (w, h))
        cm = class_maps(cat, run, img, original, top["class_id"], al, kind=maps, model=model)
        card["map_kind"], card["map_note"] = cm.kind, cm.note
        heats = [resize_map(cm.class_map, (w, h))] + [
            resize_map(m, (w, h)) if (m := cm.attribute_map(a.attr_id)) is not None else a.map
            for a in ce.attributes[:attr_maps]]
        # as `explain` draws them: the class map on its scale, attribute maps on the largest of all of them
        class_scale, attr_scale = map_scales(cm.class_map, cm.attribute_maps if cm.attribute_maps is not None
                                             else heats[1:])

        def pic(heat, scale, title):
            return data_uri(png_bytes(thumbnail(heat_overlay(base, heat, scale, display_side=2 * thumb, title=title),
                                                round(1.3 * thumb))))

        card["maps"].append(dict(title="image", uri=data_uri(png_bytes(thumbnail(base, thumb)))))
        card["maps"].append(dict(title=f"class: {top['name']}", uri=pic(heats[0], class_scale, f"{top['name']}: class map")))
        for a, heat in zip(ce.attributes[:attr_maps], heats[1:]):
            card["maps"].append(dict(title=a.text, uri=pic(heat, attr_scale, f"{top['name']}: {a.text}")))
    card["contrasts"] = [_contrast_card(p) for p in contrast_panels(cat, run, img["image_id"])]
    if card["correct"] is False:
        card["tip_note"] = missing_true_note(cat, run, img["image_id"], img["label"], contrast_panels_of(card))
        if true_pred is not None and len(als.get(true[0], [])):  # the true class's own attributes
            te = explain_class(als[true[0]], region_ids, boxes, h, w, texts, true_pred)
            tmax = max((abs(a.contribution) for a in te.attributes), default=0) or 1.0
            card["true_attributes"] = [dict(text=a.text, share=100 * a.share, contribution=a.contribution, mass=a.mass,
                                            similarity=a.similarity, width=100 * abs(a.contribution) / tmax,
                                            negative=a.contribution < 0) for a in te.attributes[:top_attrs]]
    card["region_kind"] = kind
    card["regions"] = len(region_ids)
    return card


def contrast_panels_of(card: dict) -> list:
    return [c["panel"] for c in card["contrasts"]]


def _contrast_card(p) -> dict:
    """A ContrastPanel as the template shows it: the headline, then both classes' attributes
    side by side with the signed term of each pair (bars scaled to the largest |term|)."""
    rows = [dict(r, favours=p.favours(r["term"])) for r in p.rows]
    biggest = max([abs(r["term"]) for r in rows] + [abs(p.prompt_term)]) or 1.0
    for r in rows:
        r["width"] = 50 * abs(r["term"]) / biggest
    reason = p.reason
    return dict(panel=p, class_name=p.class_name, other_name=p.other_name, role=p.role, gap=p.gap,
                prompt_term=p.prompt_term, prompt_width=50 * abs(p.prompt_term) / biggest, has_shared=p.has_shared,
                prompt_rank=p.prompt_rank, headline=p.headline(),
                reason=None if reason is None else dict(reason, favours=p.favours(reason["term"]),
                                                         text=term_text(reason)), rows=rows)


def build_report(
    cat: Catalog,
    run_id: int | None = None,
    out: str | Path = "report.html",
    *,
    limit: int | None = 50,
    top_k: int = 5,
    top_attrs: int = 8,
    attr_maps: int = 3,
    thumb: int = 200,
    plots_dir: str | Path | None = None,
    maps: str = DEFAULT_KIND,
    model=None,
) -> ReportResult:
    """Write the run's report; wrong predictions come first, then the rest by path. ``maps``:
    plan-dense (needs ``model`` or a zero-argument loader; else crop-boxes), crop-boxes or occlusion."""
    import jinja2  # heavy: imported on use

    out = Path(out)
    if out.is_dir():
        raise InputError(f"-o {out} is a folder; give the HTML file to write (e.g. {out / 'report.html'}).")
    if not out.parent.is_dir():
        raise InputError(f"-o {out}: the folder {out.parent} does not exist; create it first or write elsewhere.")
    run = report_run(cat, run_id)
    run_id, method = run.run_id, run.method
    by_norm = _label_classes(cat)
    imgs = []
    for r in tables.top1_images(cat, run_id):
        norm = norm_class_name(r["label"]) if r["label"] else None
        imgs.append(dict(image_id=r["image_id"], path=r["path"], width=r["width"], height=r["height"], label=r["label"],
                         wrong=norm is not None and norm in by_norm and norm != r["predicted_norm"]))
    imgs.sort(key=lambda d: (not d["wrong"], d["path"]))
    shown = imgs[:limit] if limit else imgs
    if callable(model) and not hasattr(model, "encode_images"):
        model = model() if maps != CROP_BOXES else None
    cards = [_image_card(cat, run, im, by_norm, top_k, top_attrs, attr_maps, thumb, maps, model) for im in shown]
    shown_kind = next((c["map_kind"] for c in cards if c.get("map_kind")), maps)
    map_info = dict(kind=shown_kind, honesty=honesty_lines(cat, run_id, shown_kind),
                    note=next((c["map_note"] for c in cards if c.get("map_note")), None),
                    table=_compare_table(cat, run_id, shown_kind))
    per_class = accuracy_by_class(cat, run_id)
    n_lab = sum(t for _, _, t in per_class)
    n_ok = sum(c for _, c, _ in per_class)
    unused_n, unused = tables.never_used_attributes(cat, run_id)
    never_top_n, never_top = explanations.never_top_attributes(cat, run_id)
    acc_png = accuracy_png(per_class) if per_class else None
    faith = faithfulness_summary(cat, run_id)
    plots: list[Path] = []
    if plots_dir is not None:  # the same PNGs as files, for slides and papers
        d = Path(plots_dir)
        d.mkdir(exist_ok=True)  # the folder the user named; never its parents
        for name, png in ((f"run{run_id}-accuracy.png", acc_png), (f"run{run_id}-faithfulness.png", faith and faith["png"])):
            if png:
                plots.append(files.write_bytes(d / name, png))
    params_pretty = json.dumps(run.params, indent=1, sort_keys=True)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.explain", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped; the template never uses |safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template(TEMPLATE).render(
        run_id=run_id, method=method, params=params_pretty, model=cat.model, store=str(cat.root),
        n_images=len(imgs), n_shown=len(cards), n_wrong=sum(d["wrong"] for d in imgs),
        accuracy=(n_ok / n_lab) if n_lab else None, n_labelled=n_lab, n_correct=n_ok,
        accuracy_plot=data_uri(acc_png) if acc_png else None,
        faith=faith, unused_n=unused_n, unused=unused, never_top_n=never_top_n, never_top=never_top, cards=cards, map_info=map_info,
    )
    files.write_text(out, html)
    return ReportResult(out, run_id, len(cards), len(html.encode()), plots)


def _compare_table(cat: Catalog, run_id: int, kind: str) -> list[dict] | None:
    """The latest ``faithfulness`` summary that measured ``kind`` on this run (else on the store),
    one row per map kind it measured (each row names its kind)."""
    try:
        s = tables.map_kind_summary(cat, run_id, kind)
    except duckdb.CatalogException:  # a store from before migration m014 opened read-only
        return None
    if s is None:
        return None
    rows = {}
    for r in tables.faithfulness_summary_rows(cat, s["faith_run_id"]):
        rows.setdefault(r["map_kind"], dict(kind=r["map_kind"], images=r["images"]))[r["metric"]] = r
    return list(rows.values())


def write_report(cat: Catalog, run_id: int | None = None, out: str | Path = "report.html", limit: int | None = 50,
                 progress: bool = False, model=None) -> Path:
    """``build_report`` returning the page's path (what ``pipeline demo`` calls)."""
    return build_report(cat, run_id, out, limit=limit, model=model).path
