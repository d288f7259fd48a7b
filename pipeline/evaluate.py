"""``pipeline evaluate``: accuracy of stored runs against image labels, in CLIP_benchmark's terms.

Metrics follow CLIP_benchmark's zero-shot classification: ``acc1``, ``acc5`` (NaN with fewer
than 5 classes) and ``mean_per_class_recall`` (balanced accuracy over the classes that occur
among the labels). Labels are matched to class names after the normalisation that
build-attributes uses (``_`` -> space, case and whitespace folded).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stores.catalog import Catalog, StoreError

from .attributes import norm_class_name


@dataclass
class RunEval:
    run_id: int
    method: str
    model: str
    n_images: int
    metrics: dict
    unmatched_labels: dict = field(default_factory=dict)  # label -> count
    params: dict = field(default_factory=dict)


def latest_runs(cat: Catalog, methods: list[str] | None = None) -> list[int]:
    rows = cat.query("SELECT method, max(run_id) FROM runs GROUP BY method ORDER BY min(run_id)").fetchall()
    by_method = dict(rows)
    if methods:
        missing = [m for m in methods if m not in by_method]
        if missing:
            raise StoreError(f"No run of {', '.join(missing)} in the store; run `pipeline classify --method {missing[0]}` first.")
        return [by_method[m] for m in methods]
    return [r for _, r in rows]


def evaluate_run(cat: Catalog, run_id: int) -> RunEval:
    run = cat.query("SELECT method, model, params FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if run is None:
        raise StoreError(f"No run {run_id}; `pipeline sql \"select * from runs\"` lists them.")
    method, model, params = run
    classes = {norm: cid for cid, norm in cat.query("SELECT class_id, norm_name FROM classes").fetchall()}
    n_classes = json.loads(params).get("n_classes") or len(classes)
    rows = cat.query(
        """
        SELECT p.image_id, i.label, list(p.class_id ORDER BY p.rank) AS ranked
        FROM predictions p JOIN images i USING (image_id)
        WHERE p.run_id = ? AND p.rank <= 5 GROUP BY ALL ORDER BY p.image_id
        """,
        [run_id],
    ).fetchall()
    truth, ranked, unmatched = [], [], {}
    for _, label, top in rows:
        if label is None:
            continue
        cid = classes.get(norm_class_name(label))
        if cid is None:
            unmatched[label] = unmatched.get(label, 0) + 1
            continue
        truth.append(cid)
        ranked.append(top)
    if not truth:
        raise StoreError(f"Run {run_id} has no image whose label matches a class; index labelled images (one folder per class).")
    metrics = classification_metrics(np.array(truth), ranked, n_classes)
    return RunEval(run_id, method, model, len(truth), metrics, unmatched, json.loads(params))


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


def clip_benchmark_record(cat: Catalog, ev: RunEval, dataset: str) -> dict:
    """One result in CLIP_benchmark's output schema (plus the class names and prompts used)."""
    spec = json.loads(cat.get_meta("model_spec") or "null") or {}
    model, _, pretrained = ev.model.partition("/")
    classnames = [r[0] for r in cat.query("SELECT name FROM classes ORDER BY class_id").fetchall()]
    prompts: dict[str, list[str]] = {}
    for name, prompt in cat.query(
        "SELECT c.name, a.prompt FROM attributes a JOIN classes c USING (class_id) ORDER BY a.attr_id"
    ).fetchall():
        prompts.setdefault(name, []).append(prompt)
    return {
        "dataset": dataset,
        "model": spec.get("name", model),
        "pretrained": spec.get("pretrained", pretrained),
        "task": "zeroshot_classification",
        "metrics": dict(ev.metrics),  # acc5 is NaN below 5 classes, written as NaN as CLIP_benchmark does
        "language": "en",
        "method": ev.method,
        "run_id": ev.run_id,
        "n_images": ev.n_images,
        "params": ev.params,
        "classnames": classnames,
        "templates": prompts,
    }


def write_results(cat: Catalog, evals: list[RunEval], out_dir: str | Path, dataset: str) -> list[Path]:
    """One JSON per (dataset, model, method), named like CLIP_benchmark's --output pattern."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ev in evals:
        rec = clip_benchmark_record(cat, ev, dataset)
        name = f"{dataset}_{rec['pretrained']}_{rec['model']}_{ev.method}_en_zeroshot_classification.json".replace("/", "-").replace(":", "-")
        p = out_dir / name
        p.write_text(json.dumps(rec, indent=2))
        paths.append(p)
    return paths


def format_table(evals: list[RunEval]) -> str:
    head = f"{'method':10s} {'run':>4s} {'images':>7s} {'acc1':>7s} {'acc5':>7s} {'mpcr':>7s}"
    lines = [head, "-" * len(head)]
    for ev in evals:
        m = ev.metrics
        f = lambda v: "    nan" if math.isnan(v) else f"{100 * v:6.2f}%"  # noqa: E731
        lines.append(f"{ev.method:10s} {ev.run_id:>4d} {ev.n_images:>7d} {f(m['acc1'])} {f(m['acc5'])} {f(m['mean_per_class_recall'])}")
    return "\n".join(lines)
