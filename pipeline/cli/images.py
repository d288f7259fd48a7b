"""``index-images``."""
from __future__ import annotations

import sys

import click

from ..config import resolve_region_config
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
@click.argument("inputs", nargs=-1, required=True)
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
def index_images_cmd(inputs, preset, batch_size, workers, dtype, shard_size, max_images, max_image_bytes, faiss_index,
                     engine, address, ray_concurrency, actors_per_gpu, model_name, pretrained, device, store, **regions):
    """Encode each image's full view and regions once, into the store.

    \b
    pipeline index-images photos/                    # one sub-folder per class gives labels
    pipeline index-images photos/ --preset cub-b32   # LaZSL's CUB crops; classify then uses θ 0.95
    pipeline index-images manifest.csv               # columns: path[, label]
    pipeline index-images photos/ --n-views 50       # plus AWT's views (--method awt)
    pipeline index-images photos/ --n-parts 60       # plus part crops (--method object-bound)
    pipeline index-images /shared/imgs --engine ray --address auto --faiss-index IVF4096,PQ64

    The resolved settings (and the preset) are stored with the index run; later stages use them.
    With --engine ray the images are decoded and encoded by Ray actors (one model each) and this
    process writes the same shards the local engine would (docs/scale.md).
    """
    # heavy: imported on use
    from ..stages.index_images import index_images

    check_engine(engine, address, ray_concurrency=ray_concurrency, actors_per_gpu=None if actors_per_gpu == 1 else actors_per_gpu)
    faiss_index = faiss_index.strip() if faiss_index is not None else None
    resolved = resolve_region_config({k: regions[k] for k in REGION_CONFIG_FIELDS}, preset)
    for note in resolved.notes:
        click.echo(f"note: {note}", err=True)
    with open_store(store, check="index-images") as cat:
        model = load_store_model(cat, model_name, pretrained, device)
        if faiss_index is not None:
            # heavy: imported on use
            from stores.faiss_factory import train_plan

            train_plan(faiss_index, model.embed_dim)  # one line for a string Faiss cannot build, before any work
        common = dict(preset=preset, batch_size=batch_size, dtype=dtype, shard_size=shard_size, max_images=max_images or None,
                      max_image_bytes=max_image_bytes, faiss_index=faiss_index, progress=show_progress())
        if engine == "ray":
            report = index_images_ray(cat, model, list(inputs), resolved.config, address=address,
                                      concurrency=ray_concurrency, actors_per_gpu=actors_per_gpu, **common)
        else:
            report = index_images(cat, model, list(inputs), resolved.config, workers=workers, **common)
    for line in report.lines():
        click.echo(line)
    if report.failed:
        sys.exit(1)
