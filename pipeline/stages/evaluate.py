"""``pipeline evaluate``: accuracy of stored runs against image labels, in CLIP_benchmark's terms.

Metrics follow CLIP_benchmark's zero-shot classification: ``acc1``, ``acc5`` (NaN with fewer
than 5 classes) and ``mean_per_class_recall`` (balanced accuracy over the classes that occur
among the labels). Labels are matched to class names after the normalisation build-attributes
uses (``_`` -> space, case and whitespace folded). Two more figures users need to compare:

* ``shortlist_recall``: for LaZSL runs with a top-k shortlist, the share of labelled images
  whose true class survived it (a class cut by the shortlist can never be predicted).
* ``acc1_per_draw_mean`` / ``acc1_per_draw_std``: for WCA, the mean ± std (ddof 0) of the
  accuracies of its random crop draws taken one at a time, as upstream reports WCA;
  ``acc1`` is then the accuracy of the draw-averaged score (an ensemble), labelled as such.
* ``acc1_seeds_mean`` / ``acc1_seeds_std``: for WaffleCLIP run with several seeds (one run
  per seed, ``--waffle-seeds``), the mean ± std (ddof 0) of those runs' ``acc1``, as the
  WaffleCLIP paper reports it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stores import files, tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..config import RegionConfig
from ..errors import InputError
from ..methods import find_method
from ..names import norm_class_name
from .compositional import CZSL_COLUMNS, czsl_columns, czsl_evaluation, format_czsl_table


@dataclass
class RunEval:
    run_id: int
    method: str
    model: str
    n_images: int
    metrics: dict
    unmatched_labels: dict = field(default_factory=dict)  # label -> count
    params: dict = field(default_factory=dict)
    regions: str = ""  # the region set the run scored (RegionConfig.label of its index runs)
    maps: dict | None = None  # this run's default maps as faithfulness --compare measured them, by metric


MAP_KIND = "plan-dense"  # the maps explain draws by default (on patch regions: the plan over patch cells)
MAP_METRICS = ("pointing", "deletion", "insertion")


def latest_runs(cat: Catalog, methods: list[str] | None = None) -> list[int]:
    """The latest run of each method (of each of ``methods``); for a method run with several
    seeds (waffle), every run of that latest seed group."""
    by_method = tables.latest_runs_by_method(cat)
    if methods:
        missing = [m for m in methods if m not in by_method]
        if missing:
            raise StoreError(f"No run of {', '.join(missing)} in the store; run `pipeline classify --method {missing[0]}` first.")
        by_method = {m: by_method[m] for m in methods}
    out = []
    for run_id in by_method.values():
        group = (tables.get_run(cat, run_id).params or {}).get("seed_group")
        if not group:
            out.append(run_id)
            continue
        first = group["first_run_id"]
        for r in range(first, first + group["n"]):  # a failed seed leaves a gap
            run = tables.get_run(cat, r)
            if run is not None and (run.params.get("seed_group") or {}).get("first_run_id") == first:
                out.append(r)
    return out


def evaluate_run(cat: Catalog, run_id: int) -> RunEval:
    run = tables.get_run(cat, run_id)
    if run is None:
        raise InputError(f"No run {run_id}; `pipeline sql \"select * from runs\"` lists them.")
    classes = tables.class_ids_by_norm(cat)
    n_classes = run.params.get("n_classes") or len(classes)
    truth, ranked, image_ids, unmatched = [], [], [], {}
    for image_id, label, top in tables.ranked_classes(cat, run_id):
        if label is None:
            continue
        cid = classes.get(norm_class_name(label))
        if cid is None:
            unmatched[label] = unmatched.get(label, 0) + 1
            continue
        truth.append(cid)
        ranked.append(top)
        image_ids.append(image_id)
    if not truth:
        raise StoreError(f"Run {run_id} has no image whose label matches a class; index labelled images (one folder per class).")
    metrics = classification_metrics(np.array(truth), ranked, n_classes)
    top_k = run.params.get("config", {}).get("top_k", 0)
    spec = find_method(run.method)
    if spec is not None and spec.shortlisted:  # the methods that score only a shortlist
        shortlisted = 0 < top_k < n_classes
        metrics["shortlist_recall"] = float(np.mean([t in r for t, r in zip(truth, ranked)])) if shortlisted else 1.0
    draws = tables.sample_top1(cat, run_id)
    if draws:
        per_draw = draw_accuracies(np.array(truth), [draws[i] for i in image_ids])
        metrics["acc1_per_draw_mean"] = float(per_draw.mean())
        metrics["acc1_per_draw_std"] = float(per_draw.std())
        metrics["n_draws"] = len(per_draw)
    metrics.update(czsl_columns(czsl_evaluation(cat, run_id)))  # (state, object) pairs marked seen/unseen
    return RunEval(run_id, run.method, run.model, len(truth), metrics, unmatched, run.params,
                   regions=region_set_label(run.params.get("index_runs") or tables.index_run_params(cat)),
                   maps=map_quality(cat, run_id))


def region_set_label(index_runs: list[dict]) -> str:
    """The region sets of the index runs a classify run read, e.g. ``crops 90`` (distinct, in order)."""
    labels = []
    for p in index_runs:
        if "regions" in p:
            try:
                label = RegionConfig.from_dict(p["regions"]).label()
            except InputError:  # settings of another version: name the source alone
                label = str(p["regions"].get("source", "?"))
            if label not in labels:
                labels.append(label)
    return " | ".join(labels)


def map_quality(cat: Catalog, run_id: int) -> dict | None:
    """{metric: faithfulness_summary row} of this run's default maps, if ``faithfulness --compare``
    measured them for this run (pointing, deletion, insertion; each with random maps' value)."""
    import duckdb

    try:
        s = tables.map_kind_summary(cat, run_id, MAP_KIND, this_run=True)
    except duckdb.CatalogException:  # a store from before migration m014, opened read-only
        return None
    return None if s is None else {m: s["metrics"][m] for m in MAP_METRICS if m in s["metrics"]}


def classification_metrics(truth: np.ndarray, ranked: list[list[int]], n_classes: int) -> dict:
    """acc1, acc5 and mean per-class recall from the true class and each image's ranked classes."""
    top1 = np.array([r[0] == t for t, r in zip(truth, ranked)])
    top5 = np.array([t in r[:5] for t, r in zip(truth, ranked)])
    recalls = [top1[truth == c].mean() for c in np.unique(truth)]
    return {
        "acc1": float(top1.mean()),
        "acc5": float(top5.mean()) if n_classes >= 5 else float("nan"),
        "mean_per_class_recall": float(np.mean(recalls)),
    }


def draw_accuracies(truth: np.ndarray, per_image_draws: list[list[int]]) -> np.ndarray:
    """Top-1 accuracy of each random draw on its own: (n_draws,)."""
    draws = np.array(per_image_draws)  # (N, R) class ids
    return (draws == truth[:, None]).mean(0)


def clip_benchmark_record(cat: Catalog, ev: RunEval, dataset: str) -> dict:
    """One result in CLIP_benchmark's output schema, plus the class names and the prompts the
    run scored against. ``model_fullname`` names the method too, so CLIP_benchmark's results
    notebook pivots methods apart."""
    rec = cat.model_record() or {}
    model, _, pretrained = ev.model.partition("/")
    model, pretrained = rec.get("name", model), rec.get("pretrained", pretrained)
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "model_fullname": f"{model} {pretrained} {method_label(ev)}",
        "task": "zeroshot_classification",
        "metrics": dict(ev.metrics),  # acc5 is NaN below 5 classes, written as NaN as CLIP_benchmark does
        "language": "en",
        "method": ev.method,
        "method_label": method_label(ev),
        "run_id": ev.run_id,
        "n_images": ev.n_images,
        "params": ev.params,
        "classnames": list(tables.class_names(cat).values()),
        "templates": run_prompts(cat, ev.params),
    }


def run_prompts(cat: Catalog, params: dict) -> dict[str, list[str]]:
    """Class name -> the exact prompts a run scored against (not every stored text)."""
    texts = params.get("texts", {})
    kind = texts.get("kind", "")
    if kind.startswith("class prompts "):
        out: dict[str, list[str]] = {}
        for template_set in kind[len("class prompts "):].split("+"):  # nameless+clip: two sets
            for name, prompts in tables.class_prompt_texts(cat, template_set).items():
                out.setdefault(name, []).extend(prompts)
        return out
    style = kind.split(" ")[0] if kind else None
    fp = cat.model
    if style in ("descriptors", "sentences") and fp:
        return tables.texts_by_ids(cat, tables.attribute_matrix(cat, fp, style).ids.tolist())
    return {}


def result_file_name(dataset: str, rec: dict) -> str:
    """CLIP_benchmark's ``--output`` pattern, with the method: safe as a file name."""
    raw = f"{dataset}_{rec['pretrained']}_{rec['model']}_{rec.get('method_label', rec['method'])}_en_zeroshot_classification.json"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in raw)


def write_results(cat: Catalog, evals: list[RunEval], out_dir: str | Path, dataset: str) -> list[Path]:
    """One JSON per (dataset, model, method) in ``out_dir`` (created when missing: it is the output)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir} is a file; evaluate writes one JSON per method into a folder.")
    out_dir.mkdir(exist_ok=True)  # the folder the user named (-o); its parent must exist, never created
    recs = [clip_benchmark_record(cat, ev, dataset) for ev in evals]
    names = [result_file_name(dataset, rec) for rec in recs]
    paths = []
    for rec, name in zip(recs, names):
        if names.count(name) > 1:  # two runs of one method in one call: one file each, never overwritten
            name = name.removesuffix(".json") + f"_run{rec['run_id']}.json"
        paths.append(files.write_text(out_dir / name, json.dumps(rec, indent=2)))
    return paths


def method_label(ev: RunEval) -> str:
    """The method, with the seed for runs that are one of several seeds (waffle-seed3)."""
    return f"{ev.method}-seed{ev.params['config']['seed']}" if ev.params.get("seed_group") else ev.method


def seed_groups(evals: list[RunEval]) -> dict[int, list[RunEval]]:
    """Runs of one ``--waffle-seeds`` invocation, by their group's first run id (2 or more runs)."""
    groups: dict[int, list[RunEval]] = {}
    for ev in evals:
        g = ev.params.get("seed_group")
        if g:
            groups.setdefault(g["first_run_id"], []).append(ev)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _pct(v) -> str:
    return "    nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}%"


def table_rows(evals: list[RunEval]) -> list[dict]:
    """One row per run, the columns the table, CSV and JSON outputs share."""
    rows = []
    seeds = {ev.run_id: group for group in seed_groups(evals).values() for ev in group}
    for ev in evals:
        m = ev.metrics
        group = seeds.get(ev.run_id)
        acc = np.array([g.metrics["acc1"] for g in group]) if group else None
        rows.append({
            "method": ev.method, "run_id": ev.run_id, "regions": ev.regions, "images": ev.n_images, "acc1": m["acc1"],
            "acc5": m["acc5"],
            "mean_per_class_recall": m["mean_per_class_recall"], "shortlist_recall": m.get("shortlist_recall"),
            "acc1_per_draw_mean": m.get("acc1_per_draw_mean"), "acc1_per_draw_std": m.get("acc1_per_draw_std"),
            "seed": ev.params["config"]["seed"] if group else None,
            "acc1_seeds_mean": float(acc.mean()) if group else None, "acc1_seeds_std": float(acc.std()) if group else None,
            "n_seeds": len(group) if group else None,
        })
        rows[-1].update(_map_columns(ev.maps))
        if any("closed_hm" in e.metrics for e in evals):  # CZSL columns only where pairs are marked seen/unseen
            rows[-1].update({k: m.get(k) for k in CZSL_COLUMNS})
    return rows


def _map_columns(maps: dict | None) -> dict:
    """maps_<metric> and maps_<metric>_random (pointing: its chance), maps_better: metrics whose
    difference to random maps has a 95% interval on the good side, of those measured."""
    out = {}
    for m in MAP_METRICS:
        r = (maps or {}).get(m)
        out[f"maps_{m}"] = r["value"] if r else None
        out[f"maps_{m}_{'chance' if m == 'pointing' else 'random'}"] = (r["chance"] if m == "pointing" else
                                                                        r["random_value"]) if r else None
    out["maps_better"] = f"{sum(bool(r['better']) for r in maps.values())}/{len(maps)}" if maps else None
    return out


def format_maps_table(rows: list[dict]) -> list[str]:
    """Map quality beside accuracy, for runs whose default maps faithfulness --compare measured."""
    measured = [r for r in rows if r["maps_better"] is not None]
    if not measured:
        return []
    head = f"{'method':14s} {'run':>4s} {'regions':24s} {'acc1':>7s} {'pointing (chance)':>18s} {'deletion (random)':>18s} " \
           f"{'insertion (random)':>19s} {'better':>6s}"
    out = ["", f"maps ({MAP_KIND}, `faithfulness --compare`; deletion lower is better):", head, "-" * len(head)]
    for r in measured:
        cell = lambda m, ref: "-" if r[f"maps_{m}"] is None else f"{r[f'maps_{m}']:.3f} ({r[f'maps_{m}_{ref}']:.3f})"  # noqa: E731
        out.append(f"{r['method']:14s} {r['run_id']:>4d} {r['regions'][:24]:24s} {_pct(r['acc1'])} "
                   f"{cell('pointing', 'chance'):>18s} {cell('deletion', 'random'):>18s} {cell('insertion', 'random'):>19s} "
                   f"{r['maps_better']:>6s}")
    return out


def format_table(evals: list[RunEval]) -> str:
    head = f"{'method':14s} {'run':>4s} {'images':>7s} {'acc1':>7s} {'acc5':>7s} {'mpcr':>7s} {'shortlist':>9s}"
    lines = [head, "-" * len(head)]
    notes = []
    rows = table_rows(evals)
    for r in rows:
        sl = _pct(r["shortlist_recall"]) if r["shortlist_recall"] is not None else "      -"
        label = r["method"] + (f" s{r['seed']}" if r["seed"] is not None else "")
        lines.append(f"{label:14s} {r['run_id']:>4d} {r['images']:>7d} {_pct(r['acc1'])} {_pct(r['acc5'])} "
                     f"{_pct(r['mean_per_class_recall'])} {sl:>9s}")
        if r["acc1_per_draw_mean"] is not None:
            notes.append(f"{r['method']} (run {r['run_id']}): acc1 per crop draw {100 * r['acc1_per_draw_mean']:.2f} ± "
                         f"{100 * r['acc1_per_draw_std']:.2f}% (as upstream reports it); acc1 above is the draw-averaged "
                         "score's (an ensemble)")
    for group in seed_groups(evals).values():
        r = next(x for x in rows if x["run_id"] == group[0].run_id)
        seeds = [g.params["config"]["seed"] for g in group]
        notes.append(f"{group[0].method} (runs {group[0].run_id}-{group[-1].run_id}, seeds {min(seeds)}-{max(seeds)}): "
                     f"acc1 {100 * r['acc1_seeds_mean']:.2f} ± {100 * r['acc1_seeds_std']:.2f}% over {len(group)} seeds")
    sets = sorted({r["regions"] for r in rows if r["regions"]})
    if sets:
        notes.append(f"regions: {'; '.join(sets)}")
    return "\n".join(lines + notes + format_maps_table(rows) + format_czsl_table(evals))
