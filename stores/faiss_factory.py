"""Faiss indexes from a factory string (``Flat``, ``HNSW32``, ``IVF4096,PQ64``, ...), keyed by the store's ids.

Every index uses the inner-product metric on L2-normalised vectors (cosine similarity), as
``stores/faiss_index.py`` does, and returns the store's int64 keys (``image_id``,
``region_id``, ...) so a hit joins straight back to DuckDB:

* ``Flat`` is exactly ``faiss_index.build_flat_ip``: ``IndexIDMap2(IndexFlatIP)`` (so
  ``index_vectors`` and every existing reader keep working);
* IVF indexes (``IVF...``, also behind ``OPQ``/``PCA`` transforms) store the ids in their
  inverted lists (``add_with_ids``): no second copy of the ids;
* everything else (``HNSW32``, ``PQ64``, ``SQ8``, ...) is wrapped in ``IndexIDMap``
  (8 bytes of id per vector).

Training sample rule (for types that need training, ``index.is_trained`` is False)
---------------------------------------------------------------------------------
Faiss trains with k-means: the IVF coarse quantizer has ``k = nlist`` centroids, each PQ
sub-quantizer (and OPQ) ``k = 2**nbits`` (256 for ``PQ64``, 16 for ``PQ64x4fs``). Faiss
warns below 39 training points per centroid and subsamples above 256 per centroid
(``ClusteringParameters.max_points_per_centroid``). With ``k`` the largest of these:

* minimum: ``39 * k`` vectors; fewer are refused with one line (``IVF4096`` needs 159,744);
* sample size: ``min(n, train_size or 64 * k)`` vectors (64 per centroid: within Faiss's
  30-256 guideline at a quarter of the cost of 256; pass ``train_size`` for more);
* which vectors: ``numpy.random.default_rng(seed).choice`` over the positions of the ids in
  ascending order (so the sample depends on the set of ids and the seed, not on the order
  they were read in). The sidecar records the rule, seed, size and a sha256 of the sampled
  ids, so the sample can be re-drawn and checked.

Search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW, any ``faiss.ParameterSpace``
name) are set with :func:`set_search_params` and recorded in the sidecar at build time.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import faiss
import numpy as np

from .errors import StoreError

MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per centroid
DEFAULT_POINTS_PER_CENTROID = 64
SAMPLE_RULE = "rng(seed).choice(positions of ids sorted ascending, size, replace=False)"


class FactoryIndexError(StoreError):
    """A factory string that cannot be built or trained on the vectors given; the message says why."""


@dataclass
class TrainPlan:
    """How many vectors a factory string needs to train, and why."""

    needs_training: bool
    centroids: int = 0  # the largest k-means k inside the index
    minimum: int = 0
    what: str = ""  # e.g. "IVF4096 coarse quantizer"
    parts: dict = field(default_factory=dict)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(x)
    return x


MAX_NLIST = 1 << 22  # IVF lists: beyond ~4M, building the empty index alone exhausts memory (std::bad_alloc)


def _parse(factory: str, dim: int) -> faiss.Index:
    for n in re.findall(r"IVF(\d+)", factory):
        if int(n) > MAX_NLIST:
            raise FactoryIndexError(f"{factory!r}: IVF{n} has more inverted lists than Faiss can allocate here (at most "
                                    f"{MAX_NLIST:,}; about sqrt(N) to 16*sqrt(N) for N vectors); try IVF4096,PQ64.")
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except MemoryError:
        raise FactoryIndexError(f"Faiss ran out of memory building an empty {factory!r}; use fewer IVF lists or "
                                "smaller codes (e.g. IVF4096,PQ64).") from None
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise FactoryIndexError(
            f"Faiss cannot build {factory!r} with the inner-product metric at dim {dim} ({last[:160]}); "
            "try Flat, HNSW32, IVF4096,Flat or IVF4096,PQ64."
        ) from exc


def train_plan(factory: str, dim: int) -> TrainPlan:
    """The k-means sizes inside ``factory`` and the minimum training set (39 per centroid)."""
    index = _parse(factory, dim)
    if index.is_trained:
        return TrainPlan(False)
    parts: dict[str, int] = {}
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            vt = faiss.downcast_VectorTransform(inner.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                parts["OPQ rotation (PQ codebooks)"] = 256
        inner = faiss.downcast_index(inner.index)
    try:
        ivf = faiss.extract_index_ivf(inner)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        parts[f"IVF{ivf.nlist} coarse quantizer"] = int(ivf.nlist)
        inner = faiss.downcast_index(ivf)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        parts[f"PQ{pq.M}x{pq.nbits} codebooks"] = int(pq.ksub)
    if not parts:  # SQ, LSH, ...: trained on statistics, no k-means
        parts["scalar statistics"] = 1
    what, k = max(parts.items(), key=lambda kv: kv[1])
    return TrainPlan(True, centroids=k, minimum=MIN_POINTS_PER_CENTROID * k if k > 1 else 1, what=what, parts=parts)


def training_sample(ids: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Positions (into ``ids``) of the training sample: seeded, independent of the ids' order."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if size >= len(ids):
        return order
    pick = np.random.default_rng(seed).choice(len(ids), size=size, replace=False)
    return np.sort(order[pick])


def set_search_params(index: faiss.Index, **params) -> faiss.Index:
    """Set search-time parameters (``nprobe=32``, ``efSearch=128``, ...) through any wrapper."""
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        if value is None:
            continue
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError as exc:
            raise FactoryIndexError(f"{name}={value} does not apply to this index ({type(faiss.downcast_index(index)).__name__}).") from exc
    return index


def build_factory_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    factory: str = "Flat",
    *,
    train_size: int | None = None,
    seed: int = 0,
    search_params: dict | None = None,
    normalize: bool = True,
) -> tuple[faiss.Index, dict]:
    """Build (and train on a seeded sample, when needed) an inner-product index over ``vectors``.

    Args:
        vectors: [N, D] embeddings (float16 or float32); L2-normalised here unless ``normalize=False``.
        ids: [N] int64 store keys; searches return these.
        factory: a Faiss factory string, e.g. ``Flat``, ``HNSW32``, ``IVF4096,PQ64``.
        train_size: training sample size (default ``64 * k``, at least ``39 * k``; see module doc).
        seed: seeds the training sample (and Faiss's k-means).
        search_params: e.g. ``{"nprobe": 32}`` or ``{"efSearch": 128}``.

    Returns ``(index, provenance)``; ``provenance`` goes into the JSON sidecar
    (``faiss_index.write_index(index, path, {**provenance, "model": ...})``).

    Raises :class:`FactoryIndexError` (one line) for an unknown string or too few vectors.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise FactoryIndexError(f"vectors {vectors.shape} and ids {ids.shape} do not match.")
    n, dim = vectors.shape
    size = sample_size(factory, dim, n, train_size=train_size)
    pos = training_sample(ids, size, seed) if size else None
    index, prov = train_index(factory, dim, None if pos is None else vectors[pos], seed=seed, normalize=normalize)
    if prov["train"] is not None:
        prov["train"].update(of=int(n), ids_sha256=hashlib.sha256(np.sort(ids[pos]).tobytes()).hexdigest())  # sorted int64 ids
    add_vectors(index, vectors, ids, normalize=normalize)
    if search_params:
        set_search_params(index, **search_params)
    prov["search_params"] = dict(search_params or {})
    return index, prov


def sample_size(factory: str, dim: int, n: int, *, train_size: int | None = None) -> int:
    """Training sample size for ``n`` vectors (0 when the type needs no training); refuses too few."""
    plan = train_plan(factory, dim)
    if not plan.needs_training:
        return 0
    if n < plan.minimum:
        raise FactoryIndexError(
            f"{factory} needs at least {plan.minimum:,} vectors to train ({MIN_POINTS_PER_CENTROID} per centroid of its "
            f"{plan.what}); there are {n:,}: use a smaller index (e.g. IVF{_suggest_nlist(n)},Flat) or Flat/HNSW32."
        )
    return int(min(n, max(plan.minimum, train_size or DEFAULT_POINTS_PER_CENTROID * plan.centroids)))


def train_index(factory: str, dim: int, sample: np.ndarray | None = None, *, seed: int = 0,
                normalize: bool = True) -> tuple[faiss.Index, dict]:
    """An empty index keyed by int64 ids, trained on ``sample`` when its type needs training.

    The streaming path for stores too big for memory: draw the sample (e.g. with
    :func:`sample_size` and :func:`training_sample` over the region ids, reading only those
    rows), train here, then :func:`add_vectors` shard by shard.
    """
    plan = train_plan(factory, dim)
    prov: dict = {"factory": factory, "metric": "inner_product", "normalized": bool(normalize), "ids": "int64 store keys",
                  "train": None}
    index = _parse(factory, dim)
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        index = faiss.IndexIDMap2(index)  # == faiss_index.build_flat_ip
        prov["id_map"] = "IndexIDMap2"
    else:
        try:
            faiss.extract_index_ivf(index)
            prov["id_map"] = "ivf lists"
        except RuntimeError:
            index = faiss.IndexIDMap(index)
            prov["id_map"] = "IndexIDMap"
    if plan.needs_training:
        if sample is None or len(sample) < plan.minimum:
            sample_size(factory, dim, 0 if sample is None else len(sample))  # raises the one-line message
        _seed_kmeans(index, seed)
        _no_polysemous_training(index)
        x = _normalised(sample) if normalize else np.ascontiguousarray(sample, dtype=np.float32)
        index.train(x)
        del x
        prov["train"] = {"rule": SAMPLE_RULE, "seed": seed, "size": int(len(sample)), "minimum": plan.minimum,
                         "kmeans": plan.parts}
    return index, prov


def _suggest_nlist(n: int) -> int:
    """The largest power of two nlist with the default 64 training points per centroid."""
    return 1 << max(0, int(np.log2(max(1, n // DEFAULT_POINTS_PER_CENTROID))))


def _no_polysemous_training(index: faiss.Index) -> None:
    """index_factory turns on polysemous training for IVF-PQ; it only serves ``polysemous_ht``
    search (which we do not use) and multiplies the training time by ~7 (34 s vs 5 s for
    IVF64,PQ8 on 12,000 x 32, measured here)."""
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False


def _seed_kmeans(index: faiss.Index, seed: int) -> None:
    """Faiss's k-means seeds default to a constant; tie them to ``seed`` where reachable."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.cp.seed = int(seed)


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, *, normalize: bool = True, chunk: int = 65_536) -> None:
    """Add ``vectors`` under ``ids`` without a second full-size float32 copy (one chunk at a time)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for i in range(0, len(vectors), chunk):
        v = vectors[i : i + chunk]
        v = _normalised(v) if normalize else np.ascontiguousarray(v, dtype=np.float32)
        index.add_with_ids(v, ids[i : i + chunk])


def search(index: faiss.Index, queries: np.ndarray, k: int, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], ids [Q, k]); missing hits have id -1."""
    q = _normalised(queries) if normalize else np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(q, k)


def describe(factory: str, dim: int) -> str:
    """One line on what training ``factory`` needs at ``dim``, e.g. for ``--help`` or an error."""
    plan = train_plan(factory, dim)
    if not plan.needs_training:
        return f"{factory}: no training"
    return f"{factory}: trains on >= {plan.minimum:,} vectors (default sample {DEFAULT_POINTS_PER_CENTROID} x {plan.centroids:,}; {plan.what})"


def build_from_shards(paths, factory: str = "Flat", *, id_column: str, embedding_column: str = "embedding",
                      filters=None, train_size: int | None = None, seed: int = 0, search_params: dict | None = None,
                      normalize: bool = True) -> tuple[faiss.Index, dict]:
    """Build an index over Parquet shards without holding all embeddings in memory.

    Pass 1 reads only ``id_column`` (8 bytes a row) to draw the training sample by the module's
    rule; pass 2 reads the sampled rows and trains; pass 3 adds shard by shard. Same index and
    provenance as :func:`build_factory_index` on the concatenated rows (same sample, same order).
    ``filters``: pyarrow filters, e.g. ``[("kind", "!=", "full")]`` for a regions index.
    """
    # heavy: imported on use
    import pyarrow.parquet as pq

    from .parquet import embeddings_to_numpy

    paths = [str(p) for p in paths]
    id_parts = [pq.read_table(p, columns=[id_column], filters=filters)[id_column].to_numpy() for p in paths]
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
    if not len(ids):
        raise FactoryIndexError(f"no rows to index in {len(paths)} shard(s).")
    first = pq.read_table(paths[int(np.argmax([len(i) for i in id_parts]))], columns=[embedding_column], filters=filters)
    dim = embeddings_to_numpy(first[embedding_column].slice(0, 1)).shape[1]
    size = sample_size(factory, dim, len(ids), train_size=train_size)
    sample = None
    if size:
        pos = training_sample(ids, size, seed)
        sample = np.empty((size, dim), np.float32)
        bounds = np.cumsum([0] + [len(i) for i in id_parts])
        order = np.argsort(pos, kind="stable")  # fill the sample in its own (position) order
        spos = pos[order]
        for k, p in enumerate(paths):
            lo, hi = np.searchsorted(spos, [bounds[k], bounds[k + 1]])
            if hi > lo:
                emb = embeddings_to_numpy(pq.read_table(p, columns=[embedding_column], filters=filters)[embedding_column])
                sample[order[lo:hi]] = emb[spos[lo:hi] - bounds[k]]
    index, prov = train_index(factory, dim, sample, seed=seed, normalize=normalize)
    if prov["train"] is not None:
        prov["train"].update(of=int(len(ids)), ids_sha256=hashlib.sha256(np.sort(ids[pos]).tobytes()).hexdigest())
    del sample
    for p, part_ids in zip(paths, id_parts):
        if len(part_ids):
            emb = embeddings_to_numpy(pq.read_table(p, columns=[embedding_column], filters=filters)[embedding_column])
            add_vectors(index, emb, part_ids, normalize=normalize)
    if search_params:
        set_search_params(index, **search_params)
    prov["search_params"] = dict(search_params or {})
    prov["shards"] = len(paths)
    return index, prov
