"""The store's Faiss indexes, rebuilt from what DuckDB and the Parquet shards hold.

Every index is derived data: ``faiss/attributes.index`` (the prototype attributes: the
descriptors, else the CuPL sentences), ``faiss/class_prototypes.index`` (the normalised mean
of each class's prototype attributes, :func:`queries.shortlist.class_prototypes`),
``faiss/images.index`` (each image's full view) and, once ``index-images --faiss-index FACTORY``
asked for it, ``faiss/regions.index`` (every region but the full views). The stages rebuild them
after they write, and ``pipeline verify --repair`` rebuilds them when they disagree with the
tables, so the definitions live here, once.

The images and regions indexes may be any Faiss factory type (``Flat``, ``HNSW32``,
``IVF4096,PQ64``: :mod:`stores.faiss_factory`); the sidecar records the factory string and the
training sample, and a rebuild without a new ``factory`` keeps the recorded one. The
attribute and prototype indexes are always ``Flat`` (small, and read back exactly).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import tables
from .errors import StoreError
from .faiss_factory import FactoryIndexError, build_factory_index, build_from_shards
from .faiss_index import build_flat_ip, ids_digest, read_sidecar, write_index

if TYPE_CHECKING:  # the type only: stores.catalog imports this module (to recover) at run time
    from .catalog import Catalog

INDEX_FILES = {"attributes": "attributes.index", "class_prototypes": "class_prototypes.index", "images": "images.index",
               "regions": "regions.index"}
DEFAULT_FACTORY = "Flat"


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
    # heavy: imported on use (queries.shortlist is torch math; `verify --quick` never needs it)
    from queries.shortlist import class_prototypes

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


def recorded_factory(cat: Catalog, which: str) -> tuple[str | None, int]:
    """(factory string, training seed) an index was built for (its sidecar: ``wanted`` when a
    rebuild had to fall back to ``Flat``, else ``factory``); (None, 0) when it does not exist,
    (``Flat``, 0) when its sidecar is damaged or predates factory indexes."""
    path = index_path(cat, which)
    if not path.exists():
        return None, 0
    try:
        side = read_sidecar(path)
    except StoreError:
        return DEFAULT_FACTORY, 0  # a damaged sidecar: rebuild as the default type
    train = side.get("train") if isinstance(side.get("train"), dict) else {}
    return str(side.get("wanted") or side.get("factory") or DEFAULT_FACTORY), int(side.get("seed", train.get("seed", 0)) or 0)


def rebuild_image_index(cat: Catalog, model: str, factory: str | None = None, *, seed: int | None = None) -> None:
    """Global (full-image) embeddings of every indexed image -> faiss/images.index, and
    faiss/regions.index when the store has one (:func:`rebuild_region_index`).

    ``factory`` None keeps the type (and training seed) the index was built for (``Flat`` for a
    new one); regions.index keeps its own. A factory given here that cannot be built or trained
    on the vectors there are raises :class:`stores.faiss_factory.FactoryIndexError` (one line)
    and leaves the files as they were; a kept one that no longer can (images were removed) is
    built as ``Flat`` with ``wanted`` and ``why`` in the sidecar, and tried again next time. With
    no image left the index is written empty, never left stale."""
    ids, emb = tables.full_view_embeddings(cat)
    _write_search_index(cat, "images", model, factory, seed, lambda f, s: _build(emb, ids, f, s), len(ids))
    if factory is None and index_path(cat, "regions").exists():
        rebuild_region_index(cat, model)


def rebuild_region_index(cat: Catalog, model: str, factory: str | None = None, *, seed: int | None = None) -> None:
    """Every region but the full views -> faiss/regions.index (keyed by ``region_id``), built
    shard by shard (:func:`stores.faiss_factory.build_from_shards`: ids first, then the seeded
    training sample, then the vectors), so the regions never sit in memory at once. ``factory``
    as in :func:`rebuild_image_index`."""
    bad = set(cat.unreadable_shards)
    shards = [p for p in cat.committed_shard_files("regions") if p not in bad]
    crops = [("kind", "!=", "full")]

    def build(f, s):
        return build_from_shards(shards, f, id_column="region_id", filters=crops, seed=s, normalize=False)

    _write_search_index(cat, "regions", model, factory, seed, build, len(shards),
                        extra={"regions": "every kind but full"})


def _build(vectors: np.ndarray, ids: np.ndarray, factory: str, seed: int):
    """(index, provenance): ``Flat`` is exactly :func:`build_flat_ip` (the stored float16 values,
    not re-normalised), any other factory string goes through :mod:`stores.faiss_factory`."""
    if factory == DEFAULT_FACTORY:
        return build_flat_ip(vectors, ids), {"factory": DEFAULT_FACTORY}

    return build_factory_index(vectors, ids, factory, seed=seed, normalize=False)


def _write_search_index(cat: Catalog, which: str, model: str, factory: str | None, seed: int | None, build,
                        n_sources: int, extra: dict | None = None) -> None:
    path = index_path(cat, which)
    had, had_seed = recorded_factory(cat, which)
    explicit = factory is not None
    factory = factory or had or DEFAULT_FACTORY
    seed = (seed if seed is not None else (had_seed if not explicit else 0))
    key = {"images": "image_id", "regions": "region_id"}[which]
    prov = {"model": model, "ids": key, **(extra or {})}
    if n_sources == 0:
        if not path.exists() and not explicit:
            return
        rec = cat.model_record() or {}
        dim = int(rec.get("embed_dim") or 0) or int(_index_dim(path))
        empty = build_flat_ip(np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
        fallback = {} if factory == DEFAULT_FACTORY else {"wanted": factory, "seed": seed, "why": "no vectors"}
        write_index(empty, path, {**prov, "factory": DEFAULT_FACTORY, **fallback})
        return
    try:
        index, built = build(factory, seed)
        fallback = {}
    except FactoryIndexError as exc:
        if explicit or factory == DEFAULT_FACTORY:
            raise
        index, built = build(DEFAULT_FACTORY, seed)  # kept type, too few vectors left: Flat until there are
        fallback = {"wanted": factory, "seed": seed, "why": str(exc)}
    write_index(index, path, {**built, **prov, **fallback})


def _index_dim(path: Path) -> int:
    try:
        return int(read_sidecar(path).get("dim") or 1)
    except StoreError:
        return 1
