"""Pictures: heatmap overlays (matplotlib colormap blended with Pillow), deletion/insertion
curves and a per-class accuracy bar chart, as PNG bytes. No GUI: the Agg backend only."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # before pyplot; never opens a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

HEATMAP_CMAP = "jet"
OVERLAY_ALPHA = 0.5


def normalise_map(heat: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Min-max scale to [0, 1] over the covered pixels (``mask``); 0 elsewhere and for flat maps."""
    h = np.asarray(heat, dtype=np.float64)
    m = np.ones(h.shape, bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        return np.zeros_like(h)
    lo, hi = h[m].min(), h[m].max()
    if hi - lo <= 1e-15 * max(abs(hi), 1e-300):
        return np.where(m, 1.0 if hi > 0 else 0.0, 0.0)
    return np.where(m, (h - lo) / (hi - lo), 0.0)


def colormap_lut(name: str = HEATMAP_CMAP, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 RGB table of a matplotlib colormap."""
    cmap = matplotlib.colormaps[name].resampled(n)
    return (cmap(np.arange(n))[:, :3] * 255).round().astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, mask: np.ndarray | None = None, alpha: float = OVERLAY_ALPHA,
            cmap: str = HEATMAP_CMAP) -> Image.Image:
    """Blend the colour-mapped (normalised) heatmap onto the image; pixels outside ``mask`` keep the image.

    out = (1-alpha)·image + alpha·cmap(norm(heat)), with cmap taken from a 256-entry table.
    """
    img = np.asarray(image.convert("RGB"), dtype=np.float64)
    if img.shape[:2] != heat.shape:
        raise ValueError(f"heatmap {heat.shape} does not match image {img.shape[:2]}")
    norm = normalise_map(heat, mask)
    lut = colormap_lut(cmap).astype(np.float64)
    colour = lut[np.clip((norm * 255).round().astype(np.int64), 0, 255)]
    out = (1 - alpha) * img + alpha * colour
    if mask is not None:
        out = np.where(np.asarray(mask, bool)[..., None], out, img)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


MAP_CMAP = "viridis"  # perceptually uniform: equal steps in value look like equal steps in colour
DISPLAY_SIDE = 384  # maps smaller than this are drawn upsampled (smoothly) to this long side
MAP_ALPHA = 0.8  # the map's opacity from OPAQUE_FROM of the image's scale up; it falls to 0 at TRANSPARENT_BELOW
TRANSPARENT_BELOW = 0.05  # share of the image's scale under which a pixel shows the image alone
OPAQUE_FROM = 0.4


def image_scale(maps) -> tuple[float, float]:
    """(lo, hi) shared by every map of one image: 0 (or the lowest value, when negative) to the
    highest value over all of them. One scale per image, so a flat map looks flat."""
    vals = [np.asarray(m, np.float64) for m in maps if m is not None and np.size(m)]
    if not vals:
        return 0.0, 1.0
    hi = max(float(v.max()) for v in vals)
    lo = min(0.0, min(float(v.min()) for v in vals))
    if lo > -1e-9 * abs(hi):  # float round-off of a non-negative density
        lo = 0.0
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if a.shape == (size[1], size[0]):
        return a
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR), np.float64)


def map_scales(class_map: np.ndarray, attribute_maps) -> tuple[tuple[float, float], tuple[float, float]]:
    """(class-map scale, attribute-map scale) of one (image, class): the class map on its own, every
    attribute map on the scale of the largest of *all* the class's attribute maps (not only those
    drawn), so a map's colours never depend on what else one call drew."""
    attrs = [] if attribute_maps is None else list(attribute_maps)
    return image_scale([class_map]), image_scale(attrs)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def heat_overlay(image: Image.Image, heat: np.ndarray, scale: tuple[float, float], *, cmap: str = MAP_CMAP,
                 display_side: int = DISPLAY_SIDE, label: str | None = None, colorbar: bool = True,
                 box=None, title: str | None = None) -> Image.Image:
    """The map drawn over the image on a fixed scale, with a colour bar.

    The image and the map are upsampled to ``display_side`` (long side; Lanczos for the image,
    bilinear for the map) when smaller. v = (heat - lo) / (hi - lo) clipped to [0, 1]; colour =
    cmap(v); opacity = MAP_ALPHA · clip((v - t) / (o - t), 0, 1) with t = TRANSPARENT_BELOW and
    o = OPAQUE_FROM, so low values leave the image visible. The colour bar on the right is labelled lo .. hi (``label``:
    what the values are) in a font sized to the picture, readable when a page shows it at half size.
    ``box`` (x0, y0, x1, y1 in the image's pixels) is outlined; ``title`` (class and attribute) is written above.
    """
    img = image.convert("RGB")
    W, H = img.size
    f = max(1.0, display_side / max(W, H))
    size = (max(1, round(W * f)), max(1, round(H * f)))
    if size != (W, H):
        img = img.resize(size, Image.Resampling.LANCZOS)
    heat = np.asarray(heat, np.float64)
    if heat.shape != (H, W):
        raise ValueError(f"heatmap {heat.shape} does not match image {(H, W)}")
    h = _resize_float(heat, size)
    lo, hi = scale
    v = np.clip((h - lo) / (hi - lo), 0.0, 1.0)
    lut = colormap_lut(cmap).astype(np.float64)
    colour = lut[np.clip((v * 255).round().astype(np.int64), 0, 255)]
    a = (MAP_ALPHA * np.clip((v - TRANSPARENT_BELOW) / (OPAQUE_FROM - TRANSPARENT_BELOW), 0.0, 1.0))[..., None]
    base = np.asarray(img, np.float64)
    out = Image.fromarray(((1 - a) * base + a * colour).round().clip(0, 255).astype(np.uint8))
    if box is not None:
        out = draw_box(out, [float(c) * f for c in box])
    if not colorbar and not title:
        return out
    fs = max(12, round(size[1] / 14))  # text height: ~1/14 of the map, so it survives the report's thumbnails
    font = _font(fs)
    bar_w, pad, text_w = (max(14, fs), 6, 5 * fs) if colorbar else (0, 0, 0)
    top = fs + 8 if title else 0
    canvas = Image.new("RGB", (size[0] + pad + bar_w + text_w, size[1] + top), (255, 255, 255))
    canvas.paste(out, (0, top))
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((2, 3), str(title), fill=(0, 0, 0), font=font)
    if not colorbar:
        return canvas
    grad = lut[np.linspace(255, 0, size[1]).round().astype(np.int64)].astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(grad[:, None, :], bar_w, axis=1)), (size[0] + pad, top))
    x = size[0] + pad + bar_w + 3
    d.text((x, top), f"{hi:.3g}", fill=(0, 0, 0), font=font)
    d.text((x, top + size[1] - fs - 2), f"{lo:.3g}", fill=(0, 0, 0), font=font)
    if label:
        d.text((x, top + size[1] // 2 - fs // 2), label[:8], fill=(80, 80, 80), font=font)
    return canvas


def draw_box(image: Image.Image, box, colour=(255, 255, 255), width: int = 2) -> Image.Image:
    """A copy of the image with a rectangle outline on ``box`` (x0, y0, x1, y1; x1/y1 exclusive),
    e.g. the object that carried a class."""
    out = image.copy()
    x0, y0, x1, y1 = (float(v) for v in box)
    ImageDraw.Draw(out).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI (the report embeds every picture, no external files)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    im = image.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def _plain(text: str) -> str:
    """Matplotlib reads $...$ as mathtext; class names are plain text."""
    return str(text).replace("$", r"\$")


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float] | None = None,
               title: str = "Deletion / insertion") -> bytes:
    """Mean curves, kind -> (fractions, scores); solid for our maps, dashed for random maps."""
    colours = {"deletion": "tab:red", "insertion": "tab:blue"}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for kind, (x, y) in sorted(curves.items()):
        base = kind.replace("random_", "")
        label = kind.replace("_", " ") + (f" (AUC {aucs[kind]:.3f})" if aucs and kind in aucs else "")
        ax.plot(x, y, linestyle="--" if kind.startswith("random_") else "-", marker="o", markersize=3,
                color=colours.get(base, "tab:gray"), label=label)
    ax.set_xlabel("fraction of pixels deleted / inserted")
    ax.set_ylabel("class score (normalised)")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _fig_png(fig)


def accuracy_png(per_class: list[tuple[str, int, int]], title: str = "Top-1 accuracy per class") -> bytes:
    """Horizontal bars: (class name, correct, total) per class."""
    per_class = sorted(per_class, key=lambda t: (-(t[1] / t[2]) if t[2] else 0, t[0]))
    names = [_plain(n if len(n) <= 30 else n[:29] + "…") for n, _, _ in per_class]
    acc = [c / t if t else 0.0 for _, c, t in per_class]
    fig, ax = plt.subplots(figsize=(5, max(1.6, 0.28 * len(names) + 0.8)))
    y = np.arange(len(names))
    ax.barh(y, acc, color="tab:green")
    for yi, (a, (_, c, t)) in zip(y, zip(acc, per_class)):
        ax.text(min(a + 0.01, 0.9), yi, f"{c}/{t}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    return _fig_png(fig)


def compare_png(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], aucs: dict[str, dict[str, float]],
                title: str = "Map kinds: deletion and insertion") -> bytes:
    """Two panels (deletion, insertion): the mean curve of each map kind (kind -> mode -> (x, y)),
    AUC in the legend; random maps dashed grey."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    colours = matplotlib.colormaps["tab10"]
    for ax, mode, note in ((axes[0], "deletion", "lower is better"), (axes[1], "insertion", "higher is better")):
        for i, (kind, modes) in enumerate(curves.items()):
            if mode not in modes:
                continue
            x, y = modes[mode]
            auc = aucs.get(kind, {}).get(mode)
            rnd = kind == "random"
            ax.plot(x, y, linestyle="--" if rnd else "-", color="0.4" if rnd else colours(i % 10), marker="o", markersize=2,
                    label=f"{_plain(kind)}" + (f" ({auc:.3f})" if auc is not None else ""))
        ax.set_title(f"{mode} ({note})", fontsize=9)
        ax.set_xlabel("fraction of pixels deleted / inserted")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("class probability")
    fig.suptitle(title, fontsize=10)
    return _fig_png(fig)
