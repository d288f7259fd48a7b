"""``pipeline``: the command line. Each command parses options, calls one stage function,
and prints; bad input becomes a one-line error (no traceback)."""
from __future__ import annotations

import functools
import json
import sys

import click

from stores.catalog import Catalog, StoreError, resolve_store_path
from stores.migrations import StoreVersionError

from .attributes import InputError


def _friendly_errors(fn):
    """Turn the errors a user can fix into one-line messages."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .models import ModelLoadError

        try:
            return fn(*args, **kwargs)
        except (InputError, StoreError, StoreVersionError, ModelLoadError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def store_option(fn):
    return click.option(
        "--store", "store", envvar="ZSL_STORE", default=None, show_default="./zsl-store (env ZSL_STORE)",
        help="Store directory (catalog.duckdb + Parquet + Faiss).",
    )(fn)


def model_options(fn):
    fn = click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")(fn)
    fn = click.option(
        "--pretrained", default=None,
        help="open_clip tag (openai), weights file, local-dir:DIR, random[:SEED], or a name in data/ (toy-clip). "
        "Default: the store's model, else openai.",
    )(fn)
    fn = click.option("--model", "model_name", default=None, help="open_clip model name (default: the store's model, else ViT-B-32).")(fn)
    return fn


def _load_model(cat: Catalog, model_name, pretrained, device, required: bool = True):
    """Load the model the user named, or the one the store was built with."""
    from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_model

    spec = json.loads(cat.get_meta("model_spec") or "null")
    if model_name is None and pretrained is None and spec:
        model_name, pretrained = spec["name"], spec["pretrained"]
    if not required and model_name is None and pretrained is None:
        return None
    model = load_model(model_name or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED, device=device)
    cat.check_model(model.fingerprint)
    if not spec and not cat.read_only:
        cat.set_meta("model_spec", json.dumps({"name": model.name, "pretrained": model.pretrained}))
    return model


@click.group()
@click.version_option(package_name="zsl-pipeline")
def cli():
    """Interpretable zero-shot image classification on CLIP.

    \b
    pipeline demo                                  # everything, offline, in a minute
    pipeline build-attributes --from-json descriptors_cub.json
    pipeline index-images photos/
    pipeline classify --method lazsl --top-k 50
    pipeline sql "select * from top_attributes limit 10"
    pipeline explain photos/cat/001.jpg            # heatmaps + attribute shares
    pipeline report --out report.html              # a static page per run
    pipeline faithfulness --steps 10               # deletion/insertion AUC, pointing game
    """


def llm_options(fn):
    """Options of the LLM that writes attributes (any OpenAI-compatible server)."""
    opts = [
        click.option("--llm-model", default=None, help="Model name the server knows (gpt-4o-mini, a vLLM/llama.cpp/Ollama model)."),
        click.option("--base-url", envvar="OPENAI_BASE_URL", default=None, show_envvar=True,
                     help="Server root, e.g. http://localhost:8000/v1 (vLLM), :8080/v1 (llama.cpp), :11434/v1 (Ollama). Default: OpenAI."),
        click.option("--api-key", envvar="OPENAI_API_KEY", default=None, show_envvar=True, show_default=False,
                     help="API key (prefer the environment variable; never stored or printed). Local servers need none."),
        click.option("--n-samples", type=click.IntRange(1), default=None, help="Questions/samples per class (default: the prompt set's: 1 descriptors, 5 sentences)."),
        click.option("--prompt-version", default=None, help="A prompt set in pipeline/prompts (default: the style's latest, e.g. descriptors-v1)."),
        click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Requests in flight."),
        click.option("--refresh", is_flag=True, help="Ask again even for what the cache has."),
        click.option("--retry-failed", is_flag=True, help="Ask again for classes that failed validation in an earlier run."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True, help="Seconds per request."),
        click.option("--max-retries", type=click.IntRange(0), default=3, show_default=True, help="HTTP retries on 429/5xx/timeouts (with backoff)."),
        click.option("--max-reasks", type=click.IntRange(0), default=2, show_default=True, help="Re-asks after an unusable answer."),
        click.option("--duplicates", type=click.Choice(["merge", "error"]), default="merge", show_default=True,
                     help="Class names equal after case/whitespace folding: merge (reported) or refuse."),
        click.option("--llm-option", "llm_option", type=(str, str), multiple=True,
                     help="Extra request field, JSON value: --llm-option max_completion_tokens 800 (null removes one)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


@cli.command("build-attributes")
@click.argument("classes", required=False, type=click.Path(dir_okay=False))
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False), help="A DCLIP {class: [descriptor]} or CuPL {class: [sentence]} file.")
@click.option("--style", type=click.Choice(["descriptors", "sentences"]), default=None,
              help="descriptors (DCLIP) or sentences (CuPL); default: guessed from a file, descriptors for an LLM.")
@click.option("--after-text", default="", help="Appended to each DCLIP sentence ('.' for ImageNet, as DCLIP does).")
@llm_options
@model_options
@store_option
@_friendly_errors
def build_attributes_cmd(classes, from_json, style, after_text, llm_model, base_url, api_key, n_samples, prompt_version,
                         concurrency, refresh, retry_failed, timeout, max_retries, max_reasks, duplicates, llm_option,
                         no_progress, model_name, pretrained, device, store):
    """Store class attributes and encode them (Faiss + DuckDB): from a file, or written by an LLM.

    \b
    pipeline build-attributes --from-json ../shared/data/descriptors/dclip/descriptors_cub.json
    pipeline build-attributes classes.txt --llm-model gpt-4o-mini            # OPENAI_API_KEY
    pipeline build-attributes classes.txt --llm-model qwen2.5:7b --base-url http://localhost:11434/v1
    pipeline build-attributes classes.csv --llm-model m --style sentences    # CuPL-style
    """
    from .attributes import encode_attributes, import_attribute_file

    if classes and from_json:
        raise click.UsageError("Give CLASSES or --from-json FILE, not both.")
    if not classes and not from_json:
        raise click.UsageError("Give a class list (CLASSES with --llm-model) or --from-json FILE (a DCLIP or CuPL JSON).")
    if from_json or (classes.lower().endswith(".json") and not llm_model):
        with Catalog(store) as cat:
            model = _load_model(cat, model_name, pretrained, device)
            report = import_attribute_file(cat, model, from_json or classes, style=style, after_text=after_text,
                                           progress=not no_progress)
            for line in report.lines():
                click.echo(line)
            click.echo(f"store: {cat.root}")
        return
    if not llm_model:
        raise click.UsageError("--llm-model is required to write attributes with an LLM (or import a file with --from-json).")
    from .llm_attributes import generate_attributes, read_class_list

    names, creport = read_class_list(classes, duplicates=duplicates)
    for line in creport.lines():
        click.echo(line)
    with Catalog(store) as cat:
        model = _load_model(cat, model_name, pretrained, device)  # fail on weights before spending tokens
        report = generate_attributes(
            cat, names, llm_model=llm_model, base_url=base_url, api_key=api_key, style=style or "descriptors",
            prompt_version=prompt_version, n_samples=n_samples, concurrency=concurrency, refresh=refresh,
            retry_failed=retry_failed, timeout=timeout, max_retries=max_retries, max_reasks=max_reasks,
            options={k: _json_value(v) for k, v in llm_option}, progress=not no_progress,
        )
        for line in report.lines():
            click.echo(line)
        if report.done:
            encode_attributes(cat, model, progress=not no_progress)
        click.echo(f"store: {cat.root}")
    if report.failed or report.errors:
        sys.exit(1)


@cli.command("export-attributes")
@click.option("--format", "fmt", type=click.Choice(["clip-benchmark", "dclip"]), required=True,
              help="clip-benchmark: {dataset: {class: [prompt]}} for --custom_template_file; dclip: {class: [text]}.")
@click.option("--dataset", default="custom", show_default=True, help="Dataset key of a clip-benchmark file (e.g. cifar10).")
@click.option("--style", type=click.Choice(["descriptors", "sentences"]), default=None, help="Which attributes (needed when the store has both).")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="File to write.")
@store_option
@_friendly_errors
def export_attributes_cmd(fmt, dataset, style, output, store):
    """Write the stored attributes for CLIP_benchmark or as a DCLIP/CuPL JSON.

    \b
    pipeline export-attributes --format clip-benchmark --dataset cifar10 -o templates.json
    clip_benchmark eval --dataset cifar10 --custom_template_file templates.json ...
    pipeline export-attributes --format dclip -o descriptors_mine.json
    """
    from .llm_attributes import export_attributes

    with Catalog(store, read_only=True) as cat:
        report = export_attributes(cat, fmt, output, dataset=dataset, style=style)
    for line in report.lines():
        click.echo(line)


@cli.command("index-images")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--regions", "source", type=click.Choice(["crops", "grid", "patches"]), default="crops", show_default=True)
@click.option("--n-crops", default=90, show_default=True, help="Random square crops per image (crops).")
@click.option("--crop-min", default=0.6, show_default=True, help="Crop side ~ U(crop-min, 0.9)·min(H, W).")
@click.option("--seed", default=0, show_default=True, help="Mixed with each image's hash: same image, same boxes.")
@click.option("--batch-size", default=256, show_default=True, help="Regions per encoder batch.")
@click.option("--workers", default=1, show_default=True, help="Decoding/cropping worker processes.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--shard-size", default=256, show_default=True, help="Images per Parquet shard (the unit of resume).")
@click.option("--preset", default=None, help="Published LaZSL crop settings (n-crops, crop-min), e.g. cub-b32.")
@click.option("--max-images", default=None, type=int, help="Index at most this many images (a quick look).")
@model_options
@store_option
@_friendly_errors
def index_images_cmd(inputs, source, n_crops, crop_min, seed, batch_size, workers, dtype, shard_size, preset, max_images,
                     model_name, pretrained, device, store):
    """Encode each image's full view and regions once, into the store.

    \b
    pipeline index-images photos/            # one sub-folder per class gives labels
    pipeline index-images manifest.csv       # columns: path[, label]
    """
    from .index_images import index_images
    from .regions import RegionConfig

    if preset:
        from queries.scoring import LAZSL_PRESETS

        if preset not in LAZSL_PRESETS:
            raise click.BadParameter(f"unknown preset; pick one of {', '.join(sorted(LAZSL_PRESETS))}", param_hint="--preset")
        n_crops, crop_min = LAZSL_PRESETS[preset]["n_crops"], LAZSL_PRESETS[preset]["crop_min"]
    if not 0 < crop_min <= 0.9:
        raise click.BadParameter("must be in (0, 0.9]", param_hint="--crop-min")
    with Catalog(store) as cat:
        model = _load_model(cat, model_name, pretrained, device)
        cfg = RegionConfig(source=source, n_crops=n_crops, crop_min=crop_min, seed=seed)
        report = index_images(
            cat, model, list(inputs), cfg, batch_size=batch_size, workers=workers, dtype=dtype, shard_size=shard_size,
            max_images=max_images,
        )
    for line in report.lines():
        click.echo(line)
    if report.failed:
        sys.exit(1)


@cli.command("classify")
@click.option("--method", "methods", multiple=True, default=["lazsl"], show_default=True,
              help="clip, clip-e, dclip, cupl, wca, lazsl; repeat or comma-separate for several runs.")
@click.option("--top-k", default=50, show_default=True, help="Candidate classes from the Faiss shortlist (0 = all).")
@click.option("--theta", default=None, type=float, help="LaZSL θ (default 0.8 or the preset's).")
@click.option("--eps", default=0.1, show_default=True, help="LaZSL entropic regularisation ε.")
@click.option("--gamma", default=0.0, show_default=True, help="LaZSL crop filter margin γ.")
@click.option("--max-iter", default=100, show_default=True)
@click.option("--tol", default=1e-2, show_default=True)
@click.option("--preset", default=None, help="Published LaZSL settings, e.g. imagenet-b32, cub-b16.")
@click.option("--wca-score", type=click.Choice(["code", "paper"]), default="code", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--templates", default="openai", show_default=True, help="clip-e templates: openai, simple, or a file.")
@click.option("--alignments-top", default=0, show_default=True, help="Store OT plans for the top-N classes only (0 = all candidates).")
@click.option("--show", default=5, show_default=True, help="Images to print (0 = none).")
@model_options
@store_option
@_friendly_errors
def classify_cmd(methods, top_k, theta, eps, gamma, max_iter, tol, preset, wca_score, seed, templates, alignments_top, show,
                 model_name, pretrained, device, store):
    """Score indexed images; one run per method (no image is decoded).

    \b
    pipeline classify --method lazsl --top-k 50 --theta 0.8
    pipeline classify --method clip,dclip,wca,lazsl
    """
    from .classify import MethodParams, classify, top_attributes

    names = [m.strip() for ms in methods for m in ms.split(",") if m.strip()]
    params = MethodParams(top_k=top_k, eps=eps, gamma=gamma, max_iter=max_iter, tol=tol, wca_score=wca_score, seed=seed,
                          templates=templates, alignments_top=alignments_top)
    if preset:
        from queries.scoring import LAZSL_PRESETS

        if preset not in LAZSL_PRESETS:
            raise click.BadParameter(f"unknown preset; pick one of {', '.join(sorted(LAZSL_PRESETS))}", param_hint="--preset")
        params.preset, params.theta = preset, LAZSL_PRESETS[preset]["theta"]
    if theta is not None:
        params.theta = theta
    with Catalog(store) as cat:
        needs_text = any(m in ("clip", "clip-e", "wca") for m in names)
        model = _load_model(cat, model_name, pretrained, device, required=needs_text) if needs_text else None
        for method in names:
            report = classify(cat, method, params, model=model)
            click.echo(f"run {report.run_id}: {method} on {report.images} images in {report.seconds:.1f} s")
            if show:
                _print_top(top_attributes(cat, report.run_id), show)


@cli.command("evaluate")
@click.option("--methods", default=None, help="Comma-separated methods to run first (e.g. clip,dclip,wca,lazsl) on the same regions.")
@click.option("--run", "runs", type=int, multiple=True, help="Evaluate these run ids (default: the latest run of each method).")
@click.option("--dataset", default="custom", show_default=True, help="Dataset name written into the JSON results.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--output", default=None, help="Folder for one CLIP_benchmark-style JSON per (dataset, model, method).")
@click.option("--top-k", default=50, show_default=True)
@model_options
@store_option
@_friendly_errors
def evaluate_cmd(methods, runs, dataset, fmt, output, top_k, model_name, pretrained, device, store):
    """Accuracy (acc1, acc5, mean per-class recall) of runs against image labels.

    \b
    pipeline evaluate --methods clip,dclip,wca,lazsl
    pipeline evaluate --format json --output results/
    """
    from .classify import MethodParams, classify
    from .evaluate import clip_benchmark_record, evaluate_run, format_table, latest_runs, write_results

    with Catalog(store) as cat:
        names = [m.strip() for m in methods.split(",")] if methods else []
        if names:
            needs_text = any(m in ("clip", "clip-e", "wca") for m in names)
            model = _load_model(cat, model_name, pretrained, device) if needs_text else None
            runs = tuple(classify(cat, m, MethodParams(top_k=top_k), model=model, progress=False).run_id for m in names)
        evals = [evaluate_run(cat, r) for r in (runs or latest_runs(cat))]
        for ev in evals:
            if ev.unmatched_labels:
                click.echo(f"run {ev.run_id}: labels matching no class (skipped): {ev.unmatched_labels}", err=True)
        if fmt == "json":
            click.echo(json.dumps([clip_benchmark_record(cat, ev, dataset) for ev in evals], indent=2))
        else:
            click.echo(format_table(evals))
        if output:
            for p in write_results(cat, evals, output, dataset):
                click.echo(f"wrote {p}", err=True)


def _print_top(rows: list[dict], n_images: int) -> None:
    seen: list[int] = []
    for r in rows:
        if r["image_id"] not in seen:
            if len(seen) == n_images:
                break
            seen.append(r["image_id"])
            label = f"  (label: {r['label']})" if r["label"] else ""
            click.echo(f"{r['path']}{label}")
        attrs = "; ".join(r["attributes"][:3])
        click.echo(f"  {r['rank']}. {r['name']}  {r['score']:.4f}" + (f"  [{attrs}]" if attrs else ""))


@cli.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("-p", "--param", "params", type=(str, str), multiple=True, help="Named parameter: -p name value ($name in SQL).")
@store_option
@_friendly_errors
def sql_cmd(query, fmt, params, store):
    """Run read-only SQL on the store.

    \b
    pipeline sql "select method, count(*) from runs join predictions using (run_id) group by method"
    pipeline sql "select * from images where label = \\$l" -p l cat --format csv
    """
    from .sql import run_sql

    with Catalog(store, read_only=True) as cat:
        click.echo(run_sql(cat, query, dict(params), fmt), nl=False)


@cli.command("demo")
@click.option("--out", default="./zsl-demo", show_default=True, help="Where the demo's images and store go.")
@_friendly_errors
def demo_cmd(out):
    """Run every stage offline on a small generated world, then show how to query it."""
    from .demo import run_demo

    run_demo(out)


@cli.group("catalog")
def catalog_group():
    """Inspect and migrate the store."""


@catalog_group.command("status")
@store_option
@_friendly_errors
def catalog_status(store):
    """Paths, model, schema version and row counts."""
    with Catalog(store, read_only=True) as cat:
        click.echo(f"store: {cat.root}")
        click.echo(f"model: {cat.model}")
        click.echo(f"schema version: {cat.get_meta('schema_version')}")
        for name, n in cat.table_counts().items():
            click.echo(f"  {name:24s} {n:>10d}")


@catalog_group.command("migrate")
@store_option
@_friendly_errors
def catalog_migrate(store):
    """Bring an older store's schema up to date."""
    with Catalog(resolve_store_path(store), create=False) as cat:
        click.echo(f"{cat.root}: schema version {cat.get_meta('schema_version')}")


@cli.command("explain")
@click.argument("image")
@click.option("--class", "class_name", default=None, help="Explain this class's score (default: the prediction, rank 1).")
@click.option("--attribute", default=None, help="Only this attribute's overlay (text, part of it, or attr_id).")
@click.option("--run", "run_id", type=int, default=None, help="Run id (default: the latest run with alignments).")
@click.option("--out", "out_dir", default="explanations", show_default=True, help="Folder for the PNG overlays.")
@click.option("--top", default=10, show_default=True, help="Attributes to list (0 = all).")
@store_option
@_friendly_errors
def explain_cmd(image, class_name, attribute, run_id, out_dir, top, store):
    """Attribution maps of one image: PNG overlays per attribute and per class, and each
    attribute's share of the score.

    \b
    IMAGE is an indexed image: its path, an image_id, or a unique end of its path.
    pipeline explain photos/cat/001.jpg
    pipeline explain photos/cat/001.jpg --class "tabby cat" --attribute "striped fur" --out maps/
    """
    from .explain import explain_image

    with Catalog(store) as cat:
        res = explain_image(cat, image, run_id=run_id, class_name=class_name, attribute=attribute, out_dir=out_dir)
    for line in res.summary_lines(top=top or None):
        click.echo(line)


@cli.command("report")
@click.option("--run", "run_id", type=int, default=None, help="Run id (default: the latest run with alignments).")
@click.option("--out", default="report.html", show_default=True, help="The HTML file to write.")
@click.option("--limit", default=50, show_default=True, help="Images on the page (0 = all); wrong predictions first.")
@click.option("--top-k", default=5, show_default=True, help="Classes listed per image.")
@store_option
@_friendly_errors
def report_cmd(run_id, out, limit, top_k, store):
    """A static HTML page for a run: predictions, score split, attribute contributions,
    heatmaps, what tipped wrong predictions, accuracy and faithfulness plots. Opens from disk.

    \b
    pipeline report --out run3.html --run 3
    """
    from .report import build_report

    with Catalog(store) as cat:
        res = build_report(cat, run_id, out, limit=limit or None, top_k=top_k)
    click.echo(f"run {res.run_id}: {res.images} images, {res.bytes / 1e6:.1f} MB -> {res.path.resolve()}")


@cli.command("faithfulness")
@click.option("--run", "run_id", type=int, default=None, help="Run id (default: the latest run with alignments).")
@click.option("--steps", default=10, show_default=True, help="Deletion/insertion steps (equal shares of the pixels).")
@click.option("--limit", default=0, show_default=True, help="Images to score (0 = all), by image_id.")
@click.option("--boxes", "boxes_file", type=click.Path(dir_okay=False), default=None,
              help="Ground-truth boxes (JSON/JSONL: image, class, attribute, x0, y0, x1, y1) for the pointing game.")
@click.option("--baseline", type=click.Choice(["blur", "mean", "black"]), default="blur", show_default=True,
              help="What deleted pixels become (and insertion starts from).")
@click.option("--random-maps", "n_random", default=1, show_default=True, help="Random maps per image (curves averaged).")
@click.option("--tolerance", default=0.0, show_default=True, help="Pointing game: pixels the box is grown by.")
@click.option("--seed", default=0, show_default=True)
@model_options
@store_option
@_friendly_errors
def faithfulness_cmd(run_id, steps, limit, boxes_file, baseline, n_random, tolerance, seed, model_name, pretrained, device, store):
    """Deletion/insertion AUC of the run's maps against random maps (re-encoding the
    perturbed images), and the pointing game where ground-truth boxes exist. Results go to
    the tables faithfulness_runs, faithfulness_curves, faithfulness_scores, pointing_game.

    \b
    pipeline faithfulness --steps 10 --limit 100
    pipeline faithfulness --boxes world/boxes.jsonl
    """
    from .faithfulness import faithfulness

    if n_random < 1:
        raise click.BadParameter("must be at least 1", param_hint="--random-maps")
    with Catalog(store) as cat:
        model = _load_model(cat, model_name, pretrained, device)
        rep = faithfulness(cat, model, run_id, steps=steps, limit=limit or None, boxes_file=boxes_file, seed=seed,
                           baseline=baseline, n_random=n_random, tolerance=tolerance)
    for line in rep.lines():
        click.echo(line)


def _add_toyworld_command() -> None:
    from .toyworld import make_toyworld_command

    cli.add_command(make_toyworld_command())


_add_toyworld_command()


def main():  # pragma: no cover
    cli()
