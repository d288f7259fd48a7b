"""``pipeline report``: one static HTML page per run, readable from disk with no server.

Everything is inside the file: pictures are base64 ``data:`` URIs, the CSS is inline and
there is no script. Every string that came from a user, a file or an LLM (class names,
attributes, paths, labels, run parameters) goes through Jinja2's autoescaping.

Per image: the top-k classes with their scores split into the global and local parts, the
predicted class's attributes ranked by contribution (bars), the class heatmap and the
heatmaps of the top attributes, and for a wrong prediction the attribute that tipped it
(``queries.explain.tipping_margins``). At the top: accuracy, a per-class accuracy chart,
the deletion/insertion curves of the latest ``pipeline faithfulness`` run, and the
descriptors that never carried mass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from queries.explain import tipping_margins
from stores.catalog import Catalog, StoreError

from .attributes import InputError, norm_class_name
from .explain import attribute_texts, explain_class, image_predictions, load_image, prepare_image
from .plots import accuracy_png, curves_png, data_uri, overlay, png_bytes, thumbnail

TEMPLATE = "report.html.j2"


@dataclass
class ReportResult:
    path: Path
    run_id: int
    images: int
    bytes: int


def report_run(cat: Catalog, run_id: int | None = None) -> tuple[int, str, str]:
    """(run_id, method, params JSON): the given run, else the latest OT run, else the latest run."""
    if run_id is None:
        row = cat.query(
            "SELECT run_id FROM runs r WHERE EXISTS (SELECT 1 FROM alignments a WHERE a.run_id = r.run_id) "
            "ORDER BY run_id DESC LIMIT 1"
        ).fetchone() or cat.query("SELECT max(run_id) FROM runs").fetchone()
        if row is None or row[0] is None:
            raise StoreError("No runs in the store; run `pipeline classify` first.")
        run_id = row[0]
    row = cat.query("SELECT run_id, method, params FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        raise InputError(f"No run {run_id}; list runs with `pipeline sql \"select run_id, method from runs\"`.")
    return int(row[0]), row[1], row[2]


def _label_classes(cat: Catalog) -> dict[str, tuple[int, str]]:
    return {n: (cid, name) for cid, name, n in cat.query("SELECT class_id, name, norm_name FROM classes").fetchall()}


def accuracy_by_class(cat: Catalog, run_id: int) -> list[tuple[str, int, int]]:
    """(true class, correct, total) over the run's labelled images whose label is a known class."""
    by_norm = _label_classes(cat)
    rows = cat.query(
        "SELECT i.label, p.class_id FROM predictions p JOIN images i USING (image_id) "
        "WHERE p.run_id = ? AND p.rank = 1 AND i.label IS NOT NULL",
        [run_id],
    ).fetchall()
    acc: dict[str, list[int]] = {}
    for label, pred in rows:
        hit = by_norm.get(norm_class_name(label))
        if hit is None:
            continue
        a = acc.setdefault(hit[1], [0, 0])
        a[0] += int(pred == hit[0])
        a[1] += 1
    return [(n, c, t) for n, (c, t) in sorted(acc.items())]


def faithfulness_summary(cat: Catalog, run_id: int) -> dict | None:
    row = cat.query("SELECT max(faith_run_id) FROM faithfulness_runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None or row[0] is None:
        return None
    fid = row[0]
    params = json.loads(cat.query("SELECT params FROM faithfulness_runs WHERE faith_run_id = ?", [fid]).fetchone()[0])
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for kind, frac, score in cat.query(
        "SELECT kind, list(fraction ORDER BY step), list(score ORDER BY step) FROM "
        "(SELECT kind, step, avg(fraction) AS fraction, avg(score) AS score FROM faithfulness_curves "
        " WHERE faith_run_id = ? GROUP BY kind, step) GROUP BY kind ORDER BY kind",
        [fid],
    ).fetchall():
        curves[kind] = (np.array(frac), np.array(score))
    aucs = dict(cat.query(
        "SELECT kind, avg(auc) FROM faithfulness_scores WHERE faith_run_id = ? GROUP BY kind", [fid]).fetchall())
    n = cat.query("SELECT count(DISTINCT image_id) FROM faithfulness_scores WHERE faith_run_id = ?", [fid]).fetchone()[0]
    pg = cat.query(
        "SELECT count(*), avg(hit::DOUBLE), avg(energy_inside) FROM pointing_game WHERE faith_run_id = ?", [fid]
    ).fetchone()
    return dict(
        faith_run_id=fid, images=n, params=params, aucs={k: aucs[k] for k in sorted(aucs)},
        plot=data_uri(curves_png(curves, aucs)) if curves else None,
        pointing=dict(n=pg[0], accuracy=pg[1], energy=pg[2]) if pg[0] else None,
    )


def never_used(cat: Catalog, run_id: int, limit: int = 30) -> tuple[int, list[tuple[str, str]]]:
    n = cat.query("SELECT count(*) FROM attribute_usage WHERE run_id = ? AND never_used", [run_id]).fetchone()[0]
    rows = cat.query(
        "SELECT class_name, attribute FROM attribute_usage WHERE run_id = ? AND never_used ORDER BY class_name, attribute LIMIT ?",
        [run_id, limit],
    ).fetchall()
    return int(n), rows


def _image_card(cat: Catalog, run_id: int, img: dict, by_norm: dict, top_k: int, top_attrs: int, attr_maps: int,
                thumb: int) -> dict:
    preds = image_predictions(cat, run_id, img["image_id"])
    top = preds[0]
    true = by_norm.get(norm_class_name(img["label"])) if img["label"] else None
    true_pred = next((p for p in preds if true and p["class_id"] == true[0]), None)
    card = dict(
        path=img["path"], name=Path(img["path"]).name, label=img["label"], image_id=img["image_id"],
        classes=[dict(p, is_true=bool(true and p["class_id"] == true[0])) for p in preds[:top_k]],
        predicted=top["name"], correct=None if true is None else top["class_id"] == true[0],
        true_name=true[1] if true else None, true_rank=true_pred["rank"] if true_pred else None,
        split=None, attributes=[], maps=[], tip=None, tip_note=None, error=None, more_attributes=0,
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
    texts = attribute_texts(cat, np.unique(np.concatenate([a.attr_id for a in als.values()])))
    ce = explain_class(al, region_ids, boxes, h, w, texts, top)
    maxabs = max((abs(a.contribution) for a in ce.attributes), default=0) or 1.0
    for a in ce.attributes[:top_attrs]:
        card["attributes"].append(dict(text=a.text, share=100 * a.share, contribution=a.contribution, mass=a.mass,
                                       similarity=a.similarity, width=100 * abs(a.contribution) / maxabs,
                                       negative=a.contribution < 0))
    card["more_attributes"] = max(0, len(ce.attributes) - top_attrs)
    try:
        base = load_image(img["path"], (w, h))
    except InputError as exc:
        card["error"] = str(exc)
    else:
        def pic(heat):
            return data_uri(png_bytes(thumbnail(overlay(base, heat, ce.mask), thumb)))

        card["maps"].append(dict(title="image", uri=data_uri(png_bytes(thumbnail(base, thumb)))))
        card["maps"].append(dict(title=f"class: {top['name']}", uri=pic(ce.map)))
        for a in ce.attributes[:attr_maps]:
            card["maps"].append(dict(title=a.text, uri=pic(a.map)))
    if card["correct"] is False:
        if true_pred is None:
            card["tip_note"] = f"the true class {true[1]} was not among the run's candidates (shortlisted out)"
        elif len(als.get(true[0], [])) == 0:
            card["tip_note"] = f"no alignments stored for the true class {true[1]}"
        else:
            margins = tipping_margins(al, als[true[0]])
            aid = max(margins, key=lambda k: (margins[k], -k))
            card["tip"] = dict(text=texts.get(aid, str(aid)), margin=margins[aid], gap=top["score"] - true_pred["score"],
                               true_score=true_pred["score"])
    card["region_kind"] = kind
    card["regions"] = len(region_ids)
    return card


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
) -> ReportResult:
    """Write the run's report; wrong predictions come first, then the rest by path."""
    import jinja2

    run_id, method, params = report_run(cat, run_id)
    by_norm = _label_classes(cat)
    rows = cat.query(
        "SELECT i.image_id, i.path, i.width, i.height, i.label, c.norm_name FROM predictions p JOIN images i USING (image_id) "
        "JOIN classes c USING (class_id) WHERE p.run_id = ? AND p.rank = 1 ORDER BY i.path",
        [run_id],
    ).fetchall()
    imgs = [dict(image_id=r[0], path=r[1], width=r[2], height=r[3], label=r[4],
                 wrong=bool(r[4]) and norm_class_name(r[4]) in by_norm and norm_class_name(r[4]) != r[5]) for r in rows]
    imgs.sort(key=lambda d: (not d["wrong"], d["path"]))
    shown = imgs[:limit] if limit else imgs
    cards = [_image_card(cat, run_id, im, by_norm, top_k, top_attrs, attr_maps, thumb) for im in shown]
    per_class = accuracy_by_class(cat, run_id)
    n_lab = sum(t for _, _, t in per_class)
    n_ok = sum(c for _, c, _ in per_class)
    unused_n, unused = never_used(cat, run_id)
    try:
        params_pretty = json.dumps(json.loads(params), indent=1, sort_keys=True)
    except ValueError:
        params_pretty = params
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped; the template never uses |safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template(TEMPLATE).render(
        run_id=run_id, method=method, params=params_pretty, model=cat.model, store=str(cat.root),
        n_images=len(imgs), n_shown=len(cards), n_wrong=sum(d["wrong"] for d in imgs),
        accuracy=(n_ok / n_lab) if n_lab else None, n_labelled=n_lab, n_correct=n_ok,
        accuracy_plot=data_uri(accuracy_png(per_class)) if per_class else None,
        faith=faithfulness_summary(cat, run_id), unused_n=unused_n, unused=unused, cards=cards,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return ReportResult(out, run_id, len(cards), len(html.encode()))


def write_report(cat: Catalog, run_id: int | None = None, out: str | Path = "report.html", limit: int | None = 50,
                 progress: bool = False) -> Path:
    """``build_report`` returning the page's path (what ``pipeline demo`` calls)."""
    return build_report(cat, run_id, out, limit=limit).path
