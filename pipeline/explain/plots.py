"""Pictures: heatmap overlays (matplotlib colormap blended with Pillow), deletion/insertion
curves and a per-class accuracy bar chart, as PNG bytes. No GUI: the Agg backend only."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # before pyplot; never opens a window

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

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


def draw_box(image: Image.Image, box, colour=(255, 255, 255), width: int = 2) -> Image.Image:
    """A copy of the image with a rectangle outline on ``box`` (x0, y0, x1, y1; x1/y1 exclusive),
    e.g. the object that carried a class."""
    from PIL import ImageDraw

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
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float] | None = None,
               title: str = "Deletion / insertion") -> bytes:
    """Mean curves, kind -> (fractions, scores); solid for our maps, dashed for random maps."""
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
