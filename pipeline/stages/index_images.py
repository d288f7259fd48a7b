"""Stage 2: encode each image's regions once and stream them into Parquet shards.

One path, two engines. The work on images is the pure batch function of
:mod:`pipeline.stages.region_batches` (paths in, region rows out: decode, boxes, encode with
chunks padded to >= 8 rows so a row never depends on its batch); the rows go through one writer,
:func:`store_rows` (:class:`stores.shards.ShardWriter`: a shard pair every ``shard_size`` images,
committed by its record). ``index_images`` runs the batch function here, decoding in DataLoader
worker processes (``workers``); ``pipeline.engines.ray_engine.index_images_ray`` runs it on a
Ray cluster. Same files in, same store out; a killed run of either resumes at the images that
no committed shard holds (images are skipped by content hash).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch.utils.data import DataLoader

from queries.regions import region_boxes
from stores import indexes, tables
from stores.catalog import Catalog
from stores.faiss_factory import FactoryIndexError, train_plan
from stores.shards import IndexedImage, ShardWriter

from ..config import RegionConfig
from ..dense import check_specs
from ..errors import InputError
from ..imaging import ImageItem, discover_images
from ..inputs import DEFAULT_MAX_IMAGE_BYTES
from ..names import escape_controls
from .attributes import claim_model
from .region_batches import (  # noqa: F401  (RegionDataset, encode_*: re-exported for callers)
    RegionBatchFn,
    RegionDataset,
    encode_patch_tokens,
    encode_records,
    patch_grid_size,
    records_from_rows,
)


@dataclass
class IndexReport:
    seen: int = 0
    indexed: int = 0
    skipped: int = 0  # already in the store (same content)
    failed: int = 0
    regions: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: (path, label, path kept, label kept): the same bytes under another label, kept once
    label_conflicts: list[tuple[str, str, str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = self.indexed / self.seconds if self.seconds else 0.0
        out = [
            f"{self.indexed} images indexed ({self.regions} regions), {self.skipped} already in the store, "
            f"{self.failed} failed, {self.seconds:.1f} s ({rate:.1f} images/s)"
        ]
        out += [f"  failed: {escape_controls(p)}: {r}" for p, r in self.errors[:10]]
        if self.label_conflicts:
            out.append(f"{len(self.label_conflicts)} files have the same content as an image with another label; "
                       "each content is indexed once, under its first label:")
            out += [f"  {escape_controls(p)} (label {escape_controls(a)}) = {escape_controls(q)} (kept as "
                    f"{escape_controls(b)})" for p, a, q, b in self.label_conflicts[:10]]
        return out


def _identity(x):
    return x


@dataclass
class IndexRun:
    """What an index run needs before any image is read (the same for both engines)."""

    run_id: int
    items: list[ImageItem]
    known: set[str]
    params: dict


def start_index_run(cat: Catalog, model, inputs: list[str], cfg: RegionConfig, *, preset: str | None, batch_size: int,
                    dtype: str, max_images: int | None, faiss_index: str | None, engine: dict,
                    dataset=None) -> IndexRun:
    """List the inputs (or take ``dataset``'s images: :class:`pipeline.datasets.DatasetImages`),
    claim the model, check ``--regions`` and ``--faiss-index`` before any work, and record the
    index run (``index_runs.params``: settings, engine, Faiss factory, the dataset and its class names)."""
    items = (dataset.items if dataset is not None else discover_images(inputs))[:max_images]
    claim_model(cat, model)
    if cfg.source == "patches" and not patch_grid_size(model):
        raise InputError(f"--regions patches needs a ViT; {model.name} has no patch tokens.")
    if cfg.source == "patches" and (cfg.dense != "plain" or cfg.layers):
        try:
            check_specs(model, cfg.dense_specs())
        except (ValueError, NotImplementedError) as exc:
            raise InputError(f"--dense {cfg.dense} --layers {','.join(map(str, cfg.layers)) or '-1'}: {exc}") from None
    known = tables.known_image_hashes(cat)
    if faiss_index is not None:
        check_faiss_index(faiss_index, model, cfg, images_at_most=len(known) + len(items),
                          regions_at_most=tables.region_count(cat, exclude_kind="full")
                          + len(items) * regions_per_image(model, cfg))
    run_id = tables.next_index_run_id(cat)
    params = {"preset": preset, "regions": cfg.to_dict(), "model": model.describe(), "batch_size": batch_size,
              "dtype": dtype, "inputs": inputs, "engine": engine, "faiss_index": faiss_index}
    if dataset is not None:
        params["dataset"] = dataset.describe()
    tables.insert_index_run(cat, run_id, params, model.fingerprint)
    return IndexRun(run_id, items, known, params)


def index_images(
    cat: Catalog,
    model,
    inputs: list[str],
    cfg: RegionConfig = RegionConfig(),
    *,
    preset: str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    shard_size: int = 256,
    dtype: str = "float16",
    progress: bool = True,
    max_images: int | None = None,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    faiss_index: str | None = None,
    dataset=None,
) -> IndexReport:
    """Index images into the store; images already there (same content) are skipped.

    The resolved settings (``cfg``, the ``preset`` they came from, batch size, dtype, the
    engine, ``faiss_index``) are stored in ``index_runs.params``; a later ``classify`` uses the
    preset's method values. Files over ``max_image_bytes`` are recorded in ``image_errors``
    without being read. ``faiss_index``: a Faiss factory string for faiss/images.index and
    faiss/regions.index (None keeps what the store has: ``Flat`` images.index, no regions.index).
    ``dataset``: a dataset read from its published layout (:func:`pipeline.datasets.read_dataset`),
    indexed instead of ``inputs`` and recorded with its class names.
    """
    # heavy: imported on use
    from tqdm import tqdm

    run = start_index_run(cat, model, inputs, cfg, preset=preset, batch_size=batch_size, dtype=dtype,
                          max_images=max_images, faiss_index=faiss_index, engine={"name": "local", "workers": workers},
                          dataset=dataset)
    t0 = time.perf_counter()
    fn = RegionBatchFn(model, cfg, dtype=dtype, batch_size=batch_size, known_sha=run.known,
                       max_image_bytes=max_image_bytes)
    loader = DataLoader(fn.dataset(run.items), batch_size=None, num_workers=workers, collate_fn=_identity,
                        prefetch_factor=4 if workers else None, persistent_workers=False)

    def row_batches():
        """Decoded images gathered until they hold ``batch_size`` regions, then encoded (rows)."""
        pending, n_regions, in_run = [], 0, set()
        for rec in loader:
            if "error" not in rec and not rec.get("skip"):
                if rec["sha"] in in_run:  # the same bytes twice in one run: encoded once
                    rec = {"item": rec["item"], "sha": rec["sha"], "skip": True}
                else:
                    in_run.add(rec["sha"])
                    n_regions += len(rec["pixels"])
            pending.append(rec)
            if n_regions >= batch_size:
                yield fn.encode(pending)
                pending, n_regions = [], 0
        if pending:
            yield fn.encode(pending)

    bar = tqdm(total=len(run.items), desc="index images", unit="img", disable=not progress)
    try:
        report = store_rows(cat, run.run_id, model.fingerprint, row_batches(), dtype=dtype, shard_size=shard_size,
                            progress=bar.update)
    finally:
        bar.close()
    finish_index_run(cat, model.fingerprint, report, faiss_index, cfg.seed)
    report.seconds = time.perf_counter() - t0
    return report


def store_rows(cat: Catalog, run_id: int, model: str, row_batches, *, dtype: str = "float16", shard_size: int = 256,
               report: IndexReport | None = None, progress=None) -> IndexReport:
    """The one writer of both engines: region-row batches (in input order,
    :mod:`pipeline.stages.region_batches`) -> shard pairs of ``shard_size`` images
    (:class:`stores.shards.ShardWriter`: named ``part-RUN-SEQ``, committed by their records),
    ``image_errors`` for files that failed, in-run duplicates of the same bytes skipped, and the
    failures of files now indexed forgotten. ``progress``: called with 1 per image."""
    report = report or IndexReport()
    writer = ShardWriter(cat, run_id, model, dtype, shard_size)
    in_run: dict[str, tuple[str, str | None]] = {}  # sha -> (path, label) indexed by this run
    skipped: list[tuple[str, str, str | None]] = []  # (sha, path, label) of content kept elsewhere
    ok_paths: list[str] = []  # indexed or already in the store: earlier failures of these paths are void
    for rows in row_batches:
        for rec in records_from_rows(rows):
            report.seen += 1
            if progress is not None:
                progress(1)
            item = rec["item"]
            if "error" in rec:
                report.failed += 1
                report.errors.append((item.path, rec["error"]))
                tables.insert_image_error(cat, item.path, rec.get("sha"), rec["error"], run_id)
                continue
            ok_paths.append(item.path)
            if rec.get("skip") or rec["sha"] in in_run:
                report.skipped += 1
                skipped.append((rec["sha"], item.path, item.label))
                continue
            in_run[rec["sha"]] = (item.path, item.label)
            writer.add(IndexedImage(rec["sha"], item.path, item.label, *rec["size"], rec["kinds"], rec["boxes"],
                                    rec["emb"]))
            report.indexed += 1
            report.regions += len(rec["emb"])
    writer.flush()
    tables.clear_image_errors(cat, ok_paths)
    report.label_conflicts = _label_conflicts(cat, skipped, in_run)
    return report


def _label_conflicts(cat: Catalog, skipped, in_run: dict) -> list[tuple[str, str, str, str]]:
    """Skipped files whose label differs from the label their content is kept under."""
    labelled = [s for s in skipped if s[2] is not None]
    if not labelled:
        return []
    kept = {**tables.labels_by_hash(cat, [s[0] for s in labelled if s[0] not in in_run]), **in_run}
    return [(path, label, *kept[sha]) for sha, path, label in labelled
            if sha in kept and kept[sha][1] is not None and kept[sha][1] != label]


def finish_index_run(cat: Catalog, model: str, report: IndexReport, faiss_index: str | None, seed: int = 0) -> None:
    """Views over the new shards, then the search indexes: faiss/images.index (and
    faiss/regions.index when asked for or already there) with ``faiss_index`` or the type they
    were built with. A factory that cannot be trained on what is there stops with one line that
    says the images were indexed; the indexes are then rebuilt with their previous type."""
    cat.refresh_views()
    if faiss_index is None:
        indexes.rebuild_image_index(cat, model)
        return
    try:
        indexes.rebuild_image_index(cat, model, faiss_index, seed=seed)
        indexes.rebuild_region_index(cat, model, faiss_index, seed=seed)
    except FactoryIndexError as exc:
        indexes.rebuild_image_index(cat, model)  # the images just indexed, in the index type kept so far
        raise FactoryIndexError(f"{report.indexed} images indexed, but --faiss-index {faiss_index}: {exc} "
                                "The indexes keep their previous type.") from None


def regions_per_image(model, cfg: RegionConfig) -> int:
    """Regions besides the full view that ``cfg`` cuts from every image."""
    pg = patch_grid_size(model) if cfg.source == "patches" else 0
    return len(region_boxes(64, 64, "0" * 64, patch_grid=pg, **cfg.geometry())[0]) - 1


def check_faiss_index(factory: str, model, cfg: RegionConfig, *, images_at_most: int, regions_at_most: int) -> None:
    """Refuse, before any image is read, a factory string Faiss cannot build at the model's
    dimension, or one that needs more training vectors than the store can hold after this run
    (one line, :class:`stores.faiss_factory.FactoryIndexError`)."""
    plan = train_plan(factory, model.embed_dim)
    for what, n in (("images (faiss/images.index)", images_at_most), ("regions (faiss/regions.index)", regions_at_most)):
        if plan.needs_training and n < plan.minimum:
            raise FactoryIndexError(
                f"--faiss-index {factory} needs at least {plan.minimum:,} vectors to train ({plan.what}); this store "
                f"will hold at most {n:,} {what}: use Flat or HNSW32, or a smaller IVF (nlist <= n / 39).")


def rebuild_image_index(cat: Catalog, model: str) -> None:
    """Global (full-image) embeddings of every indexed image -> faiss/images.index (:mod:`stores.indexes`)."""
    indexes.rebuild_image_index(cat, model)
