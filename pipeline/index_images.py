"""Stage 2: encode each image's regions once and stream them into Parquet shards.

Decoding and cropping run in DataLoader worker processes (``workers``) while the main
process encodes batches of regions gathered across images. Every ``shard_size`` images a
regions shard and then an images shard are written atomically; the images shard is the
commit marker, so a killed run resumes at the first image that has none.
"""
from __future__ import annotations

import csv
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from stores.catalog import Catalog, dumps, now_utc
from stores.faiss_index import build_flat_ip, write_index
from stores.parquet import embedding_array, embeddings_to_numpy, read_tables, write_table_atomic

from .attributes import InputError
from .regions import RegionConfig, region_boxes

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold, enforced as an error


@dataclass
class ImageItem:
    path: str
    label: str | None


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
        out += [f"  failed: {p}: {r}" for p, r in self.errors[:10]]
        return out


# ---- inputs -----------------------------------------------------------------------------
def discover_images(inputs: list[str]) -> list[ImageItem]:
    """A folder (recursive; sub-folder name = label), a CSV/Parquet manifest, or image files."""
    items: list[ImageItem] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{raw}: no such file or folder; pass an image folder, a manifest (.csv/.parquet) or image files.")
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS):
                label = f.parent.name if f.parent != p else None
                items.append(ImageItem(str(f.resolve()), label))
        elif p.suffix.lower() in (".csv", ".parquet"):
            items.extend(_read_manifest(p))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            items.append(ImageItem(str(p.resolve()), None))
        else:
            raise InputError(
                f"{raw}: not an image ({p.suffix or 'no extension'}); pass images ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
                "a folder, or a .csv/.parquet manifest with a 'path' column."
            )
    if not items:
        raise InputError(f"No images found in {', '.join(inputs)}.")
    return items


def _read_manifest(p: Path) -> list[ImageItem]:
    if p.suffix.lower() == ".csv":
        try:
            with open(p, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: not UTF-8 text; re-save the manifest as UTF-8.") from exc
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    if not rows or "path" not in rows[0]:
        raise InputError(f"{p}: a manifest needs a 'path' column (and optionally 'label').")
    base = p.parent
    out = []
    for r in rows:
        path = Path(r["path"])
        path = path if path.is_absolute() else base / path
        out.append(ImageItem(str(path.resolve()), (r.get("label") or None)))
    return out


def content_id(sha256_hex: str) -> int:
    """A stable int64 id from the content hash (60 bits, positive)."""
    return int(sha256_hex[:15], 16)


def region_id(sha256_hex: str, index: int) -> int:
    return int(hashlib.sha256(f"{sha256_hex}/{index}".encode()).hexdigest()[:15], 16)


def open_image(data: bytes) -> Image.Image:
    """Decode to RGB with EXIF orientation applied; raise ValueError with a reason."""
    import io

    if not data:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"decompression bomb ({img.width}x{img.height} pixels)")
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"decompression bomb ({exc})") from exc
        except Image.UnidentifiedImageError as exc:
            raise ValueError("not an image") from exc
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"corrupt image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    img = ImageOps.exif_transpose(img)
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    return img.convert("RGB")


# ---- worker side ------------------------------------------------------------------------
class RegionDataset:
    """Map-style dataset: image i -> its region tensors (runs in DataLoader workers)."""

    def __init__(self, items: list[ImageItem], cfg: RegionConfig, preprocess, known_sha: set[str], patch_grid: int):
        self.items, self.cfg, self.preprocess, self.known, self.patch_grid = items, cfg, preprocess, known_sha, patch_grid

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        import torch

        item = self.items[i]
        try:
            data = Path(item.path).read_bytes()
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
        kinds, boxes = region_boxes(w, h, sha, self.cfg, self.patch_grid)
        if self.cfg.source == "patches":
            tensors = self.preprocess(img).unsqueeze(0)  # one pass; tokens are the regions
        else:
            views = [img] + [img.crop(tuple(int(v) for v in b)) for b in boxes[1:]]
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


class _ShardWriter:
    def __init__(self, cat: Catalog, run_id: int, model: str, dtype: str):
        self.cat, self.run_id, self.model, self.dtype = cat, run_id, model, dtype
        self.images: list[dict] = []
        self.regions: list[tuple] = []  # (ids, image_ids, kinds, boxes, emb)
        self.seq = 0

    def add(self, rec: dict, emb: np.ndarray) -> None:
        sha = rec["sha"]
        iid = content_id(sha)
        w, h = rec["size"]
        self.images.append(
            dict(image_id=iid, path=rec["item"].path, sha256=sha, width=w, height=h, label=rec["item"].label, index_run_id=self.run_id)
        )
        n = len(rec["kinds"])
        self.regions.append(
            (np.array([region_id(sha, j) for j in range(n)], np.int64), np.full(n, iid, np.int64), rec["kinds"], rec["boxes"], emb)
        )

    def flush(self) -> None:
        if not self.images:
            return
        name = f"part-{self.run_id:06d}-{self.seq:05d}.parquet"
        ids = np.concatenate([r[0] for r in self.regions])
        boxes = np.concatenate([r[3] for r in self.regions]).astype(np.float32)
        emb = np.concatenate([r[4] for r in self.regions])
        regions = pa.table(
            {
                "region_id": ids,
                "image_id": np.concatenate([r[1] for r in self.regions]),
                "kind": pa.array([k for r in self.regions for k in r[2]], pa.string()),
                "x0": boxes[:, 0],
                "y0": boxes[:, 1],
                "x1": boxes[:, 2],
                "y1": boxes[:, 3],
                "model": pa.array([self.model] * len(ids), pa.string()),
                "embedding": embedding_array(emb, self.dtype),
            }
        )
        images = pa.Table.from_pylist(
            self.images,
            schema=pa.schema(
                [("image_id", pa.int64()), ("path", pa.string()), ("sha256", pa.string()), ("width", pa.int32()),
                 ("height", pa.int32()), ("label", pa.string()), ("index_run_id", pa.int64())]
            ),
        )
        # regions first, images last: the images shard commits the batch (see module doc)
        write_table_atomic(regions, self.cat.shard_dir("regions") / name)
        write_table_atomic(images, self.cat.shard_dir("images") / name)
        self.images, self.regions = [], []
        self.seq += 1


def index_images(
    cat: Catalog,
    model,
    inputs: list[str],
    cfg: RegionConfig = RegionConfig(),
    *,
    batch_size: int = 256,
    workers: int = 0,
    shard_size: int = 256,
    dtype: str = "float16",
    progress: bool = True,
    max_images: int | None = None,
) -> IndexReport:
    """Index images into the store; images already there (same content) are skipped."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    items = discover_images(inputs)[:max_images]
    cat.check_model(model.fingerprint)
    known = {r[0] for r in cat.query("SELECT sha256 FROM images").fetchall()}
    patch_grid = 0
    if cfg.source == "patches":
        ps = model.model.visual.patch_size
        patch_grid = model.image_size // int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    run_id = cat.next_id("index_runs", "index_run_id")
    params = {"regions": cfg.to_dict(), "model": model.describe(), "batch_size": batch_size, "dtype": dtype, "inputs": inputs}
    cat.query("INSERT INTO index_runs VALUES (?, ?, ?, ?)", [run_id, dumps(params), model.fingerprint, now_utc()])

    report = IndexReport(seen=len(items))
    t0 = time.perf_counter()
    loader = DataLoader(
        RegionDataset(items, cfg, model.preprocess, known, patch_grid),
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    writer = _ShardWriter(cat, run_id, model.fingerprint, dtype)
    pending: list[dict] = []  # images whose regions wait for the next encoder batch
    pending_regions = 0
    bar = tqdm(total=len(items), desc="index images", unit="img", disable=not progress)
    in_run: set[str] = set()

    def encode_pending() -> None:
        nonlocal pending, pending_regions
        if not pending:
            return
        pixels = torch.cat([r["pixels"] for r in pending])
        if cfg.source == "patches":
            full, tokens = encode_patch_tokens(model, pixels)
            embs = [torch.cat([full[i : i + 1], tokens[i]]).numpy() for i in range(len(pending))]
        else:
            feats = torch.cat([model.encode_images(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]).numpy()
            splits = np.cumsum([len(r["kinds"]) for r in pending])[:-1]
            embs = np.split(feats, splits)
        for rec, emb in zip(pending, embs):
            writer.add(rec, emb)
            report.indexed += 1
            report.regions += len(emb)
            if len(writer.images) >= shard_size:
                writer.flush()
        pending, pending_regions = [], 0

    try:
        for rec in loader:
            bar.update(1)
            if "error" in rec:
                report.failed += 1
                report.errors.append((rec["item"].path, rec["error"]))
                cat.query(
                    "INSERT INTO image_errors VALUES (?, ?, ?, ?, ?)",
                    [rec["item"].path, rec.get("sha"), rec["error"], run_id, now_utc()],
                )
                continue
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
    finally:
        bar.close()
    cat.refresh_views()
    rebuild_image_index(cat, model.fingerprint)
    report.seconds = time.perf_counter() - t0
    return report


def rebuild_image_index(cat: Catalog, model: str) -> None:
    """Global (full-image) embeddings of every indexed image -> faiss/images.index."""
    table = read_tables(cat.shard_files("regions"), columns=["image_id", "kind", "embedding"], filters=[("kind", "=", "full")])
    if table is None or table.num_rows == 0:
        return
    emb = embeddings_to_numpy(table["embedding"])
    ids = table["image_id"].to_numpy()
    write_index(build_flat_ip(emb, ids), cat.root / "faiss" / "images.index", {"model": model, "ids": "image_id"})
