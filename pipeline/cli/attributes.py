"""``build-attributes`` and ``export-attributes``."""
from __future__ import annotations

import json
import sys

import click

from ..inputs import DEFAULT_MAX_FILE_BYTES, MAX_ANSWER_BYTES, MAX_ITEM_CHARS, MAX_ITEMS_PER_CLASS
from ..names import check_text
from .group import cli
from .compositional import build_pairs, pair_options, pairs_given
from .options import (
    byte_size_option,
    check_output_file,
    command,
    load_store_model,
    model_options,
    number_option,
    open_store,
    output_option,
    show_progress,
    stack,
    store_option,
)


def llm_options(fn):
    """Options of the LLM that writes attributes (any OpenAI-compatible server)."""
    return stack(
        click.option("--llm-model", default=None, help="Model name the server knows (gpt-4o-mini, a vLLM/llama.cpp/Ollama model)."),
        click.option("--base-url", envvar="OPENAI_BASE_URL", default=None, show_envvar=True,
                     help="Server root, e.g. http://localhost:8000/v1 (vLLM), :8080/v1 (llama.cpp), :11434/v1 (Ollama). Default: OpenAI."),
        click.option("--api-key", envvar="OPENAI_API_KEY", default=None, show_envvar=True, show_default=False,
                     help="API key (prefer the environment variable; never stored or printed). Local servers need none."),
        number_option("--n-samples", kind=int, lo=1, hi=1000, default=None,
                      help="Questions/samples per class (default: the prompt set's: 1 descriptors, 5 sentences)."),
        click.option("--prompt-version", default=None, help="A prompt set in pipeline/prompts (default: the style's latest, e.g. descriptors-v1)."),
        number_option("--concurrency", kind=int, lo=1, hi=256, default=4, show_default=True, help="Requests in flight."),
        click.option("--refresh", is_flag=True, help="Ask again even for what the cache has."),
        click.option("--retry-failed", is_flag=True, help="Ask again for classes that failed validation in an earlier run."),
        number_option("--timeout", lo=0, lo_open=True, hi=86400, default=120.0, show_default=True, help="Seconds per request."),
        number_option("--max-retries", kind=int, lo=0, hi=100, default=3, show_default=True,
                      help="HTTP retries on 429/5xx/timeouts (with backoff)."),
        number_option("--max-reasks", kind=int, lo=0, hi=100, default=2, show_default=True,
                      help="Re-asks after an unusable answer."),
        click.option("--duplicates", type=click.Choice(["merge", "error"]), default="merge", show_default=True,
                     help="Class names equal after case/whitespace folding: merge (reported) or refuse."),
        click.option("--llm-option", "llm_option", type=(str, str), multiple=True,
                     help="Extra request field, JSON value: --llm-option max_completion_tokens 800 (null removes one)."),
        byte_size_option("--max-answer-bytes", MAX_ANSWER_BYTES, "A larger LLM answer is unusable (re-asked, then "
                         "failed) and stored only in part."),
        number_option("--max-item-chars", kind=int, lo=1, hi=100_000, default=MAX_ITEM_CHARS, show_default=True,
                      help="Longer attributes in an answer are dropped."),
        number_option("--max-items-per-class", kind=int, lo=1, hi=100_000, default=MAX_ITEMS_PER_CLASS,
                      show_default=True, help="Attributes kept per class over all samples (the first ones)."),
    )(fn)


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


@command(cli, "build-attributes")
@click.argument("classes", required=False, type=click.Path(dir_okay=False))
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False),
              help="A DCLIP {class: [descriptor]}, CuPL {class: [sentence]} or AWT {class: [description]} file.")
@click.option("--style", type=click.Choice(["descriptors", "sentences", "awt"]), default=None,
              help="descriptors (DCLIP), sentences (CuPL) or awt (AWT's descriptions, encoded as "
                   "'{template(c)}. {d}'); default: guessed from a file (awt_<dataset>.json, or 50+ sentences per "
                   "class, is awt), descriptors for an LLM.")
@click.option("--after-text", default="", help="Appended to each DCLIP sentence ('.' for ImageNet, as DCLIP does).")
@click.option("--awt-template", default=None,
              help="awt: the class template, {} for the class name (default: AWT's for the dataset the file is "
                   "named after, awt_cub.json -> 'a photo of the {}'; else 'a photo of a {}').")
@byte_size_option("--max-file-bytes", DEFAULT_MAX_FILE_BYTES, "Larger class lists and attribute files are refused unread.")
@pair_options
@llm_options
@model_options
@store_option
def build_attributes_cmd(classes, from_json, style, after_text, awt_template, max_file_bytes, llm_model, base_url, api_key, n_samples, prompt_version,
                         concurrency, refresh, retry_failed, timeout, max_retries, max_reasks, duplicates, llm_option,
                         max_answer_bytes, max_item_chars, max_items_per_class, model_name, pretrained, device, store,
                         **pairs):
    """Store class attributes and encode them (Faiss + DuckDB): from a file, or written by an LLM.

    \b
    pipeline build-attributes --from-json ../shared/data/descriptors/dclip/descriptors_cub.json
    pipeline build-attributes --from-json ../shared/data/descriptors/awt/awt_cub.json   # AWT's own
    pipeline build-attributes classes.txt --llm-model gpt-4o-mini            # OPENAI_API_KEY
    pipeline build-attributes classes.txt --llm-model qwen2.5:7b --base-url http://localhost:11434/v1
    pipeline build-attributes classes.csv --llm-model m --style sentences    # CuPL-style
    pipeline build-attributes --states states.txt --objects objects.txt --seen seen_pairs.txt \\
        --attributes-states states.json --attributes-objects objects.json   # (state, object) pairs
    """
    # heavy: imported on use
    from ..stages.attributes import encode_attributes, import_attribute_file

    if pairs_given(pairs):  # compositional pairs: docs/compositional.md
        return build_pairs(pairs, classes, from_json, max_file_bytes, model_name, pretrained, device, store)

    if classes and from_json:
        raise click.UsageError("Give CLASSES or --from-json FILE, not both.")
    if not classes and not from_json:
        raise click.UsageError("Give a class list (CLASSES with --llm-model) or --from-json FILE (a DCLIP or CuPL JSON).")
    progress = show_progress()
    if from_json or (classes.lower().endswith(".json") and not llm_model):
        with open_store(store, check="build-attributes") as cat:
            model = load_store_model(cat, model_name, pretrained, device)
            report = import_attribute_file(cat, model, from_json or classes, style=style, after_text=after_text,
                                           progress=progress, max_bytes=max_file_bytes, awt_template=awt_template)
            for line in report.lines():
                click.echo(line)
            click.echo(f"store: {cat.root}")
        return
    if not llm_model:
        raise click.UsageError("--llm-model is required to write attributes with an LLM (or import a file with --from-json).")
    check_text(llm_model, "--llm-model", "model name")
    # heavy: imported on use
    from ..stages.llm import generate_attributes, read_class_list
    from ..stages.llm.calls import check_base_url

    check_base_url(base_url)  # before reading anything (the message never quotes the URL)
    if prompt_version:
        # heavy: imported on use
        from ..stages.llm import get_prompt_set

        get_prompt_set(prompt_version)  # a shipped name, refused before any work
    names, creport = read_class_list(classes, duplicates=duplicates, max_bytes=max_file_bytes)
    for line in creport.lines():
        click.echo(line)
    with open_store(store, check="build-attributes") as cat:
        model = load_store_model(cat, model_name, pretrained, device)  # fail on weights before spending tokens
        report = generate_attributes(
            cat, names, llm_model=llm_model, base_url=base_url, api_key=api_key, style=style or "descriptors",
            prompt_version=prompt_version, n_samples=n_samples, concurrency=concurrency, refresh=refresh,
            retry_failed=retry_failed, timeout=timeout, max_retries=max_retries, max_reasks=max_reasks,
            options={k: _json_value(v) for k, v in llm_option}, progress=progress,
            max_answer_bytes=max_answer_bytes, max_item_chars=max_item_chars, max_items_per_class=max_items_per_class,
        )
        for line in report.lines():
            click.echo(line)
        if report.done:
            encode_attributes(cat, model, progress=progress)
        click.echo(f"store: {cat.root}")
    if report.failed or report.errors:
        sys.exit(1)


@command(cli, "export-attributes")
@click.option("--schema", "schema", type=click.Choice(["clip-benchmark", "dclip"]), required=True,
              help="clip-benchmark: {dataset: {class: [prompt]}} for --custom_template_file; dclip: {class: [text]}.")
@click.option("--dataset", default="custom", show_default=True, help="Dataset key of a clip-benchmark file (e.g. cifar10).")
@click.option("--style", type=click.Choice(["descriptors", "sentences", "awt"]), default=None, help="Which attributes (needed when the store has several styles).")
@output_option("file", "the exported JSON.", required=True)
@store_option
def export_attributes_cmd(schema, dataset, style, output, store):
    """Write the stored attributes for CLIP_benchmark or as a DCLIP/CuPL JSON.

    \b
    pipeline export-attributes --schema clip-benchmark --dataset cifar10 -o templates.json
    clip_benchmark eval --dataset cifar10 --custom_template_file templates.json ...
    pipeline export-attributes --schema dclip -o descriptors_mine.json
    """
    # heavy: imported on use
    from ..stages.export import export_attributes

    check_output_file(output)
    with open_store(store, read_only=True) as cat:
        report = export_attributes(cat, schema, output, dataset=dataset, style=style)
    for line in report.lines():
        click.echo(line)
