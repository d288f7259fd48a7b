"""index-images throughput and memory; prints one JSON object.

    python benchmarks/bench_index.py                 # ViT-B-32 (random weights) + zsl-tiny, crops vs bare loop, patches
    python benchmarks/bench_index.py --memory        # peak RSS for 200 vs 2,000 images (zsl-tiny)

* overhead ratio = images/s of ``index_images`` / images/s of a bare loop that only calls
  ``encode_image`` on the same pre-made, pre-processed crops in the same batch size;
* patches/crops = images/s with ``--regions patches`` over ``--regions crops`` (90 crops).
ViT-B-32 with random weights has the real model's cost and needs no download.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_images(root: Path, n: int, size=(320, 240), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(root / f"{i:05d}.jpg", quality=90)
    return root


def bare_loop_images_per_s(model, img_dir: Path, cfg, batch_size: int) -> float:
    import hashlib

    import torch

    from pipeline.imaging import open_image
    from queries.regions import region_boxes

    crops = []
    for p in sorted(img_dir.iterdir()):
        data = p.read_bytes()
        img = open_image(data)
        _, boxes = region_boxes(img.width, img.height, hashlib.sha256(data).hexdigest(), cfg)
        views = [img] + [img.crop(tuple(int(v) for v in b)) for b in boxes[1:]]
        crops.append(torch.stack([model.preprocess(v) for v in views]))
    pixels = torch.cat(crops)
    model.encode_images(pixels[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        model.encode_images(pixels[i : i + batch_size])
    return len(crops) / (time.perf_counter() - t0)


def index_images_per_s(model, img_dir: Path, cfg, batch_size: int, workers: int) -> float:
    from pipeline.stages.index_images import index_images
    from stores.catalog import Catalog

    with tempfile.TemporaryDirectory() as d, Catalog(d) as cat:
        rep = index_images(cat, model, [str(img_dir)], cfg, batch_size=batch_size, workers=workers, progress=False)
        return rep.indexed / rep.seconds


def throughput(args) -> dict:
    import torch

    from pipeline.models import load_model
    from pipeline.config import RegionConfig

    torch.set_num_threads(args.threads)
    out = {"device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "threads": args.threads, "models": {}}
    with tempfile.TemporaryDirectory() as d:
        for name, n_images in (("ViT-B-32", args.images), ("zsl-tiny", args.images * 8)):
            img_dir = make_images(Path(d) / name, n_images)
            model = load_model(name, "random:0", device=args.device)
            crops = RegionConfig(source="crops", n_crops=90, crop_min=0.6)
            bare = bare_loop_images_per_s(model, img_dir, crops, args.batch_size)
            ours = index_images_per_s(model, img_dir, crops, args.batch_size, args.workers)
            patches = index_images_per_s(model, img_dir, RegionConfig(source="patches"), args.batch_size, args.workers)
            out["models"][name] = {
                "images": n_images,
                "regions_per_image_crops": 91,
                "bare_encode_loop_images_per_s": round(bare, 3),
                "index_images_crops_images_per_s": round(ours, 3),
                "overhead_ratio": round(ours / bare, 3),
                "index_images_patches_images_per_s": round(patches, 3),
                "patches_over_crops": round(patches / ours, 1),
            }
    return out


def _child_peak_rss(n: int, workdir: Path) -> float:
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pipeline.models import load_model
from pipeline.stages.index_images import index_images
from pipeline.config import RegionConfig
from stores.catalog import Catalog
m = load_model('zsl-tiny', 'random:0', device='cpu')
with Catalog({str(workdir / f"store{n}")!r}) as cat:
    index_images(cat, m, [{str(workdir / "imgs")!r}], RegionConfig(n_crops=10), progress=False, shard_size=128,
                 max_images={n})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024.0


def memory(args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        make_images(Path(d) / "imgs", 2000, size=(96, 96))
        small = _child_peak_rss(200, Path(d))
        large = _child_peak_rss(2000, Path(d))
    return {"peak_rss_mb_200": round(small, 1), "peak_rss_mb_2000": round(large, 1), "ratio": round(large / small, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6, help="images for ViT-B-32 (zsl-tiny gets 8x)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--memory", action="store_true", help="only the 200 vs 2,000 images peak-memory check")
    args = ap.parse_args()
    print(json.dumps(memory(args) if args.memory else throughput(args), indent=2))


if __name__ == "__main__":
    main()
