"""What the reader/writer design and the sql sandbox cost; prints one JSON object.

    python benchmarks/bench_store_concurrency.py                       # 1M and 10M alignment rows
    python benchmarks/bench_store_concurrency.py --rows 1000000 --regions 100000

Catalog (``stores.catalog``: a writer writes a working copy and publishes it over
``catalog.duckdb``), for a store whose catalog holds N alignment rows (random ids and floats, so
the file is as large as a real one):

* ``size_mb``: catalog.duckdb on disk;
* ``writer_open_s``: ``Catalog(root)`` (lock, copy to the working copy, migrations check) vs
  ``plain_open_rw_s``: ``duckdb.connect(file)`` alone (what the old design paid);
* ``commit_s``: one small transaction (10 rows) right after the writer opened, with its
  ``commit_point`` (published at once only if copies are cheap: ``commits_published_at_once``) vs
  ``commit_in_place_s``: the same transaction on a plain connection;
* ``publish_copy_s``: the copy + rename alone; ``close_s``: closing a writer (a rename);
* ``reader_open_s`` / ``reader_open_while_writing_s``: ``Catalog(read_only=True)`` idle and while
  a writer holds the store (the old design: refused with a lock error).

Sandbox (``pipeline sql``): the ``regions`` view through ``zslro://`` (read-only fsspec file
system) vs DuckDB reading the shard paths itself, each query in a fresh process: wall time and
peak RSS (streaming: RSS stays far below the decoded embeddings' size).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402


def fill_alignments(root: Path, n: int, seed: int = 0) -> None:
    from stores import tables
    from stores.catalog import Catalog

    rng = np.random.default_rng(seed)
    with Catalog(root) as cat:
        cat._copy_seconds = 1e9  # build without publishing each step (published on close)
        with cat.transaction():
            for s in range(0, n, 1_000_000):
                m = min(1_000_000, n - s)
                tables.insert_arrow(cat, "alignments", pa.table({
                    "run_id": np.ones(m, np.int64), "image_id": np.repeat(rng.integers(0, 2**60, m // 400 + 1), 400)[:m],
                    "class_id": rng.integers(0, 1000, m), "region_id": rng.integers(0, 2**60, m),
                    "attr_id": rng.integers(0, 10000, m), "mass": rng.random(m), "similarity": rng.random(m)}))


def small_tx(con, base: int) -> None:
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO classes (class_id, name, norm_name) SELECT i, 'c' || i, 'c' || i FROM range(?, ?) t(i)",
                [base, base + 10])
    con.execute("COMMIT")


def median(xs):
    return float(np.median(xs))


def catalog_figures(root: Path, rows: int, repeats: int = 5) -> dict:
    from stores.catalog import Catalog

    fill_alignments(root, rows)
    main = root / "catalog.duckdb"
    out = {"alignment_rows": rows, "size_mb": round(main.stat().st_size / 2**20, 1)}

    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        con = duckdb.connect(str(main))
        t.append(time.perf_counter() - t0)
        con.close()
    out["plain_open_rw_s"] = round(median(t), 4)
    base = 10_000
    t = []
    con = duckdb.connect(str(main))
    for i in range(repeats):
        t0 = time.perf_counter()
        small_tx(con, base + 10 * i)
        t.append(time.perf_counter() - t0)
    con.close()
    out["commit_in_place_s"] = round(median(t), 4)

    opens, commits, copies, closes, published = [], [], [], [], []
    base = 20_000
    for i in range(repeats):
        t0 = time.perf_counter()
        cat = Catalog(root)
        opens.append(time.perf_counter() - t0)
        n0 = cat.publish_count
        t0 = time.perf_counter()
        with cat.transaction():
            cat.query("INSERT INTO classes (class_id, name, norm_name) SELECT i, 'c' || i, 'c' || i FROM range(?, ?) t(i)",
                      [base + 10 * i, base + 10 * i + 10])
        commits.append(time.perf_counter() - t0)
        published.append(cat.publish_count - n0)
        t0 = time.perf_counter()
        cat.publish()
        copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cat.close()
        closes.append(time.perf_counter() - t0)
    out.update(writer_open_s=round(median(opens), 4), commit_s=round(median(commits), 4),
               commits_published_at_once=f"{sum(published)}/{repeats}",
               publish_copy_s=round(median(copies), 4), close_s=round(median(closes), 4))

    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Catalog(root, read_only=True).close()
        t.append(time.perf_counter() - t0)
    out["reader_open_s"] = round(median(t), 4)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from stores.catalog import Catalog; c = Catalog(sys.argv[1]); print('ok', flush=True); "
        "sys.stdin.readline(); c.close()"), str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout.readline().strip() == "ok"
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = Catalog(root, read_only=True)
        r.query("SELECT count(*) FROM alignments").fetchone()
        t.append(time.perf_counter() - t0)
        r.close()
    holder.communicate("\n")
    out["reader_open_while_writing_s"] = round(median(t), 4)
    return out


# ---- sandbox ---------------------------------------------------------------------------------
QUERIES = {
    "count": "SELECT count(*) FROM regions",
    "one_image": "SELECT count(*), sum(embedding[1]) FROM regions WHERE image_id = 1234",
    "all_embeddings": "SELECT sum(list_sum(embedding)) FROM regions",
}


def make_regions(root: Path, n: int, per_shard: int = 8448, dim: int = 512, seed: int = 0) -> None:
    from stores.catalog import Catalog
    from stores.parquet import embedding_array, write_table_atomic
    from stores.tables import IMAGE_SHARD_SCHEMA

    rng = np.random.default_rng(seed)
    Catalog(root).close()
    for s, start in enumerate(range(0, n, per_shard)):
        m = min(per_shard, n - start)
        ids = np.arange(start, start + m, dtype=np.int64)
        img = ids // 33
        name = f"part-000001-{s:05d}.parquet"
        write_table_atomic(pa.table({
            "region_id": ids, "image_id": img, "kind": pa.array(["crop"] * m), "x0": np.zeros(m, np.float32),
            "y0": np.zeros(m, np.float32), "x1": np.ones(m, np.float32), "y1": np.ones(m, np.float32),
            "model": pa.array(["m"] * m), "embedding": embedding_array(rng.standard_normal((m, dim)), "float16")}),
            root / "regions" / name)
        u = np.unique(img)
        write_table_atomic(pa.table({"image_id": u, "path": pa.array([f"/i/{i}" for i in u]), "sha256": pa.array(
            [f"{i:064x}" for i in u]), "width": np.full(len(u), 1, np.int32), "height": np.full(len(u), 1, np.int32),
            "label": pa.array([None] * len(u), pa.string()), "index_run_id": np.ones(len(u), np.int64)},
            schema=IMAGE_SHARD_SCHEMA), root / "images" / name)


def one_query(root: str, sandbox: bool, query: str) -> dict:
    from stores.catalog import Catalog

    with Catalog(root, read_only=True, sandbox=sandbox) as cat:
        cat.query("SELECT 1").fetchall()
        rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
        t0 = time.perf_counter()
        cat.query(query).fetchall()
        dt = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's size across exec
    hwm = next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
    return {"s": round(dt, 3), "rss_before_mb": rss_before, "peak_rss_mb": hwm // 1024}


def sandbox_figures(root: Path, n_regions: int) -> dict:
    make_regions(root, n_regions)
    out = {"regions": n_regions, "shards_mb": round(sum(p.stat().st_size for p in (root / "regions").iterdir()) / 2**20, 1),
           "decoded_embeddings_mb": round(n_regions * 512 * 4 / 2**20, 1)}
    for name, q in QUERIES.items():
        for mode in ("native", "sandbox"):
            proc = subprocess.run([sys.executable, __file__, "--one-query", str(root), mode, q], capture_output=True,
                                  text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
            out[f"{name}_{mode}"] = json.loads(proc.stdout)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--regions", type=int, default=337_920)
    ap.add_argument("--one-query", nargs=3, metavar=("ROOT", "MODE", "SQL"))
    args = ap.parse_args()
    if args.one_query:
        root, mode, q = args.one_query
        print(json.dumps(one_query(root, mode == "sandbox", q)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-conc-"))
    try:
        result = {"duckdb": duckdb.__version__, "cpus": os.cpu_count(), "catalog": [], "sandbox": None}
        for n in args.rows:
            result["catalog"].append(catalog_figures(work / f"c{n}", n))
            shutil.rmtree(work / f"c{n}")
        if args.regions:
            result["sandbox"] = sandbox_figures(work / "regions", args.regions)
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
