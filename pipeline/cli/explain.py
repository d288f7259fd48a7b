"""``explain``, ``report`` and ``faithfulness``."""
from __future__ import annotations

import click

from ..inputs import DEFAULT_MAX_FILE_BYTES
from .group import cli
from .options import (
    RUN_ID,
    byte_size_option,
    check_output_file,
    check_output_folder,
    command,
    format_option,
    limit_option,
    load_store_model,
    model_options,
    number_option,
    open_store,
    output_option,
    show_progress,
    store_option,
)
from ..explain.map_kinds import BASELINES, DEFAULT_KIND, DRAWN_KINDS, MAP_KINDS, SCORERS, parse_kinds
from .output import emit, format_records


# map rows (kind class | attribute) fill the first block, contrast rows (kind contrast) the last
EXPLAIN_COLUMNS = ["image", "class_name", "attribute", "kind", "share", "contribution", "mass", "similarity", "map_kind",
                   "peak", "npy", "overlay", "other_class", "other_attribute", "shared", "term", "reason_rank", "gap",
                   "runner_up", "true_class"]


@command(cli, "explain")
@click.argument("image")
@click.option("--class", "class_name", default=None, help="Explain this class's score (default: the prediction, rank 1).")
@click.option("--attribute", default=None, help="Only this attribute's overlay (text, part of it, or attr_id).")
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest run with alignments).")
@output_option("folder", "the PNG overlays.", default="explanations")
@limit_option("Attributes listed.", default=10)
@click.option("--maps", "map_kind", type=click.Choice(DRAWN_KINDS), default=DEFAULT_KIND, show_default=True,
              help="plan-dense: the plan's crop masses placed inside each crop by dense patch tokens (measured best; "
                   "docs/explanations.md); crop-boxes: mass over whole crop boxes; occlusion: drop of the class's LaZSL "
                   "probability under a blurred window (slow, faithful by construction; its cost is printed).")
@format_option()
@store_option
def explain_cmd(image, class_name, attribute, run_id, output, limit, map_kind, fmt, store):
    """Attribution maps of one image: PNG overlays per attribute and per class, and each
    attribute's share of the score.

    \b
    IMAGE is an indexed image: its path, an image_id, or a unique end of its path.
    Every map is also written as a .npy array in the image's pixels (--format json lists
    each map's class, attribute, peak [x, y] and .npy path).
    pipeline explain photos/cat/001.jpg
    pipeline explain photos/cat/001.jpg --maps occlusion   # the slow reference map
    pipeline explain photos/cat/001.jpg --class "tabby cat" --attribute "striped fur" -o maps/

    For (state, object) pairs it also says which region carried the state and which the
    object (czsl-local), and writes a map of each; after `pipeline mutual-knowledge` it lists
    the prediction's vision, shared and language concepts (`pipeline explain-concepts` shows
    only those).
    """
    # heavy: imported on use
    from ..explain.explain import explain_image

    out_dir = check_output_folder(output)
    with open_store(store, read_only=True, check="explain") as cat:
        res = explain_image(cat, image, run_id=run_id, class_name=class_name, attribute=attribute, out_dir=out_dir,
                            maps=map_kind, model=lambda: load_store_model(cat, None, None, None, required=False))
    if fmt == "table":
        for line in res.summary_lines(top=limit or None):
            click.echo(line)
        return
    rows = []
    for c in res.classes:
        common = dict(image=res.path, class_name=c.name, map_kind=c.map_kind)
        rows.append(dict(common, attribute=None, share=None, contribution=c.score, mass=None, similarity=None,
                         peak=c.peak, npy=str(c.npy) if c.npy else None, overlay=str(c.overlay) if c.overlay else None))
        for a in c.attributes[: limit or None]:
            rows.append(dict(common, attribute=a.text, share=a.share, contribution=a.contribution, mass=a.mass,
                             similarity=a.similarity, peak=a.peak, npy=str(a.npy) if a.npy else None,
                             overlay=str(a.overlay) if a.overlay else None))
    for r in rows:
        r["kind"] = "class" if r["attribute"] is None else "attribute"
    headline = next((p for p in res.contrasts if p.true_class), res.contrasts[0]) if res.contrasts else None
    for p in res.contrasts:  # why the prediction and not the runner-up / the true class: signed terms
        picture = str(res.contrast_png) if res.contrast_png and p is headline else None  # both classes' headline map
        rows.append(dict(image=res.path, class_name=p.class_name, attribute="(class prompt)", kind="contrast", overlay=picture,
                         other_class=p.other_name, other_attribute=None, shared=False, term=p.prompt_term,
                         reason_rank=p.prompt_rank, gap=p.gap, runner_up=p.runner_up, true_class=p.true_class))
        for t in p.rows:
            rows.append(dict(image=res.path, class_name=p.class_name, attribute=t["attribute"], kind="contrast",
                             other_class=p.other_name, other_attribute=t["other_attribute"], shared=t["shared"],
                             term=t["term"], reason_rank=t["reason_rank"], gap=p.gap, runner_up=p.runner_up,
                             true_class=p.true_class))
    emit(format_records(rows, fmt, columns=EXPLAIN_COLUMNS))


@command(cli, "explain-concepts")
@click.argument("image")
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest run with alignments).")
@format_option()
@store_option
def explain_concepts_cmd(image, run_id, fmt, store):
    """The mutual-knowledge concepts (vision / shared / language, MI) of one image's
    prediction, computed with the store's model if the store has none for this image.

    \b
    pipeline explain-concepts photos/cat/001.jpg
    """
    # heavy: imported on use
    from ..explain.concepts import explain_image_concepts

    with open_store(store) as cat:
        view = explain_image_concepts(cat, image, run_id, model=lambda: load_store_model(cat, None, None, None))
    if fmt == "table":
        for line in view.lines():
            click.echo(line)
        return
    emit(format_records([{k: r[k] for k in ("side", "concept", "rank", "score", "shared", "part", "x0", "y0", "x1", "y1")}
                         for r in view.rows], fmt))


@command(cli, "report")
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest run with alignments).")
@output_option("file", "the HTML page.", default="report.html")
@limit_option("Images on the page; wrong predictions first.", default=50)
@number_option("--show-classes", kind=int, lo=1, hi=1000, default=5, show_default=True, help="Classes listed per image.")
@click.option("--plot", "plots_dir", default=None, type=click.Path(file_okay=False),
              help="Folder to also write the accuracy and deletion/insertion plots to, as PNG files.")
@click.option("--maps", "map_kind", type=click.Choice(DRAWN_KINDS), default=DEFAULT_KIND, show_default=True,
              help="The maps drawn (as `explain --maps`); occlusion is slow (hundreds of encoder passes per image).")
@store_option
def report_cmd(run_id, output, limit, show_classes, plots_dir, map_kind, store):
    """A static HTML page for a run: predictions, score split, attribute contributions,
    heatmaps, why each prediction and not the runner-up or the true class, accuracy and faithfulness plots. Opens from disk.

    \b
    pipeline report -o run3.html --run 3
    """
    # heavy: imported on use
    from ..explain.report import build_report

    out = check_output_file(output)
    if plots_dir:
        check_output_folder(plots_dir)
    with open_store(store, read_only=True, check="report") as cat:
        res = build_report(cat, run_id, out, limit=limit or None, top_k=show_classes, plots_dir=plots_dir, maps=map_kind,
                           model=lambda: load_store_model(cat, None, None, None, required=False))
    click.echo(f"run {res.run_id}: {res.images} images, {res.bytes / 1e6:.1f} MB -> {res.path.resolve()}")
    for p in res.plots:
        click.echo(f"plot: {p}")


@command(cli, "faithfulness")
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest run with alignments).")
@click.option("--maps", "map_kinds", default=DEFAULT_KIND, show_default=True, metavar="KINDS",
              help=f"Comma-separated map kinds to measure, or all: {', '.join(MAP_KINDS)}. Each is paired with "
                   "random maps of the same kind.")
@number_option("--max-images", kind=int, lo=0, hi=2**31 - 1, default=0, show_default=True,
               help="Measure at most this many images, evenly spread over image_id order; every metric uses the "
                    "same images (0 = all).")
@limit_option("Table rows shown (map kinds).", default=0)
@number_option("--steps", kind=int, lo=1, hi=200, default=10, show_default=True, help="Deletion/insertion steps (equal shares of the pixels).")
@click.option("--scorer", type=click.Choice(SCORERS), default="method", show_default=True,
              help="What deletion/insertion/ROAD re-score: method = the run's own method re-run on the perturbed "
                   "image (LaZSL: full view and crops); dclip = the global DCLIP probability (one encoder pass).")
@click.option("--road", is_flag=True, help="Also ROAD (MoRF/LeRF with noisy linear imputation; needs the grad-cam "
              "package, 6 more encoded images per map).")
@click.option("--boxes", "boxes_file", type=click.Path(dir_okay=False), default=None,
              help="Ground-truth boxes (JSON/JSONL: image, class, attribute, x0, y0, x1, y1) for the pointing game.")
@click.option("--baseline", type=click.Choice(BASELINES), default="blur", show_default=True,
              help="What deleted pixels become (and insertion starts from).")
@number_option("--tolerance", lo=0, hi=10_000, default=8.0, show_default=True, help="Pointing game: pixels the box is grown by.")
@number_option("--seed", kind=int, lo=0, hi=2**63 - 1, default=0, show_default=True, help="Seed of the random maps and tie order.")
@number_option("--max-occlusion-images", "occlusion_images", kind=int, lo=0, hi=10**6, default=8, show_default=True,
               help="occlusion: maps on the first N measured images only (hundreds of encoder passes each).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default="faithfulness-maps.png", show_default=True,
              help="PNG of the mean deletion and insertion curves per map kind.")
@byte_size_option("--max-file-bytes", DEFAULT_MAX_FILE_BYTES, "A larger --boxes file is refused unread.")
@format_option()
@model_options
@store_option
def faithfulness_cmd(run_id, map_kinds, max_images, limit, steps, scorer, road, boxes_file, baseline, tolerance, seed,
                     occlusion_images, plot_file, max_file_bytes, fmt, model_name, pretrained, device, store):
    """Do the maps point at what the model uses? Deletion, insertion and ROAD (re-encoding
    the perturbed images) and the pointing game where ground-truth boxes exist, for the map
    kind `explain` draws (plan-dense) or the kinds --maps names, each against random maps
    of the same kind (paired, 95% bootstrap intervals). Results go to the tables
    faithfulness_runs, faithfulness_curves, faithfulness_scores, pointing_game and
    faithfulness_summary; `explain` and `report` quote them.

    \b
    pipeline faithfulness --max-images 24
    pipeline faithfulness --boxes world/boxes.jsonl --tolerance 8 --max-images 24
    pipeline faithfulness --maps plan-dense,crop-boxes,gradcam --scorer dclip

    A run estimated to take over a minute prints its estimate after the first image.
    """
    # heavy: imported on use
    from ..explain.compare import compare_maps

    kinds = parse_kinds(map_kinds)
    plot = check_output_file(plot_file)
    quiet = click.get_current_context().meta.get("zsl_quiet")
    with open_store(store, check="faithfulness") as cat:
        model = load_store_model(cat, model_name, pretrained, device)
        rep = compare_maps(cat, model, run_id, kinds=kinds, steps=steps, max_images=max_images or None,
                           occlusion_images=occlusion_images, boxes_file=boxes_file, tolerance=tolerance, seed=seed,
                           plot=plot, progress=show_progress(), max_file_bytes=max_file_bytes, baseline=baseline,
                           scorer=scorer, road=road, notify=None if quiet else (lambda line: click.echo(line, err=True)))
    if fmt == "table":
        for line in rep.lines(limit=limit or None):
            click.echo(line)
    else:
        records = rep.records()
        emit(format_records(records[: limit or None] if limit else records, fmt))
