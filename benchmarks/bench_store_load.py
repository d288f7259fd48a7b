"""Load test of the store: 50,000 images' regions written straight to a store, LaZSL over them
with bounded memory, SQL over the tens of millions of alignment rows it writes.

    python benchmarks/bench_store_load.py                       # 50,000 images x 10 regions, D 512
    python benchmarks/bench_store_load.py --images 2000         # a quick look

Phases, each in its own process so each peak RSS is its own (``ru_maxrss``):

1. ``write``: a store with a synthetic model record, ``--classes`` classes of
   ``--attrs-per-class`` synthetic normalised attribute embeddings, and ``--images`` images of
   ``--regions`` regions (the full view and crops) of normalised float16 embeddings written
   through ``stores.shards.ShardWriter`` (the path index-images takes), then the Faiss indexes;
2. ``classify``: ``pipeline.stages.classify.classify(cat, "lazsl", top_k=...)``: one run, one
   transaction, every alignment row of every candidate class stored;
3. ``sql``: the README's queries over the run (top three attributes per prediction, descriptors
   that never carried mass, confusions), each timed on the read-only catalog, plus
   ``verify --quick`` and the full ``verify``.

Embeddings are random (seeded), so accuracies mean nothing here; the figures are sizes and times.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "synthetic/d{dim}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _normalised(rng, n, d):
    import numpy as np

    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def phase_write(a) -> dict:
    import numpy as np

    from stores import indexes, tables
    from stores.catalog import Catalog
    from stores.shards import IndexedImage, ShardWriter

    rng = np.random.default_rng(a.seed)
    fp = MODEL.format(dim=a.dim)
    t0 = time.perf_counter()
    with Catalog(a.store) as cat:
        cat.claim_model(fp, "synthetic", f"d{a.dim}", a.dim, 224)
        names = [f"class {i:04d}" for i in range(a.classes)]
        tables.insert_classes(cat, list(range(1, a.classes + 1)), names, names)
        n_attr = a.classes * a.attrs_per_class
        attr_ids = list(range(1, n_attr + 1))
        tables.insert_attributes(cat, [
            dict(attr_id=aid, class_id=1 + (aid - 1) // a.attrs_per_class, text=f"feature {aid}",
                 prompt=f"{names[(aid - 1) // a.attrs_per_class]}, which has feature {aid}", source="file:synthetic",
                 style="descriptors", prompt_version="file") for aid in attr_ids])
        tables.insert_attribute_embeddings(cat, attr_ids, fp, _normalised(rng, n_attr, a.dim))
        indexes.rebuild_attribute_indexes(cat, fp)
        t_attrs = time.perf_counter() - t0
        tables.insert_index_run(cat, 1, {"regions": {"source": "synthetic", "n_crops": a.regions - 1}}, fp)
        writer = ShardWriter(cat, 1, fp, "float16", a.shard_size)
        boxes = np.tile(np.array([[0, 0, 224, 224]], np.float32), (a.regions, 1))
        kinds = ["full"] + ["crop"] * (a.regions - 1)
        t1 = time.perf_counter()
        for i in range(a.images):
            sha = f"{i:064x}"[::-1]  # distinct content hashes (their first 15 hex digits are the image id)
            writer.add(IndexedImage(sha, f"/synthetic/{i % a.classes:04d}/{i:06d}.jpg", names[i % a.classes], 224, 224,
                                    kinds, boxes, _normalised(rng, a.regions, a.dim)))
        writer.flush()
        t_shards = time.perf_counter() - t1
        cat.refresh_views()
        t2 = time.perf_counter()
        indexes.rebuild_image_index(cat, fp)
        t_index = time.perf_counter() - t2
        shards = cat.shard_files("regions")
        region_bytes = sum(p.stat().st_size for p in shards)
    return dict(attributes=n_attr, attribute_seconds=round(t_attrs, 2), shard_write_seconds=round(t_shards, 1),
                images_per_s=round(a.images / t_shards), region_rows=a.images * a.regions, region_shards=len(shards),
                region_bytes=region_bytes, bytes_per_region=round(region_bytes / (a.images * a.regions), 1),
                image_index_seconds=round(t_index, 2), peak_rss_mb=round(peak_rss_mb()))


def phase_classify(a) -> dict:
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.classify import classify
    from stores.catalog import Catalog

    with Catalog(a.store) as cat:
        if a.duckdb_memory_limit:
            cat.query(f"SET memory_limit = '{a.duckdb_memory_limit}'")
        limit = cat.query("SELECT current_setting('memory_limit')").fetchone()[0]
        t0 = time.perf_counter()
        rep = classify(cat, "lazsl", MethodConfig(top_k=a.top_k), progress=False)
        secs = time.perf_counter() - t0
        n_align = cat.query("SELECT count(*) FROM alignments WHERE run_id = ?", [rep.run_id]).fetchone()[0]
        n_pred = cat.query("SELECT count(*) FROM predictions WHERE run_id = ?", [rep.run_id]).fetchone()[0]
    return dict(run_id=rep.run_id, images=rep.images, duckdb_memory_limit=limit, seconds=round(secs, 1),
                images_per_s=round(rep.images / secs),
                predictions=n_pred, alignments=n_align, catalog_bytes=(Path(a.store) / "catalog.duckdb").stat().st_size,
                peak_rss_mb=round(peak_rss_mb()))


README_QUERIES = {
    "top_attributes (top 3 of each prediction, latest run)": """
        SELECT t.image_id, t.class_name, list(t.attribute ORDER BY t.attr_rank) AS top3
        FROM top_attributes t JOIN predictions p USING (run_id, image_id, class_id)
        WHERE p.rank = 1 AND t.attr_rank <= 3 AND t.run_id = (SELECT max(run_id) FROM alignments)
        GROUP BY ALL ORDER BY t.image_id""",
    "attribute_usage (never used descriptors)": """
        SELECT run_id, class_name, attribute FROM attribute_usage WHERE never_used ORDER BY run_id, class_name""",
    "class_confusions": """
        SELECT run_id, label, predicted, n FROM class_confusions WHERE NOT correct ORDER BY n DESC""",
    "alignments: count": "SELECT count(*) FROM alignments",
    "alignments: mass per class (group by)": """
        SELECT c.name, sum(al.mass * al.similarity) AS contribution FROM alignments al
        JOIN classes c ON c.class_id = al.class_id GROUP BY ALL ORDER BY contribution DESC LIMIT 10""",
}


def phase_sql(a) -> dict:
    from pipeline.sql import run_sql
    from stores.catalog import Catalog
    from stores.verify import quick_check, verify

    out = {}
    with Catalog(a.store, read_only=True) as cat:
        for name, q in README_QUERIES.items():
            t0 = time.perf_counter()
            cols, rows = run_sql(cat, q)
            out[name] = dict(seconds=round(time.perf_counter() - t0, 2), rows=len(rows))
        times = []
        for _ in range(3):  # the first call pays for imports and DuckDB's first queries
            t0 = time.perf_counter()
            quick = quick_check(cat)
            times.append(time.perf_counter() - t0)
        out["verify --quick"] = dict(first_seconds=round(times[0], 3), seconds=round(min(times), 3), problems=len(quick))
        t0 = time.perf_counter()
        full = verify(cat)
        out["verify (full)"] = dict(seconds=round(time.perf_counter() - t0, 1), problems=len(full))
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def run_phase(name: str, a) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--store", str(a.store)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("phase", "store", "keep")]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{res.stderr[-4000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--regions", type=int, default=10, help="per image, the full view included")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=300)
    p.add_argument("--attrs-per-class", type=int, default=8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duckdb-memory-limit", default="", help="SET memory_limit for the classify phase (e.g. 1GB; "
                   "default: DuckDB's, 80%% of RAM)")
    p.add_argument("--store", default=None, help="store folder (default: a temporary one, removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--phase", choices=["write", "classify", "sql"], default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        print(json.dumps({"write": phase_write, "classify": phase_classify, "sql": phase_sql}[a.phase](a)))
        return
    tmp = None
    if a.store is None:
        tmp = tempfile.mkdtemp(prefix="zsl-load-")
        a.store = str(Path(tmp) / "store")
    try:
        result = dict(config=dict(images=a.images, regions=a.regions, dim=a.dim, classes=a.classes,
                                  attrs_per_class=a.attrs_per_class, top_k=a.top_k, shard_size=a.shard_size, seed=a.seed,
                                  dtype="float16", cpus=os.cpu_count()))
        for name in ("write", "classify", "sql"):
            result[name] = run_phase(name, a)
        print(json.dumps(result, indent=2))
    finally:
        if tmp and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
