"""The per-region costs that docs/scale.md multiplies up to a billion regions; prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/bench_scale_inputs.py

* ``parquet``: bytes per region of a regions shard as the index stage writes it
  (``stores.shards.ShardWriter``: ids, kind, box, model, embedding; zstd; row groups of 16
  images), D = 512, float16 and float32, 91 regions per image (LaZSL's full view + 90 crops),
  256 images per shard (the default),
  random unit vectors (embeddings compress about as badly as noise).
* ``preprocess``: decode + 90 crops + resize/normalise to 224 px (ViT-B-32's preprocess) per
  CPU core, through the stages' own ``RegionDataset`` (``pipeline.stages.region_batches``) on
  500x375 JPEGs: views per second.
* ``encode_cpu``: ViT-B-32 (random weights: the real cost) image passes per second on one CPU
  thread, fp32, batch 64. The machine's load average is printed with it: the 2 cores are shared,
  so each rate is given per wall second and per second of this process's CPU time (the latter
  is what one uncontended core would do, up to cache and frequency effects).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def parquet_bytes_per_region(dim: int = 512, dtype: str = "float16", images: int = 256, regions: int = 91, seed: int = 0) -> float:
    """Bytes of the regions shard the stages' writer (``stores.shards.ShardWriter``) makes of
    ``images`` images with ``regions`` regions each, per region."""
    import hashlib

    from stores.catalog import Catalog
    from stores.shards import IndexedImage, ShardWriter

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        with Catalog(Path(d) / "s") as cat:
            w = ShardWriter(cat, 1, "ViT-B-32/openai", dtype, shard_size=images)
            for i in range(images):
                emb = rng.standard_normal((regions, dim)).astype(np.float32)
                emb /= np.linalg.norm(emb, axis=1, keepdims=True)
                side = rng.integers(100, 300, regions).astype(np.float32)
                boxes = np.stack([side * 0.1, side * 0.2, side, side], 1)
                w.add(IndexedImage(hashlib.sha256(str(i).encode()).hexdigest(), f"/data/{i}.jpg", "c", 500, 375,
                                   ["full"] + ["crop"] * (regions - 1), boxes, emb))
            w.flush()
            size = sum(p.stat().st_size for p in cat.shard_files("regions"))
    return size / (images * regions)


def preprocess_views_per_s(n_images: int = 6) -> float:
    import torch
    from PIL import Image

    from pipeline.config import RegionConfig
    from pipeline.stages.region_batches import RegionDataset
    from pipeline.imaging import ImageItem
    from pipeline.models import load_model

    torch.set_num_threads(1)
    m = load_model("ViT-B-32", "random:0", device="cpu")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        items = []
        for i in range(n_images):
            p = Path(d) / f"{i}.jpg"
            Image.fromarray((rng.random((375, 500, 3)) * 255).astype(np.uint8)).save(p, quality=90)
            items.append(ImageItem(str(p), None))
        ds = RegionDataset(items, RegionConfig(n_crops=90, crop_min=0.6), m.preprocess, set(), 0)
        ds[0]  # warm-up
        t, c = time.perf_counter(), time.process_time()
        n = sum(len(ds[i]["pixels"]) for i in range(1, n_images))
        return {"wall": round(n / (time.perf_counter() - t), 1), "cpu_time": round(n / (time.process_time() - c), 1)}


def encode_passes_per_s(batch: int = 64) -> float:
    import torch

    from pipeline.models import load_model

    torch.set_num_threads(1)
    m = load_model("ViT-B-32", "random:0", device="cpu")
    x = torch.randn(batch, 3, 224, 224)
    m.encode_images(x[:8])
    t, c = time.perf_counter(), time.process_time()
    m.encode_images(x)
    return {"wall": round(batch / (time.perf_counter() - t), 2), "cpu_time": round(batch / (time.process_time() - c), 2)}


def main() -> dict:
    out = {
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "cpu_cores": os.cpu_count(),
        "parquet_bytes_per_region": {
            "float16": round(parquet_bytes_per_region(dtype="float16"), 1),
            "float32": round(parquet_bytes_per_region(dtype="float32"), 1),
            "dim": 512, "regions_per_image": 91, "images_per_shard": 256,
        },
        "preprocess_views_per_s_per_core": preprocess_views_per_s(),
        "encode_cpu_vit_b32_fp32_passes_per_s_1_thread": encode_passes_per_s(),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
