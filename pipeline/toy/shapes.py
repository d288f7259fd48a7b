"""The first toy world: coloured shapes, one per image (kept for fast tests of the stages)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEMO_CLASSES = {
    "red circle": ["a round shape", "red colour", "a smooth outline"],
    "blue square": ["four straight sides", "blue colour", "sharp corners"],
    "green triangle": ["three corners", "green colour", "a pointed top"],
    "yellow bar": ["a long thin shape", "yellow colour", "parallel edges"],
}
_COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (230, 210, 40)}


def make_shapes_world(out: Path, per_class: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """A few PNGs per class (one folder per class) and a DCLIP-style attribute JSON."""
    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    for name in DEMO_CLASSES:
        colour, shape = name.split()
        d = img_dir / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(200, 255, 3)))
            dr = ImageDraw.Draw(im)
            cx, cy, r = (int(v) for v in (*rng.integers(40, 88, 2), rng.integers(18, 34)))
            fill = _COLOURS[colour]
            if shape == "circle":
                dr.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "square":
                dr.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "triangle":
                dr.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            else:
                dr.rectangle([cx - r, cy - 6, cx + r, cy + 6], fill=fill)
            im.save(d / f"{i:03d}.png")
    attrs = out / "attributes.json"
    attrs.write_text(json.dumps(DEMO_CLASSES, indent=2))
    return img_dir, attrs
