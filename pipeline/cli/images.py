"""``index-images``."""
from __future__ import annotations

import sys

import click

from ..config import preset_model_note, resolve_region_config
from ..datasets import dataset_names, read_dataset
from ..engines.ray_engine import index_images_ray
from ..inputs import DEFAULT_MAX_IMAGE_BYTES
from .group import cli
from .options import (
    REGION_CONFIG_FIELDS,
    byte_size_option,
    check_engine,
    command,
    engine_options,
    load_store_model,
    max_images_option,
    model_options,
    number_option,
    open_store,
    preset_option,
    region_config_options,
    show_progress,
    store_option,
)


@command(cli, "index-images")
@click.argument("inputs", nargs=-1, required=False)
@click.option("--dataset", "dataset_name", default=None, metavar="NAME",
              help="Read a published dataset from its own layout and label files under --root (offline): "
                   f"{', '.join(dataset_names())}. Its class names, in label order, are recorded with the images "
                   "(docs/reproduce.md).")
@click.option("--root", default=None, metavar="DIR", help="--dataset: the folder holding the dataset (or its parent).")
@click.option("--class-names", "class_names", default=None, metavar="SET",
              help="--dataset: which upstream class-name set labels the images (imagenet*: dclip (default; DCLIP, "
                   "LaZSL, WCA's clip-d/waffle) or openai (open_clip's list; WCA's clip/clip-e/cupl/wca); places365: "
                   "dclip (default) or wca (WCA's 344 names)).")
@preset_option
@region_config_options
@number_option("--batch-size", kind=int, lo=1, hi=65536, default=256, show_default=True, help="Regions per encoder batch.")
@number_option("--workers", kind=int, lo=0, hi=64, default=1, show_default=True, help="Decoding/cropping worker processes (0 = in this process).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="How region embeddings are stored.")
@number_option("--shard-size", kind=int, lo=1, hi=1_000_000, default=256, show_default=True, help="Images per Parquet shard (the unit of resume).")
@max_images_option("Index at most this many images (a quick look).")
@byte_size_option("--max-image-bytes", DEFAULT_MAX_IMAGE_BYTES,
                  "Image files larger than this are recorded as failed without being read.")
@click.option("--faiss-index", "faiss_index", default=None, metavar="FACTORY",
              help="Faiss factory string for faiss/images.index and faiss/regions.index (Flat, HNSW32, IVF4096,PQ64, "
                   "...; trained on a seeded sample). Default: keep the store's (Flat images.index, no regions.index).")
@engine_options()
@model_options
@store_option
def index_images_cmd(inputs, dataset_name, root, class_names, preset, batch_size, workers, dtype, shard_size, max_images, max_image_bytes, faiss_index,
                     engine, address, ray_concurrency, actors_per_gpu, model_name, pretrained, device, store, **regions):
    """Encode each image's full view and regions once, into the store.

    \b
    pipeline index-images photos/                    # one sub-folder per class gives labels
    pipeline index-images photos/ --preset cub-b32   # LaZSL's CUB crops; classify then uses θ 0.95
    pipeline index-images manifest.csv               # columns: path[, label]
    pipeline index-images photos/ --n-views 50       # plus AWT's views (--method awt)
    pipeline index-images photos/ --n-parts 60       # plus part crops (--method object-bound)
    pipeline index-images /shared/imgs --engine ray --address auto --faiss-index IVF4096,PQ64
    pipeline index-images --dataset cub --root /data/CUB_200_2011 --preset cub-b32   # CUB's test split, its labels

    The resolved settings (and the preset) are stored with the index run; later stages use them.
    With --engine ray the images are decoded and encoded by Ray actors (one model each) and this
    process writes the same shards the local engine would (docs/scale.md).
    """
    # heavy: imported on use
    from ..stages.index_images import index_images

    dataset = read_dataset_option(inputs, dataset_name, root, class_names)
    check_engine(engine, address, ray_concurrency=ray_concurrency, actors_per_gpu=None if actors_per_gpu == 1 else actors_per_gpu)
    faiss_index = faiss_index.strip() if faiss_index is not None else None
    resolved = resolve_region_config({k: regions[k] for k in REGION_CONFIG_FIELDS}, preset)
    for note in resolved.notes:
        click.echo(f"note: {note}", err=True)
    with open_store(store, check="index-images") as cat:
        model = load_store_model(cat, model_name, pretrained, device)
        mismatch = preset_model_note(preset, model.name)
        if mismatch:
            click.echo(f"note: {mismatch}", err=True)
        if faiss_index is not None:
            # heavy: imported on use
            from stores.faiss_factory import train_plan

            train_plan(faiss_index, model.embed_dim)  # one line for a string Faiss cannot build, before any work
        common = dict(preset=preset, batch_size=batch_size, dtype=dtype, shard_size=shard_size, max_images=max_images or None,
                      max_image_bytes=max_image_bytes, faiss_index=faiss_index, progress=show_progress(),
                      dataset=dataset)
        if engine == "ray":
            report = index_images_ray(cat, model, list(inputs) or [root], resolved.config, address=address,
                                      concurrency=ray_concurrency, actors_per_gpu=actors_per_gpu, **common)
        else:
            report = index_images(cat, model, list(inputs) or [root], resolved.config, workers=workers, **common)
    for line in report.lines():
        click.echo(line)
    if report.failed:
        sys.exit(1)


def read_dataset_option(inputs, dataset_name, root, class_names):
    """``--dataset NAME --root DIR``: the dataset's images and labels (None when PATHs are given)."""
    if dataset_name is None:
        if root is not None or class_names is not None:
            raise click.UsageError("--root and --class-names go with --dataset NAME.")
        if not inputs:
            raise click.UsageError("Give image folders, manifests or files, or --dataset NAME --root DIR.")
        return None
    if inputs:
        raise click.UsageError("Give either PATHs or --dataset NAME --root DIR, not both.")
    if root is None:
        raise click.UsageError(f"--dataset {dataset_name} needs --root DIR (the folder holding it).")
    dataset = read_dataset(dataset_name, root, class_names)
    click.echo(f"{dataset.record.title}: {len(dataset.items)} images of {dataset.folder} ({dataset.record.split.split(';')[0]}), "
               f"class names: {dataset.name_set}", err=True)
    return dataset
