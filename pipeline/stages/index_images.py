"""Stage 2: encode each image's regions once and stream them into Parquet shards.

Decoding and cropping run in DataLoader worker processes (``workers``) while the main
process encodes batches of regions gathered across images. Every ``shard_size`` images a
regions shard and then an images shard are written atomically; the images shard is the
commit marker, so a killed run resumes at the first image that has none.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from queries.regions import region_boxes
from stores import indexes, tables
from stores.catalog import Catalog
from stores.shards import IndexedImage, ShardWriter

from ..config import RegionConfig
from ..errors import InputError
from ..imaging import ImageItem, discover_images, open_image, read_image_file, region_image
from ..inputs import DEFAULT_MAX_IMAGE_BYTES
from ..names import escape_controls
from .attributes import claim_model


@dataclass
class IndexReport:
    seen: int = 0
    indexed: int = 0
    skipped: int = 0  # already in the store (same content)
    failed: int = 0
    regions: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = self.indexed / self.seconds if self.seconds else 0.0
        out = [
            f"{self.indexed} images indexed ({self.regions} regions), {self.skipped} already in the store, "
            f"{self.failed} failed, {self.seconds:.1f} s ({rate:.1f} images/s)"
        ]
        out += [f"  failed: {escape_controls(p)}: {r}" for p, r in self.errors[:10]]
        return out


# ---- worker side ------------------------------------------------------------------------
class RegionDataset:
    """Map-style dataset: image i -> its region tensors (runs in DataLoader workers)."""

    def __init__(self, items: list[ImageItem], cfg: RegionConfig, preprocess, known_sha: set[str], patch_grid: int,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, view_size: int = 224):
        self.items, self.cfg, self.preprocess, self.known, self.patch_grid = items, cfg, preprocess, known_sha, patch_grid
        self.max_image_bytes = max_image_bytes
        self.view_size = view_size  # AWT's views are stretched to the model's square input

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        import torch

        item = self.items[i]
        try:
            data = read_image_file(item.path, self.max_image_bytes)  # size checked before reading
        except ValueError as exc:  # too large, not a regular file
            return {"item": item, "error": str(exc)}
        except OSError as exc:
            return {"item": item, "error": f"unreadable ({exc.strerror or exc})"}
        sha = hashlib.sha256(data).hexdigest()
        if sha in self.known:
            return {"item": item, "sha": sha, "skip": True}
        try:
            img = open_image(data)
        except ValueError as exc:
            return {"item": item, "sha": sha, "error": str(exc)}
        w, h = img.size
        kinds, boxes = region_boxes(w, h, sha, patch_grid=self.patch_grid, **self.cfg.geometry())
        if self.cfg.source == "patches":
            tensors = self.preprocess(img).unsqueeze(0)  # one pass; tokens are the regions
        else:
            views = [region_image(img, k, b, self.view_size) for k, b in zip(kinds, boxes)]
            tensors = torch.stack([self.preprocess(v) for v in views])
        return {"item": item, "sha": sha, "size": (w, h), "kinds": kinds, "boxes": boxes, "pixels": tensors}


def _identity(x):
    return x


# ---- main side --------------------------------------------------------------------------
def encode_patch_tokens(model, pixels):
    """One forward pass -> (full [B, D], patch tokens [B, L, D]), both L2-normalised, in the joint space."""
    import torch

    visual = model.model.visual
    prev = getattr(visual, "output_tokens", False)
    visual.output_tokens = True
    try:
        with torch.inference_mode():
            pooled, tokens = visual(pixels.to(model.device, model.dtype))
            tokens = tokens @ visual.proj  # tokens come out before the projection (ecosystem-notes §1)
    finally:
        visual.output_tokens = prev
    pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
    tokens = torch.nn.functional.normalize(tokens.float(), dim=-1)
    return pooled.cpu(), tokens.cpu()


def patch_grid_size(model) -> int:
    """Patch tokens per side of the model's input (ViTs); 0 for models without patches."""
    ps = getattr(model.model.visual, "patch_size", None)
    if ps is None:
        return 0
    return model.image_size // int(ps[0] if isinstance(ps, (tuple, list)) else ps)


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
) -> IndexReport:
    """Index images into the store; images already there (same content) are skipped.

    The resolved settings (``cfg``, the ``preset`` they came from, batch size, dtype) are
    stored in ``index_runs.params``; a later ``classify`` uses the preset's method values.
    Files over ``max_image_bytes`` are recorded in ``image_errors`` without being read.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    items = discover_images(inputs)[:max_images]
    claim_model(cat, model)
    known = tables.known_image_hashes(cat)
    patch_grid = patch_grid_size(model) if cfg.source == "patches" else 0
    if cfg.source == "patches" and not patch_grid:
        raise InputError(f"--regions patches needs a ViT; {model.name} has no patch tokens.")
    run_id = tables.next_index_run_id(cat)
    params = {"preset": preset, "regions": cfg.to_dict(), "model": model.describe(), "batch_size": batch_size,
              "dtype": dtype, "inputs": inputs}
    tables.insert_index_run(cat, run_id, params, model.fingerprint)

    report = IndexReport(seen=len(items))
    t0 = time.perf_counter()
    loader = DataLoader(
        RegionDataset(items, cfg, model.preprocess, known, patch_grid, max_image_bytes, model.image_size),
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    writer = ShardWriter(cat, run_id, model.fingerprint, dtype, shard_size)
    pending: list[dict] = []  # images whose regions wait for the next encoder batch
    pending_regions = 0
    bar = tqdm(total=len(items), desc="index images", unit="img", disable=not progress)
    in_run: set[str] = set()
    ok_paths: list[str] = []  # indexed or already in the store: earlier failures of these paths are void

    def encode_pending() -> None:
        nonlocal pending, pending_regions
        for rec, emb in zip(pending, encode_records(model, pending, cfg.source, batch_size)):
            writer.add(IndexedImage(rec["sha"], rec["item"].path, rec["item"].label, *rec["size"], rec["kinds"],
                                    rec["boxes"], emb))
            report.indexed += 1
            report.regions += len(emb)
        pending, pending_regions = [], 0

    try:
        for rec in loader:
            bar.update(1)
            if "error" in rec:
                report.failed += 1
                report.errors.append((rec["item"].path, rec["error"]))
                tables.insert_image_error(cat, rec["item"].path, rec.get("sha"), rec["error"], run_id)
                continue
            ok_paths.append(rec["item"].path)
            if rec.get("skip") or rec["sha"] in in_run:
                report.skipped += 1
                continue
            in_run.add(rec["sha"])
            pending.append(rec)
            pending_regions += len(rec["pixels"])
            if pending_regions >= batch_size:
                encode_pending()
            elapsed = time.perf_counter() - t0
            bar.set_postfix(regions_per_s=f"{report.regions / max(elapsed, 1e-9):.0f}", refresh=False)
        encode_pending()
        writer.flush()
        tables.clear_image_errors(cat, ok_paths)
    finally:
        bar.close()
    cat.refresh_views()
    rebuild_image_index(cat, model.fingerprint)
    report.seconds = time.perf_counter() - t0
    return report


def encode_records(model, records: list[dict], source: str, batch_size: int) -> list[np.ndarray]:
    """Region embeddings (R_i, D) of each decoded record, row 0 the full view."""
    import torch

    if not records:
        return []
    pixels = torch.cat([r["pixels"] for r in records])
    if source == "patches":
        full, tokens = encode_patch_tokens(model, pixels)
        return [torch.cat([full[i : i + 1], tokens[i]]).numpy() for i in range(len(records))]
    feats = torch.cat([model.encode_images(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]).numpy()
    return np.split(feats, np.cumsum([len(r["kinds"]) for r in records])[:-1])


def rebuild_image_index(cat: Catalog, model: str) -> None:
    """Global (full-image) embeddings of every indexed image -> faiss/images.index (:mod:`stores.indexes`)."""
    indexes.rebuild_image_index(cat, model)
