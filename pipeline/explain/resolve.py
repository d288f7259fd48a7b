"""Which run, which image, which alignment: the lookups every explanation command shares.

``explain``, ``report``, ``faithfulness`` and the concept and contrast views all start here,
so none of them imports another to find a run or an image (no import cycles in the package).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from queries.attribution import Alignment, scale_boxes, score_parts
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError

from ..errors import InputError
from ..imaging import open_image, read_image_file
from ..stages.methods import find_method
from .map_kinds import BASELINES

MAX_RENDER_SIDE = 1024  # overlays of larger images are drawn at this size (boxes scaled to match)


def resolve_run(cat: Catalog, run_id: int | None = None) -> tables.RunRecord:
    """The given run, or the latest run that stored alignments; it must have alignments."""
    if run_id is None:
        run = tables.latest_run(cat, with_alignments=True)
        if run is None:
            raise StoreError(
                "No run with alignments in the store; explanations come from an OT run: `pipeline classify --method lazsl`."
            )
        return run
    run = tables.get_run(cat, run_id)
    if run is None:
        raise InputError(f"No run {run_id}; list runs with `pipeline sql \"select run_id, method from runs\"`.")
    if not tables.run_has_alignments(cat, run_id):
        raise InputError(f"Run {run_id} ({run.method}) stored no alignments; explanations need an OT run (--method lazsl).")
    return run


def resolve_image(cat: Catalog, image: str | int | Path) -> dict:
    """An indexed image by image_id, path (as given or resolved), file content, or unique path suffix."""
    s = str(image)
    rows = []
    if isinstance(image, (int, np.integer)) or s.strip().isdigit():  # an id pasted with its line end
        rows = tables.find_images(cat, image_id=int(s.strip()))
    if not rows:
        rows = tables.find_images(cat, paths=[s, str(Path(s).expanduser().resolve())])
    if not rows and Path(s).is_file():
        try:
            data = read_image_file(s)  # bounded like index-images: a huge file is no indexed image
        except (ValueError, OSError):
            data = None
        if data is not None:
            rows = tables.find_images(cat, sha256=hashlib.sha256(data).hexdigest())
    if not rows:
        rows = tables.find_images(cat, path_suffix="/" + s.lstrip("./"))
        if len(rows) > 1:
            raise InputError(f"{s} matches {len(rows)} indexed images; give a longer path or the image_id.")
    if not rows:
        raise InputError(f"{s} is not an indexed image in {cat.root}; index it with `pipeline index-images`, or pass an image_id.")
    r = rows[0]
    return dict(image_id=int(r["image_id"]), path=r["path"], width=int(r["width"]), height=int(r["height"]),
                label=r["label"])


def load_alignment(cat: Catalog, run_id: int, image_id: int, class_id: int) -> Alignment:
    return Alignment.from_rows(tables.alignment_rows(cat, run_id, image_id, class_id))


def image_predictions(cat: Catalog, run: tables.RunRecord, image_id: int) -> list[dict]:
    """The run's ranked classes for an image, with the score's global and local parts."""
    spec = find_method(run.method)
    theta = run.params.get("config", {}).get(spec.theta_field) if spec is not None and spec.theta_field else None
    return [dict(p, parts=score_parts(p["score"], p["global_score"], p["local_score"], theta))
            for p in tables.image_predictions(cat, run.run_id, image_id)]


def load_image(path: str, size: tuple[int, int] | None = None) -> Image.Image:
    """The image as indexed (EXIF-rotated RGB), optionally resized to (w, h)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: the indexed image file is gone; overlays need the pixels (the maps are in the store).")
    try:
        img = open_image(read_image_file(p))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc.strerror or exc}).") from None
    return resized(img, size)


def resized(img: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``img`` at (w, h) (bilinear), or as it is."""
    return img if size is None or img.size == tuple(size) else img.resize(size, Image.Resampling.BILINEAR)


def prepare_image(cat: Catalog, run_id: int, img: dict, class_ids: list[int], max_side: int = MAX_RENDER_SIDE):
    """Alignments of the classes, the regions that took part, and the render geometry."""
    all_ids, kinds, all_boxes = tables.image_regions(cat, img["image_id"])
    als = {cid: load_alignment(cat, run_id, img["image_id"], cid) for cid in class_ids}
    used = np.unique(np.concatenate([al.regions() for al in als.values()] + [np.zeros(0, np.int64)]))
    keep = np.isin(all_ids, used)
    scale = min(1.0, max_side / max(img["width"], img["height"]))
    w, h = max(1, round(img["width"] * scale)), max(1, round(img["height"] * scale))
    boxes = scale_boxes(all_boxes[keep], w / img["width"], h / img["height"])
    kind = kinds[int(np.flatnonzero(keep)[0])] if keep.any() else "crop"
    return als, all_ids[keep], boxes, (w, h), scale, kind


def baseline_image(arr: np.ndarray, kind: str) -> np.ndarray:
    """What deleted pixels become (``--baseline``): a Gaussian blur (sigma = short side / 20), the mean colour, or black."""
    if kind == "blur":
        sigma = max(1.0, min(arr.shape[:2]) / 20)
        return np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(sigma)))
    if kind == "mean":
        return np.broadcast_to(arr.reshape(-1, 3).mean(0).round().astype(np.uint8), arr.shape).copy()
    if kind == "black":
        return np.zeros_like(arr)
    raise InputError(f"Unknown baseline {kind!r}; use one of {', '.join(BASELINES)}.")
