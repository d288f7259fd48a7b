"""``--engine ray``: the stages' pure batch functions on Ray Data.

Ray is optional (``pip install 'zsl-pipeline[ray]'``); nothing here imports it at module load,
and :func:`require_ray` turns its absence into one line saying how to install it.

* :func:`map_batches_ordered` wraps a callable class (model loaded once per actor in
  ``__init__``, batches mapped in ``__call__``) in ``Dataset.map_batches`` with a fixed-size
  actor pool (``ray.data.ActorPoolStrategy(size=N)``), GPU actors when the cluster has GPUs,
  and yields the output batches on the driver in input order
  (``DataContext.execution_options.preserve_order``).
* :func:`index_images_ray` is :func:`pipeline.stages.index_images.index_images` on that engine:
  actors run :class:`pipeline.engines.region_batches.RegionBatchFn` (paths -> region rows) and the
  driver streams the rows, in input order, through the local stage's writer
  (:func:`pipeline.stages.index_images.store_rows`): same shards, same records, same resume
  rule (images already in the store are skipped by content hash; a killed run leaves only
  committed shard pairs, and the next run skips their images).
* :func:`classify_ray` is :func:`pipeline.stages.classify.classify` on that engine: one input row
  per regions shard; actors read their shard and run
  :func:`pipeline.stages.classify.score_region_batch` (rows out, no store access); the driver
  writes the run, its predictions and alignments in one transaction.

What runs where: the driver (where ``pipeline`` is started) lists inputs, owns the DuckDB
catalog (one writer) and writes shards and rows; actors read, decode, crop and encode images
(index) or read shards and score them (classify). Every node must see the image paths, the
store's shards and the model weights at the same paths (shared storage).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

from ..errors import InputError

RAY_HELP = ("Ray is not installed; --engine ray needs it: pip install 'zsl-pipeline[ray]' "
            "(or pip install 'ray[data]>=2.9' beside this package).")


class RayNotInstalled(InputError):
    """``--engine ray`` without Ray; the message says how to install it."""


def require_ray():
    """Import ray and ray.data, or raise :class:`RayNotInstalled` with the one-line install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:  # ray missing, or ray without the [data] extra
        raise RayNotInstalled(RAY_HELP) from exc
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True):
    """``ray.init`` once per process: ``address="auto"`` (or ``ray://...``, ``HOST:PORT``) joins an
    existing cluster; None starts a local one (``num_cpus`` CPUs). Already connected: reused."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "include_dashboard": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if quiet:
            import logging

            kwargs.update(log_to_driver=False, logging_level="error")
            for name in ("ray", "ray.data"):  # Ray Data's INFO/WARNING lines (progress, auth token notes)
                logging.getLogger(name).setLevel(logging.ERROR)
        # actors import this project: make the driver's source visible to them (local clusters;
        # on a real cluster every node has the package installed, docs/scale.md)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        kwargs["runtime_env"] = {"env_vars": env}
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise InputError(f"--address {address}: no Ray cluster there ({' '.join(str(exc).split())[:200]}); "
                             "start one (`ray start --head`) or drop --address for a local one.") from None
    return ray


def plan_actors(resources: dict, *, concurrency: int | None = None, num_gpus: float | None = None,
                actors_per_gpu: int = 1, cpus_per_actor: float = 1.0) -> dict:
    """How many actors and what each reserves, from ``ray.cluster_resources()``.

    GPUs present (and ``num_gpus`` not 0): ``actors_per_gpu`` actors per GPU, each reserving
    ``1 / actors_per_gpu`` GPU and ``cpus_per_actor`` CPUs, device ``cuda``. Otherwise CPU
    actors: one per ``cpus_per_actor`` CPUs, one CPU left to Ray Data's own tasks (at least one actor).
    """
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if num_gpus is None:
        num_gpus = 1.0 / actors_per_gpu if gpus >= 1 else 0.0
    if num_gpus > 0:
        n = concurrency or max(1, int(gpus / num_gpus))
        return {"concurrency": n, "num_gpus": num_gpus, "num_cpus": cpus_per_actor, "device": "cuda"}
    n = concurrency or max(1, int((cpus - 1) // cpus_per_actor))
    return {"concurrency": n, "num_gpus": 0, "num_cpus": cpus_per_actor, "device": "cpu"}


def map_batches_ordered(fn_cls, rows: list[dict], *, fn_constructor_kwargs: dict | None = None, batch_size: int = 16,
                        concurrency: int = 1, num_gpus: float = 0, num_cpus: float = 1.0, progress: bool = False,
                        batch_format: str = "pyarrow") -> Iterator[dict]:
    """Map ``rows`` (e.g. ``{"path", "label"}`` dicts) through ``fn_cls`` on a Ray actor pool.

    ``fn_cls(**fn_constructor_kwargs)`` is built once per actor; its ``__call__`` gets batches
    of ``batch_size`` input rows as ``batch_format`` and returns a dict of numpy arrays (any
    number of rows). Yields the output batches as dicts of numpy arrays, in input order.
    Closing the generator (or an error on the driver) stops the pipeline and frees its actors.
    """
    ray = connect()
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    kwargs: dict[str, Any] = dict(fn_constructor_kwargs=fn_constructor_kwargs or {}, batch_size=batch_size,
                                  batch_format=batch_format, compute=ray.data.ActorPoolStrategy(size=concurrency),
                                  num_cpus=num_cpus)
    if num_gpus:
        kwargs["num_gpus"] = num_gpus
    it = ds.map_batches(fn_cls, **kwargs).iter_batches(batch_size=None, batch_format="numpy")
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def engine_params(address: str | None, plan: dict, **extra) -> dict:
    """What ``index_runs.params`` / ``runs.params`` record about a Ray run."""
    import ray

    return {"name": "ray", "address": address, "ray": ray.__version__, **plan, **extra}


def index_images_ray(cat, model, inputs: list[str], cfg=None, *, preset: str | None = None, address: str | None = None,
                     concurrency: int | None = None, num_gpus: float | None = None, actors_per_gpu: int = 1,
                     batch_images: int = 16, batch_size: int = 256, shard_size: int = 256, dtype: str = "float16",
                     precision: str | None = None, progress: bool = False, max_images: int | None = None,
                     max_image_bytes: int | None = None, faiss_index: str | None = None):
    """:func:`pipeline.stages.index_images.index_images` on a Ray cluster: same store, same report.

    ``model``: the driver's loaded model (fingerprint, provenance); each actor loads
    ``model.name``/``model.pretrained`` itself on its own device and must get the same
    fingerprint. ``batch_images``: images per Ray batch (what one actor call decodes and encodes)."""
    from ..config import RegionConfig
    from ..inputs import DEFAULT_MAX_IMAGE_BYTES
    from ..stages.index_images import IndexReport, finish_index_run, start_index_run, store_rows
    from .region_batches import ModelSpec, RegionBatchFn

    ray = connect(address)
    cfg = cfg or RegionConfig()
    plan = plan_actors(ray.cluster_resources(), concurrency=concurrency, num_gpus=num_gpus, actors_per_gpu=actors_per_gpu)
    run = start_index_run(cat, model, inputs, cfg, preset=preset, batch_size=batch_size, dtype=dtype,
                          max_images=max_images, faiss_index=faiss_index,
                          engine=engine_params(address, plan, batch_images=batch_images))
    t0 = time.perf_counter()
    spec = ModelSpec(model.name, model.pretrained, device=plan["device"], precision=precision,
                     fingerprint=model.fingerprint)
    batches = map_batches_ordered(
        RegionBatchFn, [{"path": it.path, "label": it.label or ""} for it in run.items],
        fn_constructor_kwargs=dict(model=spec, cfg=cfg.to_dict(), dtype=dtype, batch_size=batch_size,
                                   known_sha=run.known, max_image_bytes=max_image_bytes or DEFAULT_MAX_IMAGE_BYTES),
        batch_size=batch_images, concurrency=plan["concurrency"], num_gpus=plan["num_gpus"], num_cpus=plan["num_cpus"],
        progress=progress,
    )
    report = IndexReport()
    try:
        store_rows(cat, run.run_id, model.fingerprint, batches, dtype=dtype, shard_size=shard_size, report=report)
    finally:
        batches.close()
    finish_index_run(cat, model.fingerprint, report, faiss_index, cfg.seed)
    report.seconds = time.perf_counter() - t0
    return report


class ShardScorer:
    """Ray actor class of ``classify --engine ray``: holds the method's texts (built once per
    actor), maps batches of ``{"path", "seq"}`` rows (regions shards) to scored rows."""

    def __init__(self, context: dict, image_ids=None, threads: int | None = None):
        from ..stages.classify import ScoreContext

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.ctx = ScoreContext.from_dict(context)
        self.image_ids = None if image_ids is None else list(image_ids)

    def __call__(self, batch) -> dict:
        import numpy as np

        from ..stages.classify import score_shard

        rows = batch.to_pylist()  # a pyarrow batch (map_batches_ordered's format) of {"path", "seq", "positions"}
        out = [score_shard(self.ctx, r["path"], self.image_ids,
                           np.asarray(r["positions"], np.int64) if r.get("positions") else None) for r in rows]
        return {"seq": np.asarray([r["seq"] for r in rows], np.int64),
                "rows": np.array([o.to_bytes() for o in out], dtype=object),
                "images": np.array([o.images for o in out], np.int64)}


def classify_ray(cat, method: str, config=None, *, model=None, image_ids=None, provenance: dict | None = None,
                 address: str | None = None, concurrency: int | None = None, progress: bool = False):
    """:func:`pipeline.stages.classify.classify` on a Ray cluster: same run, same rows.

    Texts are read (and class prompts encoded, when a method needs them) on the driver; each
    actor gets them once and scores whole regions shards (a shard holds whole images); the
    driver writes the run and every row in one transaction, so a killed run leaves nothing."""
    from ..config import MethodConfig
    from ..methods import get_method
    from ..stages.classify import ScoredRows, prepare_run, write_contrasts, write_scored

    if get_method(method).stage is not None:
        raise InputError(f"--method {method} runs on the local engine only; drop --engine ray for it.")
    ray = connect(address)
    plan = plan_actors(ray.cluster_resources(), concurrency=concurrency, num_gpus=0)
    run = prepare_run(cat, method, config or MethodConfig(), model=model, image_ids=image_ids, provenance=provenance,
                      engine=engine_params(address, plan))
    t0 = time.perf_counter()
    from stores import tables

    shards = tables.region_shard_plan(cat, image_ids)
    rows = [{"path": str(p), "seq": i, "positions": [] if pos is None else [int(x) for x in pos]}
            for i, (p, pos) in enumerate(shards)]
    out = map_batches_ordered(ShardScorer, rows, fn_constructor_kwargs=dict(context=run.context.to_dict(),
                                                                            image_ids=image_ids),
                              batch_size=1, concurrency=min(plan["concurrency"], max(1, len(rows))), num_cpus=1.0,
                              progress=progress)
    try:
        with cat.transaction():
            tables.insert_run(cat, tables.RunRecord(run.report.run_id, method, run.report.params, cat.model))
            for batch in out:
                for blob, n in zip(batch["rows"], batch["images"]):
                    write_scored(cat, ScoredRows.from_bytes(blob))
                    run.report.images += int(n)
            write_contrasts(cat, run.report, image_ids)
    finally:
        out.close()
    run.report.seconds = time.perf_counter() - t0
    return run.report
