"""Stage 3: score indexed images with a method; write runs, predictions and alignments.

What a method is (its texts, regions, scorer, config, which tables it writes) is its record
in :mod:`pipeline.methods`; this module reads region and text embeddings from the store
(:mod:`stores.tables`), calls the method's scorer batch by batch, and writes what it returns
through :mod:`stores.results`. No image is decoded here: changing θ or ε re-runs only this
stage. A method with a stage of its own (the czsl-* pairs) is handed to it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError
from stores.results import ResultRows, write_results

from ..config import MethodConfig
from ..methods import MethodTexts, ScoreContext, get_method
from ..methods.texts import load_templates  # noqa: F401  (re-exported: part of this stage's API)

ScoredRows = ResultRows  # the rows scoring produces (kept under the name the engines used)


@dataclass
class ClassifyReport:
    run_id: int
    method: str
    images: int = 0
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def method_texts(cat: Catalog, method: str, config: MethodConfig, model=None) -> MethodTexts:
    """Which stored texts a method scores against (class prompts are encoded on demand)."""
    spec = get_method(method)
    if spec.texts is None:
        raise StoreError(f"--method {method} scores texts of its own stage, not a text matrix.")
    return spec.texts(cat, config, model, method)


# ---- the stage ----------------------------------------------------------------------------
def score_region_batch(ctx: ScoreContext, batch: tables.RegionBatch) -> ResultRows:
    """Score one region batch with the context's method and return the rows to store.

    Pure: arrays in, rows out, no store access; the local engine calls it shard by shard, a Ray
    actor on the shards it is given (:func:`score_shard`)."""
    out = ResultRows(images=len(batch.image_ids))
    ctx.spec.scorer(ctx, batch, out)
    return out


def score_shard(ctx: ScoreContext, path, image_ids=None, positions=None) -> ResultRows:
    """Every batch of one regions shard (only ``image_ids`` when given; ``positions``: their rows
    in the images partner, :func:`stores.tables.region_shard_plan`) through :func:`score_region_batch`."""
    out = ResultRows()
    t = tables.read_region_rows(Path(path), image_ids, positions, tables.REGION_BATCH_COLUMNS)
    if t is not None and t.num_rows:
        for batch in tables.region_batches_of(t):
            out.extend(score_region_batch(ctx, batch))
    return out


def write_scored(cat: Catalog, rows: ResultRows) -> None:
    """Insert scored rows through :mod:`stores.results` (the caller holds the transaction)."""
    write_results(cat, rows)


@dataclass
class PreparedRun:
    report: ClassifyReport
    context: ScoreContext


def prepare_run(cat: Catalog, method: str, config: MethodConfig, *, model=None, image_ids=None,
                provenance: dict | None = None, engine: dict | None = None) -> PreparedRun:
    """The texts a method scores against (class prompts encoded on demand), the run id and the
    params it records (``engine``: which engine ran it); the same for both engines."""
    spec = get_method(method)
    fp = cat.model
    if fp is None:
        raise StoreError(f"Store {cat.root} is empty; run build-attributes and index-images first.")
    texts = method_texts(cat, method, config, model)
    classes = np.unique(texts.attrs.class_ids)  # column order of every score matrix
    cls_index = np.searchsorted(classes, texts.attrs.class_ids)
    k = config.top_k if 0 < config.top_k < len(classes) else len(classes)
    extra = spec.prepare(config, model) if spec.prepare else {}
    run_id = tables.next_run_id(cat)
    params = {"method": method, "config": config.to_dict(), **(provenance or {}), "model": fp,
              "texts": texts.describe(), "n_classes": len(classes), "index_runs": tables.index_run_params(cat),
              **extra, **({"engine": engine} if engine else {})}
    report = ClassifyReport(run_id=run_id, method=method, params=params)
    return PreparedRun(report, ScoreContext(method, run_id, texts, classes, cls_index, k, config, extra))


def classify(
    cat: Catalog,
    method: str,
    config: MethodConfig = MethodConfig(),
    *,
    model=None,
    image_ids: list[int] | None = None,
    provenance: dict | None = None,
    progress: bool = True,
) -> ClassifyReport:
    """Score every indexed image (or ``image_ids``) with ``method`` and store one run.

    ``provenance`` (the preset and where each value came from) is stored with the config.
    Each batch goes through :func:`score_region_batch`; the run and its rows are one transaction.
    """
    from tqdm import tqdm

    spec = get_method(method)
    if spec.stage is not None:  # a method with a stage of its own (compositional pairs)
        return spec.stage(cat, method, config, model=model, image_ids=image_ids, provenance=provenance,
                          progress=progress)
    t0 = time.perf_counter()
    run = prepare_run(cat, method, config, model=model, image_ids=image_ids, provenance=provenance)
    report, ctx = run.report, run.context
    n_total = tables.image_count(cat) if image_ids is None else len(image_ids)
    bar = tqdm(total=n_total, desc=f"classify {method}", unit="img", disable=not progress)
    with cat.transaction():
        tables.insert_run(cat, tables.RunRecord(report.run_id, method, report.params, cat.model))
        for batch in tables.iter_region_batches(cat, image_ids):
            write_scored(cat, score_region_batch(ctx, batch))
            report.images += len(batch.image_ids)
            bar.update(len(batch.image_ids))
        write_contrasts(cat, report, image_ids)
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def write_contrasts(cat: Catalog, report: ClassifyReport, image_ids=None) -> None:
    """After scoring, in the run's transaction: the contrastive reasons of OT runs (rank 1 vs
    rank 2 and vs the true class) from the rows just written (:mod:`.contrasts`)."""
    if not get_method(report.method).writes_contrasts:
        return
    from .contrasts import store_contrasts

    store_contrasts(cat, report.run_id, image_ids)
    top = report.params.get("config", {}).get("alignments_top", 0)
    if top == 1:
        report.notes.append("--alignments-top 1 stores no runner-up plan: no contrastive reasons "
                            "(why rank 1 and not rank 2); use 2 or more")


def classify_runs(cat: Catalog, method: str, config: MethodConfig = MethodConfig(), *, provenance: dict | None = None,
                  scorer=None, **kwargs) -> list[ClassifyReport]:
    """:func:`classify` (or ``scorer``, same signature: the Ray engine's), once per config the
    method's ``runs`` returns (WaffleCLIP's seeds ``seed, seed+1, ...``; each run records its
    group so evaluate reports mean ± std over them)."""
    scorer = scorer or classify
    spec = get_method(method)
    configs = spec.runs(config) if spec.runs else [config]
    if len(configs) == 1:
        return [scorer(cat, method, configs[0], provenance=provenance, **kwargs)]
    first, n = tables.next_run_id(cat), len(configs)
    return [scorer(cat, method, c, provenance={**(provenance or {}),
                                               "seed_group": {"first_run_id": first, "index": i, "n": n}}, **kwargs)
            for i, c in enumerate(configs)]
