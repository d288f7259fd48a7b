"""Faiss factory indexes at scale: recall@10 against Flat, query time, build time, bytes per vector.

    PYTHONPATH=$PWD python benchmarks/bench_faiss.py                       # 1M x 512 (about 2 GB of float32)
    PYTHONPATH=$PWD python benchmarks/bench_faiss.py --n 100000 --nlist 1024   # a quick run

Data: ``--n`` synthetic "embeddings" of dimension ``--dim`` (512, ViT-B-32's), clustered like
image embeddings are (``--clusters`` Gaussian centres, unit-norm after noise), L2-normalised,
float32, generated in chunks into one array (the only full copy besides the index under test);
``--queries`` held-out points from the same distribution. Ground truth is the ``Flat`` index's
exact top-10 (inner product). Each index is built with ``stores.faiss_factory.build_factory_index``
(the project's own path: seeded training sample, 64 points per centroid), measured, written to a
temporary file to count its bytes, then freed before the next one.

Figures per index: ``train_s``, ``add_s``, ``bytes_per_vector`` (file size / n: codes + ids +
graph/lists), and for each search setting ``recall_at_10`` and ``ms_per_query`` (queries searched
in one batch on ``--threads`` threads). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from stores.faiss_factory import build_factory_index, search, set_search_params  # noqa: E402


def synthetic(n: int, dim: int, clusters: int, seed: int, spread: float = 2.0, chunk: int = 65_536) -> np.ndarray:
    """[n, dim] unit vectors around ``clusters`` random centres (one float32 array, made in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        block = centres[rng.integers(0, clusters, m)]
        block += (spread / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[i : i + m] = block
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def timed_search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    scores, ids = search(index, q, k)
    return scores, ids, (time.perf_counter() - t0) * 1000 / len(q)


def index_bytes(index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".index", delete=True) as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--spread", type=float, default=2.0, help="noise norm around a unit centre (before normalising)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--pq", type=int, default=64, help="PQ sub-quantizers (bytes per code at 8 bits)")
    ap.add_argument("--indexes", default="HNSW32,IVF{nlist}:PQ{pq},IVF{nlist}:Flat",
                    help="comma-separated factory strings, ':' for ',' inside one ('Flat' always runs first)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    data = synthetic(a.n + a.queries, a.dim, a.clusters, a.seed, a.spread)
    xb, xq = data[: a.n], np.ascontiguousarray(data[a.n :])
    ids = np.arange(a.n, dtype=np.int64) * 16 + 5  # store-like keys, not positions
    gen_s = time.perf_counter() - t0
    out = {
        "n": a.n, "dim": a.dim, "clusters": a.clusters, "spread": a.spread, "queries": a.queries, "k": 10,
        "threads": a.threads, "seed": a.seed, "generate_s": round(gen_s, 1), "faiss": faiss.__version__, "indexes": [],
    }

    def run(factory: str, settings: list[dict], truth=None):
        """Build, time and free one index; with ``truth`` None (Flat) its hits become the truth."""
        t = time.perf_counter()
        index, prov = build_factory_index(xb, ids, factory, seed=a.seed)
        build_s = time.perf_counter() - t
        row = {"factory": factory, "build_s": round(build_s, 1), "bytes_per_vector": round(index_bytes(index) / a.n, 1),
               "train_size": (prov["train"] or {}).get("size"), "search": []}
        found_flat = None
        for params in settings:
            set_search_params(index, **params)
            scores, found, ms = timed_search(index, xq, 10)
            if truth is None:  # how near the true neighbours are (describes the synthetic geometry)
                found_flat = found
                out["truth_cosine"] = {"top1": round(float(scores[:, 0].mean()), 3), "top10": round(float(scores[:, 9].mean()), 3)}
            row["search"].append({**params, "ms_per_query": round(ms, 3),
                                  "recall_at_10": round(recall_at(found, truth if truth is not None else found), 4)})
        del index
        row["peak_rss_mb"] = round(peak_rss_mb())
        out["indexes"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return found_flat

    truth = run("Flat", [{}])
    for spec in a.indexes.split(","):
        factory = spec.format(nlist=a.nlist, pq=a.pq).replace(":", ",")
        if factory.startswith("HNSW"):
            settings = [{"efSearch": e} for e in (16, 64, 256)]
        elif factory.startswith("IVF"):
            settings = [{"nprobe": p} for p in (1, 16, 64)]
        else:
            settings = [{}]
        run(factory, settings, truth)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
