"""``mutual-knowledge`` (concept explanations of a run) and ``compare`` (the same across stores,
one model each)."""
from __future__ import annotations

import click

from . import cli
from .options import (
    RUN_ID,
    command,
    format_option,
    limit_option,
    load_store_model,
    model_options,
    number_option,
    open_store,
    show_progress,
    stack,
    store_option,
)
from .output import emit, format_records


def concept_options(fn):
    """How the concepts are found (defaults: pipeline.stages.mutual_knowledge.ConceptConfig)."""
    return stack(
        number_option("--n-parts", kind=int, lo=1, hi=64, default=4, show_default=True,
                      help="Parts the image's patch tokens are clustered into."),
        number_option("--part-topk", kind=int, lo=1, hi=100, default=2, show_default=True,
                      help="Concepts describing each part (its nearest concept-bank entries)."),
        number_option("--language-topk", kind=int, lo=1, hi=1000, default=4, show_default=True,
                      help="Concepts nearest the predicted class's text (the language side)."),
        click.option("--clustering", type=click.Choice(["ward", "kmeans"]), default="ward", show_default=True,
                     help="How patch tokens become parts."),
        click.option("--no-foreground", is_flag=True, help="Cluster every patch (default: the foreground patches only)."),
        number_option("--min-part-side", lo=0.05, hi=1.0, default=0.375, show_default=True,
                      help="A part is encoded as a square crop at least this share of the image's short side."),
        click.option("--class-text", type=click.Choice(["name", "run"]), default="name", show_default=True,
                     help="The class's text embedding: its 'a photo of a {c}.' prompt (as the paper), or the mean of "
                          "the texts the run scored against."),
        click.option("--bank", "bank_file", type=click.Path(dir_okay=False), default=None,
                     help="More concepts, one a line, added to the store's attribute texts (class names are left out)."),
        click.option("--sinkhorn", is_flag=True, help="Spread the parts over distinct concepts (upstream's Sinkhorn-Knopp)."),
    )(fn)


def _config(n_parts, part_topk, language_topk, clustering, no_foreground, min_part_side, class_text, sinkhorn):
    from ..stages.mutual_knowledge import ConceptConfig

    return ConceptConfig(n_parts=n_parts, part_topk=part_topk, language_topk=language_topk, clustering=clustering,
                         foreground=not no_foreground, min_part_side=min_part_side, class_text=class_text,
                         use_ot=sinkhorn)


@command(cli, "mutual-knowledge")
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest run).")
@limit_option("Images to explain, by path.", default=0)
@concept_options
@format_option()
@model_options
@store_option
def mutual_knowledge_cmd(run_id, limit, n_parts, part_topk, language_topk, clustering, no_foreground, min_part_side,
                         class_text, bank_file, sinkhorn, fmt, model_name, pretrained, device, store):
    """Mutual-knowledge explanations of a run's predictions: vision concepts (parts of the image
    found without labels, described by the concept bank), language concepts (nearest the
    predicted class's text), their overlap, the mutual-information score and the
    concept-deletion curve. Results go to the tables mutual_knowledge and concepts.

    \b
    pipeline mutual-knowledge --run 3
    pipeline mutual-knowledge --bank world/concepts.txt --limit 50
    pipeline sql "select * from concept_sets limit 5"
    pipeline explain IMAGE --concepts
    """
    from ..stages.mutual_knowledge import explain_concepts

    cfg = _config(n_parts, part_topk, language_topk, clustering, no_foreground, min_part_side, class_text, sinkhorn)
    with open_store(store) as cat:
        model = load_store_model(cat, model_name, pretrained, device)
        rep = explain_concepts(cat, model, run_id, config=cfg, limit=limit or None, bank_file=bank_file,
                               progress=show_progress())
    if fmt == "table":
        for line in rep.lines():
            click.echo(line)
    else:
        emit(format_records([{"run_id": rep.run_id, "method": rep.method, "bank": rep.bank, **rep.summary}], fmt))


@command(cli, "compare")
@click.argument("stores", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--method", "methods", multiple=True, default=None,
              help="Compare the latest run of this method in each store (default: each store's latest explained run, "
                   "else its latest run).")
@click.option("--no-compute", is_flag=True, help="Refuse a run without mutual-knowledge rows instead of explaining it first.")
@limit_option("Images to explain where a run has no explanations yet.", default=0)
@concept_options
@format_option()
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")
def compare_cmd(stores, methods, no_compute, limit, n_parts, part_topk, language_topk, clustering, no_foreground,
                min_part_side, class_text, bank_file, sinkhorn, fmt, device):
    """Compare models, one store each: accuracy beside the mean mutual-knowledge score (MI) and
    concept-deletion AUC, over all predictions and over correct and wrong ones.

    \b
    pipeline compare store-vitb32 store-vitl14 --method clip
    pipeline compare a b c --format csv

    A run without explanations is explained first with its store's own model.
    """
    from ..stages.mutual_knowledge import COMPARE_COLUMNS, compare_stores

    names = [m.strip() for v in methods or () for m in str(v).split(",") if m.strip()]
    if len(names) > 1:
        raise click.BadParameter("one method: the same run kind is compared across stores", param_hint="--method")
    cfg = _config(n_parts, part_topk, language_topk, clustering, no_foreground, min_part_side, class_text, sinkhorn)
    rows = compare_stores(list(stores), method=names[0] if names else None, compute=not no_compute, config=cfg,
                          bank_file=bank_file, limit=limit or None, device=device, progress=show_progress())
    emit(format_records(rows, fmt, columns=list(COMPARE_COLUMNS)))
