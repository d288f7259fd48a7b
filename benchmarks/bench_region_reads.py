"""Bytes read to get the regions of a few images out of a big store: every shard vs only what holds them.

    PYTHONPATH=$PWD python benchmarks/bench_region_reads.py                  # 10,000 images, 100-image subsets
    PYTHONPATH=$PWD python benchmarks/bench_region_reads.py --images 2000    # quicker

A store of ``--images`` synthetic images is written by the stages' own writer
(``stores.shards.ShardWriter``: shard pairs of ``--shard-size`` images, regions in row groups of
16 whole images), ``--regions`` regions each (full view + crops), ``--dim``-dimensional float16
embeddings (random unit vectors: they compress as badly as real ones). Then the regions of
``--subset`` images are read three ways, for a random subset (seeded) and for a contiguous one
(100 images indexed one after another: a folder, a class, one index run):

* ``every_shard``: what ``tables.iter_region_batches`` did before: read each regions shard
  (region_id, image_id, kind, embedding) and keep the wanted rows;
* ``needed_shards``: the images shards say which pairs hold the images; read those shards whole;
* ``needed_row_groups``: the same, reading only the row groups that hold the images (what
  ``tables.iter_region_batches(cat, image_ids)`` does now).

And one image's boxes (``tables.image_regions``, explain/faithfulness) against the ``regions``
view query that it replaced. Bytes are what this process read from files (``rchar`` of
``/proc/self/io``: every read()/pread(), page cache or not), seconds are wall time. Prints one
JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def measure(fn):
    b0, t0 = rchar(), time.perf_counter()
    out = fn()
    return out, {"mb_read": round((rchar() - b0) / 2**20, 2), "seconds": round(time.perf_counter() - t0, 3)}


def build(root: Path, n_images: int, n_regions: int, dim: int, shard_size: int, seed: int) -> list[int]:
    from stores.catalog import Catalog
    from stores.shards import IndexedImage, ShardWriter, content_id

    rng = np.random.default_rng(seed)
    ids = []
    with Catalog(root) as cat:
        cat.claim_model("bench/x", "bench", "x", dim)
        w = ShardWriter(cat, 1, "bench/x", "float16", shard_size)
        kinds = ["full"] + ["crop"] * (n_regions - 1)
        for i in range(n_images):
            sha = hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest()
            emb = rng.standard_normal((n_regions, dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            side = rng.integers(100, 300, n_regions).astype(np.float32)
            boxes = np.stack([side * 0.1, side * 0.2, side, side], 1)
            w.add(IndexedImage(sha, f"/data/{i}.jpg", "c", 500, 375, kinds, boxes, emb))
            ids.append(content_id(sha))
        w.flush()
    return ids


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--regions", type=int, default=31, help="per image, full view included (LaZSL's ImageNet: 91)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--subset", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="keep the store here (default: a temporary folder)")
    a = ap.parse_args(argv)

    from stores import tables
    from stores.catalog import Catalog

    tmp = None
    if a.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-region-reads-")
        root = Path(tmp.name) / "store"
    else:
        root = Path(a.store)
    t0 = time.perf_counter()
    ids = build(root, a.images, a.regions, a.dim, a.shard_size, a.seed)
    out = {"images": a.images, "regions_per_image": a.regions, "dim": a.dim, "dtype": "float16",
           "shard_size": a.shard_size, "subset": a.subset, "seed": a.seed, "build_s": round(time.perf_counter() - t0, 1)}
    with Catalog(root, read_only=True) as cat:
        shards = cat.committed_shard_files("regions")
        out["regions_shards"] = len(shards)
        out["store_mb"] = round(sum(p.stat().st_size for p in shards) / 2**20, 1)
        rng = np.random.default_rng(a.seed + 1)
        subsets = {"random": sorted(int(i) for i in rng.choice(ids, a.subset, replace=False)),
                   "contiguous": ids[len(ids) // 3: len(ids) // 3 + a.subset]}
        cols = tables.REGION_BATCH_COLUMNS
        out["reads"] = {}
        for name, want in subsets.items():
            def every_shard(want=want):
                n = 0
                for p in shards:
                    t = tables.read_region_rows(p, want, None, cols)
                    n += 0 if t is None else t.num_rows
                return n

            def needed_shards(want=want):
                return sum(t.num_rows for p, _ in tables.region_shard_plan(cat, want)
                           if (t := tables.read_region_rows(p, want, None, cols)) is not None)

            def needed_row_groups(want=want):
                return sum(b.region_ids.size for b in tables.iter_region_batches(cat, want))

            res = {}
            for label, fn in (("every_shard", every_shard), ("needed_shards", needed_shards),
                              ("needed_row_groups", needed_row_groups)):
                n, m = measure(fn)
                assert n == a.subset * a.regions, (label, n)
                res[label] = m
            plan = tables.region_shard_plan(cat, want)
            res["shards_holding"] = len(plan)
            res["row_groups_read"] = sum(len({int(x) // 16 for x in pos}) for _, pos in plan)
            res["row_groups_in_store"] = sum(-(-min(a.shard_size, a.images - i * a.shard_size) // 16)
                                             for i in range(len(shards)))
            out["reads"][name] = res
        iid = subsets["random"][0]
        view_sql = ("SELECT region_id, kind, x0, y0, x1, y1 FROM regions WHERE image_id = ? AND kind <> 'full' "
                    "ORDER BY region_id")
        ref, m_view = measure(lambda: cat.query(view_sql, [iid]).fetchall())
        got, m_new = measure(lambda: tables.image_regions(cat, iid))
        assert got[0].tolist() == [r[0] for r in ref]
        out["one_image_boxes"] = {"regions_view_query": m_view, "image_regions": m_new}
    out["load_average"] = [round(v, 1) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
