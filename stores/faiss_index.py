"""Faiss indexes on disk, each with a JSON provenance sidecar naming the encoder.

Cosine similarity = inner product on L2-normalised vectors; ids are the store's int64 keys
(attr_id, class_id, image_id), so a hit joins straight back to DuckDB.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np

from .errors import StoreError
from .files import atomic_write, write_text


def build_flat_ip(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(vectors):
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def ids_digest(ids) -> str:
    """A short fingerprint of a set of int64 ids (order-free): what an index was built from."""
    arr = np.unique(np.asarray(ids, dtype=np.int64)).astype("<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()[:32]


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def write_index(index: faiss.Index, path: str | Path, provenance: dict) -> None:
    """Write an index and its sidecar: ``provenance`` plus ntotal, dim, the file's bytes and
    ``ids_sha256`` (:func:`ids_digest` of its ids), which ``pipeline verify`` checks cheaply."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # the faiss/ folder belongs to the store
    with atomic_write(path) as tmp:
        faiss.write_index(index, str(tmp))
        size = tmp.stat().st_size
    ids = index_ids(index)
    side = {**provenance, "ntotal": int(index.ntotal), "dim": int(index.d), "bytes": int(size), "ids_sha256": ids_digest(ids)}
    write_text(sidecar_path(path), json.dumps(side, indent=2, sort_keys=True))


def read_sidecar(path: str | Path) -> dict:
    """An index's provenance sidecar ({} when there is none); a damaged one is a StoreError."""
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{side}: unreadable Faiss sidecar ({type(exc).__name__}); run `pipeline verify`.") from None
    if not isinstance(data, dict):
        raise StoreError(f"{side}: not a Faiss sidecar (a JSON object); run `pipeline verify`.")
    return data


def read_index(path: str | Path, model: str | None = None) -> tuple[faiss.Index, dict]:
    """Load an index; refuse it when it was built with another encoder than ``model``.

    A damaged index or sidecar is a one-line StoreError naming the file."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"No Faiss index at {path}; run the stage that builds it first.")
    provenance = read_sidecar(path)
    if model is not None and provenance.get("model") not in (None, model):
        raise StoreError(f"{path.name} was built with {provenance.get('model')}, not {model}; rebuild it.")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise StoreError(f"{path}: unreadable Faiss index ({' '.join(why.split())[:200]}); run `pipeline verify`.") from None
    if "bytes" in provenance and provenance["bytes"] != path.stat().st_size:
        raise StoreError(f"{path}: {path.stat().st_size} bytes, its sidecar says {provenance['bytes']} (damaged or "
                         "replaced); run `pipeline verify`.")
    return index, provenance


def index_ids(index: faiss.Index) -> np.ndarray:
    """The int64 ids an index returns, in storage order, whatever its type: an ``IndexIDMap``/
    ``IndexIDMap2`` (Flat, HNSW, PQ, ...; :mod:`stores.faiss_factory`) or an IVF index that keeps
    the ids in its inverted lists (``IVF...``, also behind a transform such as ``OPQ``)."""
    index = faiss.downcast_index(index)
    if not index.ntotal:
        return np.zeros(0, np.int64)
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return np.arange(index.ntotal, dtype=np.int64)  # a bare index: ids are positions
    invlists = ivf.invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(ivf.nlist) if invlists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def is_flat(index: faiss.Index) -> bool:
    """True for ``IndexIDMap2(IndexFlat)``: the one type whose stored vectors are exact (readable
    back with :func:`index_vectors`)."""
    index = faiss.downcast_index(index)
    return hasattr(index, "id_map") and isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def index_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) of an IndexIDMap2(Flat)."""
    n = index.ntotal
    ids = faiss.vector_to_array(index.id_map).astype(np.int64) if n else np.zeros(0, np.int64)
    # reconstruct_n on the id map takes ids, not positions: read the inner flat index instead
    inner = faiss.downcast_index(index.index)
    vecs = inner.reconstruct_n(0, n) if n else np.zeros((0, index.d), np.float32)
    return ids, np.asarray(vecs, dtype=np.float32)
