"""``classify`` and ``evaluate``."""
from __future__ import annotations

from dataclasses import fields
from functools import partial

import click

from ..config import preset_model_note, recorded_preset
from ..stages.methods import get_method, resolve_method_config
from ..engines.ray_engine import classify_ray
from ..names import check_text
from .compositional import run_notes
from .group import cli
from .options import (
    RUN_ID,
    check_engine,
    check_output_folder,
    command,
    engine_options,
    format_option,
    limit_option,
    load_store_model,
    method_config_options,
    method_option,
    method_settings,
    model_options,
    open_store,
    output_option,
    parse_methods,
    preset_option,
    show_progress,
    store_option,
)
from .output import emit, format_records

def run_methods(cat, methods: list[str], preset: str | None, options: dict, model_name, pretrained, device,
                engine: dict | None = None) -> list:
    """Resolve the configuration once (options > --preset > the store's preset > defaults),
    say where values came from, and run each method. Returns the ClassifyReports.
    ``engine``: ``{"engine": "ray", "address": ..., "concurrency": ...}`` runs them on Ray."""
    # heavy: imported on use
    from stores import tables

    from ..stages.classify import classify_runs

    own = {f.name for m in methods for f in fields(get_method(m).config)}
    resolved = resolve_method_config(options, preset, recorded_preset(tables.index_run_params(cat)), own)
    record = cat.model_record()
    mismatch = preset_model_note(preset, record["name"]) if record else None
    for note in resolved.notes + ((mismatch,) if mismatch else ()):
        click.echo(f"note: {note}", err=True)
    unused = ["--" + k.replace("_", "-") for k, v in options.items() if v is not None and k not in own]
    if unused:
        verb = "is not a setting" if len(unused) == 1 else "are not settings"
        click.echo(f"note: {', '.join(unused)} {verb} of {', '.join(methods)}; ignored", err=True)
    needs_text = any(get_method(m).needs_text_encoder for m in methods)
    model = load_store_model(cat, model_name, pretrained, device, required=False) if needs_text else None
    provenance = {"preset": resolved.preset, "origins": resolved.origins}
    scorer = None
    if engine and engine.get("engine") == "ray":
        scorer = partial(classify_ray, address=engine.get("address"), concurrency=engine.get("concurrency"))
    return [r for m in methods
            for r in classify_runs(cat, m, resolved.config, model=model, provenance=provenance, progress=show_progress(),
                                   scorer=scorer)]


@command(cli, "classify")
@method_option()
@preset_option
@method_config_options
@limit_option("Images whose top classes are printed per run.", default=5)
@format_option()
@engine_options(gpu=False)
@model_options
@store_option
def classify_cmd(methods, preset, limit, fmt, engine, address, ray_concurrency, model_name, pretrained, device, store,
                 **config):
    """Score indexed images; one run per method (no image is decoded).

    \b
    pipeline classify --method lazsl --top-k 50 --theta 0.8
    pipeline classify --method clip,dclip,wca,lazsl
    pipeline classify --method awt                     # needs index-images --n-views 50
    pipeline classify --method object-bound --top-k 10 # best with index-images --n-parts 60
    pipeline classify --method waffle --waffle-seeds 5 # one run per seed
    pipeline classify --preset imagenet-b32 --format jsonl --limit 0
    pipeline classify --method lazsl --engine ray --address auto
    pipeline classify --method czsl-local --theta 0.95 --open-world   # (state, object) pairs

    Settings come from the options, else --preset, else the preset recorded when the images
    were indexed, else the defaults; every run stores what it used (runs.params). With
    --engine ray, Ray actors score the regions shards and this process writes the run.
    """
    # heavy: imported on use
    from stores import tables

    check_engine(engine, address, ray_concurrency=ray_concurrency)
    options = method_settings(config)
    rows = []
    with open_store(store, check="classify") as cat:
        ray = {"engine": engine, "address": address, "concurrency": ray_concurrency}
        for report in run_methods(cat, parse_methods(methods), preset, options, model_name, pretrained, device, ray):
            click.echo(f"run {report.run_id}: {report.method} on {report.images} images in {report.seconds:.1f} s",
                       err=fmt != "table")
            for line in run_notes(cat, report):
                click.echo(line, err=fmt != "table")
            rows += _prediction_rows(report, tables.top_attributes(cat, report.run_id), limit)
    if rows and (limit != 0 or fmt != "table"):
        emit(format_records(rows, fmt))


def _prediction_rows(report, top: list[dict], n_images: int) -> list[dict]:
    seen: list[int] = []
    rows = []
    for r in top:
        if r["image_id"] not in seen:
            if n_images and len(seen) == n_images:
                break
            seen.append(r["image_id"])
        rows.append(dict(run_id=report.run_id, method=report.method, path=r["path"], label=r["label"], rank=r["rank"],
                         class_name=r["name"], score=r["score"], attributes="; ".join(r["attributes"][:3])))
    return rows


@command(cli, "evaluate")
@method_option(default=None, help_extra=" Runs them first, on the same regions, with the settings below.")
@click.option("--run", "runs", type=RUN_ID, multiple=True, help="Evaluate these run ids (default: the latest run of each method).")
@preset_option
@method_config_options
@click.option("--dataset", default="custom", show_default=True, help="Dataset name written into the JSON results.")
@format_option()
@output_option("folder", "one CLIP_benchmark-style JSON per (dataset, model, method).")
@model_options
@store_option
def evaluate_cmd(methods, runs, preset, dataset, fmt, output, model_name, pretrained, device, store, **config):
    """Accuracy (acc1, acc5, mean per-class recall, shortlist recall) of runs against image labels.

    \b
    pipeline evaluate --method clip,dclip,wca,lazsl
    pipeline evaluate --method lazsl --preset cub-b32
    pipeline evaluate --format json -o results/

    WCA is also reported as upstream does: mean ± std of the accuracies of its crop draws;
    WaffleCLIP (--waffle-seeds N) as mean ± std over its seeds' runs. On a store of (state, object)
    pairs marked seen/unseen (build-attributes --seen), the CZSL figures follow: best seen, best
    unseen, best harmonic mean and the seen-unseen AUC as a calibration bias sweeps, closed and
    open world (docs/compositional.md).
    """
    # heavy: imported on use
    from ..stages.evaluate import evaluate_run, format_table, latest_runs, table_rows, write_results

    names = parse_methods(methods)
    check_text(dataset, "--dataset", "dataset name")
    out_dir = check_output_folder(output) if output else None
    options = method_settings(config)
    with open_store(store, read_only=not names, check="evaluate") as cat:
        if names:
            runs = tuple(r.run_id for r in run_methods(cat, names, preset, options, model_name, pretrained, device))
        evals = [evaluate_run(cat, r) for r in (runs or latest_runs(cat))]
        for ev in evals:
            if ev.unmatched_labels:
                click.echo(f"run {ev.run_id}: labels matching no class (skipped): {ev.unmatched_labels}", err=True)
        emit(format_table(evals) + "\n" if fmt == "table" else format_records(table_rows(evals), fmt))
        if out_dir is not None:
            for p in write_results(cat, evals, out_dir, dataset):
                click.echo(f"wrote {p}", err=True)
