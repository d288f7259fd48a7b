"""Images from disk: finding them (folders, manifests, files) and decoding them safely.

Used by ``index-images`` and by everything that shows pixels again (explain, report,
faithfulness), so an image is decoded the same way everywhere.
"""
from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError
from .inputs import DEFAULT_MAX_IMAGE_BYTES, read_limited
from .names import check_text, escape_controls

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold, enforced as an error


@dataclass
class ImageItem:
    path: str
    label: str | None
    source: str = ""  # where it was listed ("manifest.csv: line 5", "folder photos"), for messages


# ---- inputs -----------------------------------------------------------------------------
def discover_images(inputs: list[str]) -> list[ImageItem]:
    """A folder (recursive; sub-folder name = label), a CSV/Parquet manifest, or image files.

    One path, one label: a path listed twice with the same label counts once; listed with
    two different labels it is refused, naming both places. A label with a control
    character is refused (:mod:`pipeline.names`).
    """
    items: list[ImageItem] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{raw}: no such file or folder; pass an image folder, a manifest (.csv/.parquet) or image files.")
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS):
                label = f.parent.name if f.parent != p else None
                if label is not None:
                    check_text(label, f"{raw}: folder {escape_controls(str(f.parent))}", "label (a folder name)")
                items.append(ImageItem(str(f.resolve()), label, f"folder {raw}"))
        elif p.suffix.lower() in (".csv", ".parquet"):
            items.extend(_read_manifest(p))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            items.append(ImageItem(str(p.resolve()), None, "the command line"))
        else:
            raise InputError(
                f"{raw}: not an image ({p.suffix or 'no extension'}); pass images ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
                "a folder, or a .csv/.parquet manifest with a 'path' column."
            )
    if not items:
        raise InputError(f"No images found in {', '.join(inputs)}.")
    return unique_items(items)


def unique_items(items: list[ImageItem]) -> list[ImageItem]:
    """Each path once; the same path with two labels is an error naming both places."""
    first: dict[str, ImageItem] = {}
    out = []
    for it in items:
        seen = first.get(it.path)
        if seen is None:
            first[it.path] = it
            out.append(it)
        elif seen.label != it.label:
            raise InputError(
                f"{escape_controls(it.path)} is labelled {seen.label!r} ({seen.source}) and {it.label!r} ({it.source}); "
                "an image has one label: fix the manifest or the folders."
            )
    return out


def _read_manifest(p: Path) -> list[ImageItem]:
    rows: list[tuple[int, object, object]] = []  # (line or row number, path, label)
    if p.suffix.lower() == ".csv":
        try:
            with open(p, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "path" not in [c.strip() for c in reader.fieldnames]:
                    raise InputError(f"{p}: a manifest needs a 'path' column (and optionally 'label').")
                cols = {c.strip(): c for c in reader.fieldnames}
                for r in reader:
                    rows.append((reader.line_num, r.get(cols["path"]), r.get(cols.get("label", "label"))))
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: not UTF-8 text; re-save the manifest as UTF-8.") from exc
        except csv.Error as exc:
            raise InputError(f"{p}: line {reader.line_num}: not readable as CSV ({exc}).") from None
        where = "line"
    else:
        # heavy: imported on use
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(p)
            if "path" not in schema.names:
                raise InputError(f"{p}: a manifest needs a 'path' column (and optionally 'label').")
            table = pq.read_table(p, columns=[c for c in ("path", "label") if c in schema.names])
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{p}: not a readable Parquet manifest ({str(exc).splitlines()[0][:200]}).") from None
        labels = table["label"].to_pylist() if "label" in table.column_names else [None] * table.num_rows
        rows = [(i, path, label) for i, (path, label) in enumerate(zip(table["path"].to_pylist(), labels), 1)]
        where = "row"
    if not rows:
        raise InputError(f"{p}: the manifest lists no images.")
    base = p.parent
    out = []
    for n, raw_path, raw_label in rows:
        if raw_path is None or not str(raw_path).strip():
            raise InputError(f"{p}: {where} {n}: empty path.")
        check_text(str(raw_path), f"{p}: {where} {n}", "path")
        label = None if raw_label is None or not str(raw_label).strip() else str(raw_label)
        if label is not None:
            check_text(label, f"{p}: {where} {n}", "label")
        path = Path(str(raw_path))
        path = path if path.is_absolute() else base / path
        out.append(ImageItem(str(path.resolve()), label, f"{p.name} {where} {n}"))
    return out


def read_image_file(path: str | Path, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """An image file's bytes, its size checked before reading (``--max-image-bytes``); only
    regular files. ValueError with the reason (recorded in ``image_errors``), OSError if unreadable."""
    return read_limited(path, max_bytes, "--max-image-bytes")


def open_image(data: bytes) -> Image.Image:
    """Decode to RGB with EXIF orientation applied; raise ValueError with a reason."""
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


# ---- region pixels ----------------------------------------------------------------------
VIEW_KINDS = ("view", "view-flip")


def render_view(image: Image.Image, box, flip: bool, size: int) -> Image.Image:
    """One AWT view: ``box`` cut from ``image``, *stretched* to ``size × size`` (bicubic, as
    CLIP's preprocessing resamples), mirrored left-right if ``flip``. The model's own
    preprocessing (resize + centre crop) is then a no-op on it, so a non-square box is not cut."""
    view = image.resize((size, size), Image.Resampling.BICUBIC, box=tuple(float(v) for v in box))
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else view


def region_image(image: Image.Image, kind: str, box, size: int) -> Image.Image:
    """The pixels the encoder sees for one region: the image for ``full``, AWT's stretched (and
    mirrored) view for ``view``/``view-flip``, the box cut out for every other kind."""
    if kind == "full":
        return image
    if kind in VIEW_KINDS:
        return render_view(image, box, kind == "view-flip", size)
    return image.crop(tuple(int(v) for v in box))
