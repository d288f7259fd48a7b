"""index-images as a pure batch -> batch function: image paths in, region rows out.

Both engines run it. The local engine (:func:`pipeline.stages.index_images.index_images`)
decodes in DataLoader workers (:class:`RegionDataset`) and calls :meth:`RegionBatchFn.encode`
on the decoded images; the Ray engine (:mod:`pipeline.engines.ray_engine`) calls the whole
:class:`RegionBatchFn` (decode + encode) as a Ray Data ``map_batches`` class, one model per
actor. Either way the rows go through the same writer
(:func:`pipeline.stages.index_images.store_rows` -> :class:`stores.shards.ShardWriter`), so the
same files give the same ids, boxes, embeddings and shards. Nothing here touches the store.

Output rows (one batch = a dict of numpy arrays, Ray Data's ``numpy`` batch format):

======================  ====================================================================
``status``              ``ok`` (one row per region), ``skip`` (already in the store, one row),
                        ``error`` (unreadable / not an image / too large, one row, ``error``)
``path``, ``label``     the input row's
``sha256``, ``image_id``, ``width``, ``height``     the image's (empty / -1 / 0 on errors)
``region_id``, ``kind``, ``x0`` .. ``y1``           the region's (-1 / "" / 0 unless ``ok``)
``embedding``           [rows, D] in the store dtype (float16 by default; zeros unless ``ok``)
======================  ====================================================================

Rows of one image are contiguous and in region order (row 0 is the full view), images in
input order; :func:`records_from_rows` turns rows back into per-image records.

Batch invariance: an embedding must not depend on which other regions share its encoder
batch, or two engines that batch differently would disagree. On CPU (torch 2.x, oneDNN; measured
on this project's machine) rows of a batch of >= 4 are bit-identical to the same rows in any
other batch of >= 4 (ViT-B-32 and zsl-tiny, 1 or 2 threads); batches of 1-3 rows take another
kernel and differ by ~1e-7. :func:`encode_views` therefore pads every chunk to at least
``MIN_ROWS`` rows. GPUs give no such guarantee (cuBLAS picks kernels by shape): there, compare
engines at the float16 storage precision.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from queries.regions import region_boxes
from stores.shards import content_id, region_id

from ..config import RegionConfig
from ..imaging import ImageItem, open_image, read_image_file, region_image
from ..inputs import DEFAULT_MAX_IMAGE_BYTES
from ..models import ModelLoadError, load_model

MIN_ROWS = 8  # pad encoder chunks to at least this many rows (see module doc)
STATUS_OK, STATUS_SKIP, STATUS_ERROR = "ok", "skip", "error"
ROW_COLUMNS = ("status", "path", "label", "sha256", "image_id", "width", "height", "error", "region_id", "kind",
               "x0", "y0", "x1", "y1", "embedding")


# ---- decoding (worker side) --------------------------------------------------------------
class RegionDataset:
    """Map-style dataset: image i -> its decoded region tensors (runs in DataLoader workers, or
    in a Ray actor). A record is ``{"item", "sha", "size", "kinds", "boxes", "pixels"}``, or
    ``{"item", "sha", "skip": True}`` for content already in the store, or ``{"item"[, "sha"],
    "error"}``."""

    def __init__(self, items: list[ImageItem], cfg: RegionConfig, preprocess, known_sha: set[str], patch_grid: int,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, view_size: int = 224):
        self.items, self.cfg, self.preprocess, self.known, self.patch_grid = items, cfg, preprocess, known_sha, patch_grid
        self.max_image_bytes = max_image_bytes
        self.view_size = view_size  # AWT's views are stretched to the model's square input

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        # heavy: imported on use
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


# ---- encoding ------------------------------------------------------------------------------
def encode_patch_tokens(model, pixels, specs: list[dict] | None = None):
    """One forward pass -> (full [B, D], patch tokens [B, L, D]), both L2-normalised, in the joint space.

    ``specs`` (``RegionConfig.dense_specs()``): token sets of
    :func:`pipeline.dense.dense_feature_sets` (MaskCLIP/ClearCLIP/SCLIP-style blocks, chosen
    layers), averaged and re-normalised; None or plain last-block = open_clip's own tokens.
    """
    # heavy: imported on use
    import torch

    if specs and specs != [{"variant": "plain", "block": -1}]:
        # heavy: imported on use
        from ..dense import dense_feature_sets

        sets, pooled, _ = dense_feature_sets(model, pixels, specs)
        tokens = torch.nn.functional.normalize(torch.stack(sets).mean(0), dim=-1)
        return pooled.cpu(), tokens.cpu()

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


def _pad(chunk, min_rows: int):
    # heavy: imported on use
    import torch

    n = len(chunk)
    return chunk if n >= min_rows else torch.cat([chunk, chunk[-1:].expand(min_rows - n, *chunk.shape[1:])])


def encode_views(model, pixels, *, batch_size: int = 256, min_rows: int = MIN_ROWS) -> np.ndarray:
    """[N, 3, H, W] preprocessed views -> L2-normalised float32 [N, D], in chunks of ``batch_size``.

    A chunk shorter than ``min_rows`` is padded by repeating its last view (the padding rows'
    outputs are dropped), so every row goes through the same kernels whatever the chunking.
    """
    # heavy: imported on use
    import torch

    out = [model.encode_images(_pad(pixels[i : i + batch_size], min_rows))[: len(pixels[i : i + batch_size])]
           for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)


def encode_patches(model, pixels, *, min_rows: int = MIN_ROWS, specs: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Patch-token regions: (full [B, D], tokens [B, L, D]) with the same padding rule."""
    n = len(pixels)
    full, tokens = encode_patch_tokens(model, _pad(pixels, min_rows), specs)
    return full[:n].numpy(), tokens[:n].numpy()


def encode_records(model, records: list[dict], source: str, batch_size: int = 256,
                   specs: list[dict] | None = None) -> list[np.ndarray]:
    """Region embeddings (R_i, D), float32, of each decoded record; row 0 the full view.
    ``specs``: the dense token sets of patch regions (``RegionConfig.dense_specs()``)."""
    # heavy: imported on use
    import torch

    if not records:
        return []
    pixels = torch.cat([r["pixels"] for r in records])
    if source == "patches":
        full, tokens = encode_patches(model, pixels, specs=specs)
        return [np.concatenate([full[i : i + 1], tokens[i]]) for i in range(len(records))]
    feats = encode_views(model, pixels, batch_size=batch_size)
    return np.split(feats, np.cumsum([len(r["kinds"]) for r in records])[:-1])


# ---- the batch function ----------------------------------------------------------------------
def batch_inputs(batch: Any) -> tuple[list[str], list[str | None]]:
    """(paths, labels) from a pyarrow Table, a pandas DataFrame or a dict of arrays/lists."""
    if hasattr(batch, "column_names"):  # pyarrow.Table / RecordBatch
        cols = {c: batch.column(c).to_pylist() for c in batch.column_names}
    elif hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        cols = {c: batch[c].tolist() for c in batch.columns}
    else:
        cols = {c: (v.tolist() if hasattr(v, "tolist") else list(v)) for c, v in dict(batch).items()}
    if "path" not in cols:
        raise ValueError(f"a batch needs a 'path' column (got {', '.join(cols) or 'none'}).")
    paths = [str(p) for p in cols["path"]]
    labels = cols.get("label") or [None] * len(paths)
    return paths, [None if lab in (None, "") else str(lab) for lab in labels]


@dataclass
class ModelSpec:
    """What an actor needs to load the model itself (:func:`pipeline.models.load_model`), and
    the fingerprint it must come out with (the driver's: every actor encodes with the same weights)."""

    name: str
    pretrained: str
    device: str | None = None
    precision: str | None = None
    fingerprint: str | None = None

    def load(self):
        model = load_model(self.name, self.pretrained, device=self.device, precision=self.precision)
        if self.fingerprint is not None and model.fingerprint != self.fingerprint:
            raise ModelLoadError(f"this worker loaded {model.fingerprint}, the driver {self.fingerprint}: every node "
                                 "needs the same weights at the same path.")
        return model


class RegionBatchFn:
    """Callable class: load the model once (``__init__``), then map batches of paths to region rows.

    Args:
        model: a :class:`ModelSpec` (each actor loads its own copy) or a loaded model (the local
            engine, tests).
        cfg: ``RegionConfig`` or its ``to_dict()``.
        dtype: ``float16`` (the store's default) or ``float32``: the embedding column's type.
        batch_size: encoder chunk size in regions.
        known_sha: content hashes already in the store: those images come back as ``skip``.
        max_image_bytes: larger files come back as ``error`` without being read.
        threads: torch threads (None: leave as set; Ray sets OMP_NUM_THREADS to an actor's CPUs).
    """

    def __init__(self, model, cfg: RegionConfig | dict = RegionConfig(), *, dtype: str = "float16", batch_size: int = 256,
                 known_sha=(), max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, threads: int | None = None):
        if threads:
            # heavy: imported on use
            import torch

            torch.set_num_threads(threads)
        self.model = model.load() if isinstance(model, ModelSpec) else model
        self.cfg = cfg if isinstance(cfg, RegionConfig) else RegionConfig.from_dict(cfg)
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.batch_size = batch_size
        self.known = set(known_sha)
        self.max_image_bytes = max_image_bytes
        self.patch_grid = patch_grid_size(self.model) if self.cfg.source == "patches" else 0

    def dataset(self, items: list[ImageItem]) -> RegionDataset:
        """Decoding, hashing and cropping of ``items`` (what a DataLoader's workers run)."""
        return RegionDataset(items, self.cfg, self.model.preprocess, self.known, self.patch_grid, self.max_image_bytes,
                             self.model.image_size)

    def encode(self, records: list[dict]) -> dict[str, np.ndarray]:
        """Decoded records (any mix of ok / skip / error, in order) -> one batch of region rows."""
        good = [r for r in records if "error" not in r and not r.get("skip")]
        embs = dict(zip(map(id, good), encode_records(self.model, good, self.cfg.source, self.batch_size,
                                                          self.cfg.dense_specs())))
        return rows_from_records(records, embs, self.model.embed_dim, self.dtype)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        paths, labels = batch_inputs(batch)
        ds = self.dataset([ImageItem(p, lab) for p, lab in zip(paths, labels)])
        return self.encode([ds[i] for i in range(len(ds))])


def rows_from_records(recs: list[dict], embs: dict[int, np.ndarray], dim: int, dtype=np.float16) -> dict[str, np.ndarray]:
    """Records (+ their embeddings keyed by ``id(rec)``) -> one batch of region rows."""
    cols: dict[str, list] = {k: [] for k in ROW_COLUMNS if k != "embedding"}
    emb_parts = []
    for r in recs:
        item = r["item"]
        if "error" in r or r.get("skip"):
            sha = r.get("sha") or ""
            one = dict(status=STATUS_ERROR if "error" in r else STATUS_SKIP, path=item.path, label=item.label, sha256=sha,
                       image_id=content_id(sha) if sha else -1, width=0, height=0, error=r.get("error", ""),
                       region_id=-1, kind="", x0=0.0, y0=0.0, x1=0.0, y1=0.0)
            for k, v in one.items():
                cols[k].append(v)
            emb_parts.append(np.zeros((1, dim), dtype))
            continue
        sha, (w, h), n = r["sha"], r["size"], len(r["kinds"])
        boxes = np.asarray(r["boxes"], np.float32)
        for k, v in (("status", STATUS_OK), ("path", item.path), ("label", item.label), ("sha256", sha),
                     ("image_id", content_id(sha)), ("width", w), ("height", h), ("error", "")):
            cols[k] += [v] * n
        cols["region_id"] += [region_id(sha, j) for j in range(n)]
        cols["kind"] += list(r["kinds"])
        for j, k in enumerate(("x0", "y0", "x1", "y1")):
            cols[k] += boxes[:, j].tolist()
        emb_parts.append(np.ascontiguousarray(embs[id(r)], dtype=dtype))
    obj = {k: np.array(cols[k], dtype=object) for k in ("status", "path", "label", "sha256", "error", "kind")}
    return {
        **obj,
        "image_id": np.array(cols["image_id"], np.int64),
        "width": np.array(cols["width"], np.int32),
        "height": np.array(cols["height"], np.int32),
        "region_id": np.array(cols["region_id"], np.int64),
        **{k: np.array(cols[k], np.float32) for k in ("x0", "y0", "x1", "y1")},
        "embedding": np.concatenate(emb_parts) if emb_parts else np.zeros((0, dim), dtype),
    }


def records_from_rows(rows: dict[str, np.ndarray]) -> Iterator[dict]:
    """Region rows (one batch, in order) -> per-image records shaped like :class:`RegionDataset`'s,
    with ``emb`` [R, D] instead of ``pixels``; ``error`` / ``skip`` records as the dataset gives them."""
    status = rows["status"]
    n = len(status)
    i = 0
    while i < n:
        label = rows["label"][i]
        label = None if label is None or (isinstance(label, float) and np.isnan(label)) or label == "" else str(label)
        item = ImageItem(str(rows["path"][i]), label)
        sha = str(rows["sha256"][i]) or None
        if status[i] != STATUS_OK:
            yield {"item": item, "sha": sha, **({"error": str(rows["error"][i])} if status[i] == STATUS_ERROR else {"skip": True})}
            i += 1
            continue
        j = i + 1
        while j < n and status[j] == STATUS_OK and rows["kind"][j] != "full":
            j += 1
        boxes = np.stack([np.asarray(rows[k][i:j], np.float32) for k in ("x0", "y0", "x1", "y1")], axis=1)
        yield {"item": item, "sha": sha, "size": (int(rows["width"][i]), int(rows["height"][i])),
               "kinds": [str(k) for k in rows["kind"][i:j]], "boxes": boxes,
               "region_ids": np.asarray(rows["region_id"][i:j], np.int64), "emb": np.asarray(rows["embedding"][i:j])}
        i = j
