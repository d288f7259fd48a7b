"""What storing region embeddings as float16 or as PQ codes costs in accuracy, on the toy world.

    PYTHONPATH=$PWD python benchmarks/bench_region_codes.py            # seeds 1000 and 1001, 20 images/class
    PYTHONPATH=$PWD python benchmarks/bench_region_codes.py --eval-seeds 1000 --n-per-class 5   # quick

The toy world's 12 held-out classes (``pipeline/toy/world.py``, setting ``parts``, the scenes
``benchmarks/toy_eval.py`` builds), written as PNG files and indexed by the stages' own batch
function (``pipeline.stages.region_batches.RegionBatchFn``: decode, LaZSL's crops seeded by the
content hash, encode with ``toy-clip``, D = 128): full view + ``--n-crops`` square crops of side
U(``--crop-lo``, 0.9). Region embeddings come out in float32, then are stored as:

* ``float32`` (4·D bytes), ``float16`` (2·D bytes, the store's default);
* ``pq{M}``: Faiss ``ProductQuantizer(D, M, 8)`` codes, M bytes per region, decoded and
  re-normalised before scoring. The quantizer is trained on the regions of *other* images
  (``--train-seed``, same distribution), as an index trained on a sample would be.

Scores are the query stage's ``queries.baselines.dclip_scores`` (full image only) and
``queries.lazsl.lazsl_scores`` (full + crops, θ 0.8, ε 0.1); descriptor embeddings stay float32.
Reports top-1 per storage, the share of images whose prediction matches float32's, and the mean
cosine between a decoded embedding and its float32 original. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from toy_eval import build_eval_set  # noqa: E402

from pipeline.toy import world as tw  # noqa: E402


def encode_regions(lm, items, n_crops: int, crop_lo: float, folder: Path, batch_images: int = 16) -> np.ndarray:
    """[B, 1 + n_crops, D] float32 through the index stage's batch function (rows in file order)."""
    import pyarrow as pa

    from pipeline.config import RegionConfig
    from pipeline.stages.region_batches import RegionBatchFn, records_from_rows

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (_, scene) in enumerate(items):
        p = folder / f"{i:05d}.png"
        scene.image.save(p)
        paths.append(str(p))
    fn = RegionBatchFn(lm, RegionConfig(n_crops=n_crops, crop_min=crop_lo), dtype="float32")
    out = []
    for start in range(0, len(paths), batch_images):
        rows = fn(pa.table({"path": paths[start : start + batch_images]}))
        recs = list(records_from_rows(rows))
        assert all("emb" in r for r in recs), [r.get("error") for r in recs]
        out += [r["emb"] for r in recs]
    return np.stack(out)


def pq_codec(train: np.ndarray, m: int, seed: int):
    import faiss

    pq = faiss.ProductQuantizer(train.shape[1], m, 8)
    pq.cp.seed = seed
    pq.train(np.ascontiguousarray(train, np.float32))

    def roundtrip(x: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), np.float32)
        return pq.decode(pq.compute_codes(flat)).reshape(x.shape)

    return roundtrip


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def score(V: np.ndarray, D: np.ndarray, attr_class: np.ndarray, n_classes: int, theta: float, eps: float) -> dict:
    from queries.baselines import dclip_scores
    from queries.lazsl import lazsl_scores

    full, crops = V[:, 0], V[:, 1:]
    dclip = dclip_scores(full, D, attr_class, n_classes)
    lazsl = lazsl_scores(full, crops, D, attr_class, theta=theta, eps=eps, return_plan=False).scores
    return {"dclip": np.asarray(dclip).argmax(1), "lazsl": np.asarray(lazsl).argmax(1)}


def main(argv=None) -> dict:
    import faiss
    import torch

    from pipeline.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="toy-clip")
    ap.add_argument("--eval-seeds", default="1000,1001")
    ap.add_argument("--train-seed", type=int, default=2000, help="scenes whose regions train the PQ")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--n-crops", type=int, default=60)
    ap.add_argument("--crop-lo", type=float, default=0.5)
    ap.add_argument("--theta", type=float, default=0.8)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--pq", default="8,16,32,64", help="PQ sizes in bytes per region")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    lm = load_model("zsl-tiny", a.weights, device="cpu", precision="fp32")
    tmp = tempfile.TemporaryDirectory(prefix="bench-region-codes-")

    split, train_items = build_eval_set("parts", max(a.n_per_class, 20), a.train_seed)
    train = encode_regions(lm, train_items, a.n_crops, a.crop_lo, Path(tmp.name) / "train").reshape(-1, lm.embed_dim)
    codecs = {"float32": lambda x: x, "float16": lambda x: x.astype(np.float16).astype(np.float32)}
    for m in (int(v) for v in a.pq.split(",")):
        codecs[f"pq{m}"] = pq_codec(train, m, a.train_seed)
    bytes_per_region = {"float32": 4 * lm.embed_dim, "float16": 2 * lm.embed_dim,
                        **{k: int(k[2:]) for k in codecs if k.startswith("pq")}}

    classes = split.heldout_classes()
    names = list(classes)
    sents = [f"{n}, {tw.dclip_sentence(d)}" for n in names for d in classes[n]]
    D = lm.encode_texts(sents)
    attr_class = np.repeat(np.arange(len(names)), [len(classes[n]) for n in names])

    out = {"weights": a.weights, "fingerprint": lm.fingerprint, "dim": lm.embed_dim, "setting": "parts",
           "n_classes": len(names), "chance_top1": round(1 / len(names), 4), "train_regions": int(len(train)),
           "regions": "RegionBatchFn (index-images' batch function), boxes seeded by content hash",
           "params": {k: getattr(a, k) for k in ("n_per_class", "n_crops", "crop_lo", "theta", "eps", "train_seed")},
           "bytes_per_region": bytes_per_region, "by_seed": []}
    for seed in (int(s) for s in a.eval_seeds.split(",")):
        _, items = build_eval_set("parts", a.n_per_class, seed)
        labels = np.array([ci for ci, _ in items])
        V32 = encode_regions(lm, items, a.n_crops, a.crop_lo, Path(tmp.name) / f"eval{seed}")
        ref = score(V32, D, attr_class, len(names), a.theta, a.eps)
        res = {"seed": seed, "n_images": len(items), "codes": {}}
        for name, codec in codecs.items():
            V = unit(codec(V32))
            pred = score(V, D, attr_class, len(names), a.theta, a.eps)
            res["codes"][name] = {
                "top1": {k: round(float((v == labels).mean()), 4) for k, v in pred.items()},
                "same_as_float32": {k: round(float((v == ref[k]).mean()), 4) for k, v in pred.items()},
                "cos_to_float32": round(float((V * V32).sum(-1).mean()), 5),
            }
        out["by_seed"].append(res)
    tmp.cleanup()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
