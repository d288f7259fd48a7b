"""Faiss indexes on disk, each with a JSON provenance sidecar naming the encoder.

Cosine similarity = inner product on L2-normalised vectors; ids are the store's int64 keys
(attr_id, class_id, image_id), so a hit joins straight back to DuckDB.
"""
from __future__ import annotations

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


def write_index(index: faiss.Index, path: str | Path, provenance: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # the faiss/ folder belongs to the store
    with atomic_write(path) as tmp:
        faiss.write_index(index, str(tmp))
    side = path.with_suffix(".json")
    write_text(side, json.dumps({**provenance, "ntotal": int(index.ntotal), "dim": int(index.d)}, indent=2, sort_keys=True))


def read_index(path: str | Path, model: str | None = None) -> tuple[faiss.Index, dict]:
    """Load an index; refuse it when it was built with another encoder than ``model``."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"No Faiss index at {path}; run the stage that builds it first.")
    side = path.with_suffix(".json")
    provenance = json.loads(side.read_text()) if side.exists() else {}
    if model is not None and provenance.get("model") not in (None, model):
        raise StoreError(f"{path.name} was built with {provenance.get('model')}, not {model}; rebuild it.")
    return faiss.read_index(str(path)), provenance


def index_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) of an IndexIDMap2(Flat)."""
    n = index.ntotal
    ids = faiss.vector_to_array(index.id_map).astype(np.int64) if n else np.zeros(0, np.int64)
    # reconstruct_n on the id map takes ids, not positions: read the inner flat index instead
    inner = faiss.downcast_index(index.index)
    vecs = inner.reconstruct_n(0, n) if n else np.zeros((0, index.d), np.float32)
    return ids, np.asarray(vecs, dtype=np.float32)
