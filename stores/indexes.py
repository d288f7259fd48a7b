"""The store's Faiss indexes, rebuilt from what DuckDB and the Parquet shards hold.

Every index is derived data: ``faiss/attributes.index`` (the prototype attributes: the
descriptors, else the CuPL sentences), ``faiss/class_prototypes.index`` (the normalised mean
of each class's prototype attributes, :func:`queries.shortlist.class_prototypes`) and
``faiss/images.index`` (each image's full view). The stages rebuild them after they write, and
``pipeline verify --repair`` rebuilds them when they disagree with the tables, so the
definitions live here, once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from queries.shortlist import class_prototypes

from . import tables
from .catalog import Catalog
from .errors import StoreError
from .faiss_index import build_flat_ip, ids_digest, write_index

INDEX_FILES = {"attributes": "attributes.index", "class_prototypes": "class_prototypes.index", "images": "images.index"}


def index_path(cat: Catalog, which: str) -> Path:
    return cat.root / "faiss" / INDEX_FILES[which]


def prototype_style(cat: Catalog, model: str) -> str | None:
    """The style class prototypes are made of: descriptors when any is encoded, else None (all)."""
    n = cat.con.execute(
        "SELECT count(*) FROM attributes a JOIN attribute_embeddings e USING (attr_id) WHERE e.model = ? "
        "AND a.style = 'descriptors'", [model]).fetchone()[0]
    return "descriptors" if n else None


def prototype_attributes(cat: Catalog, model: str) -> tables.TextMatrix:
    """The attributes the class prototypes are made of: descriptors, else CuPL sentences."""
    return tables.attribute_matrix(cat, model, style=prototype_style(cat, model))


def prototype_attribute_ids(cat: Catalog, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(attr_ids, class_ids) of :func:`prototype_attributes` without reading embeddings (cheap)."""
    style = prototype_style(cat, model)
    rows = cat.con.execute(
        "SELECT a.attr_id, a.class_id FROM attributes a JOIN attribute_embeddings e USING (attr_id) WHERE e.model = ?"
        + (" AND a.style = ?" if style else "") + " ORDER BY a.attr_id", [model, style] if style else [model]).fetchall()
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64)


def expected_prototypes(attrs: tables.TextMatrix) -> tuple[np.ndarray, np.ndarray]:
    """(class_ids, prototype vectors) of a prototype attribute matrix."""
    classes = np.unique(attrs.class_ids)
    if len(classes) == 0:
        return classes, np.zeros((0, attrs.embeddings.shape[1] if attrs.embeddings.ndim == 2 else 0), np.float32)
    return classes, class_prototypes(attrs.embeddings, np.searchsorted(classes, attrs.class_ids), len(classes))


def rebuild_attribute_indexes(cat: Catalog, model: str) -> None:
    """faiss/attributes.index (the prototype attributes) and faiss/class_prototypes.index.

    The sidecars record ``source_ids_sha256``: the digest of the attribute ids they were built
    from, which the quick check compares with the tables."""
    attrs = prototype_attributes(cat, model)
    if len(attrs) == 0:
        raise StoreError("No attribute embeddings to index; import or generate attributes first.")
    prov = {"model": model, "metric": "inner_product", "normalised": True, "source_ids_sha256": ids_digest(attrs.ids),
            "source_rows": len(attrs)}
    write_index(build_flat_ip(attrs.embeddings, attrs.ids), index_path(cat, "attributes"), {**prov, "ids": "attr_id"})
    classes, proto = expected_prototypes(attrs)
    write_index(build_flat_ip(proto, classes), index_path(cat, "class_prototypes"), {**prov, "ids": "class_id"})


def rebuild_image_index(cat: Catalog, model: str) -> None:
    """Global (full-image) embeddings of every indexed image -> faiss/images.index.

    With no image left (every image removed) the index is written empty, never left stale."""
    ids, emb = tables.full_view_embeddings(cat)
    path = index_path(cat, "images")
    if len(ids) == 0:
        if not path.exists():
            return
        rec = cat.model_record() or {}
        dim = int(rec.get("embed_dim") or 0) or int(_index_dim(path))
        emb = np.zeros((0, dim), np.float32)
    write_index(build_flat_ip(emb, ids), path, {"model": model, "ids": "image_id"})


def _index_dim(path: Path) -> int:
    from .faiss_index import read_sidecar

    try:
        return int(read_sidecar(path).get("dim") or 1)
    except StoreError:
        return 1
