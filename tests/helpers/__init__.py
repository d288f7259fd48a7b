"""Test helpers: the one reference Sinkhorn/LaZSL loop (:mod:`.reference`), store builders
(:mod:`.stores`), and a loopback fake LLM server (:mod:`.fake_llm_server`)."""
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared beside the checkout


def write_image(path: Path, size=(96, 80), color=(200, 30, 30), fmt=None, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 60).astype(np.uint8) + np.array(color, np.uint8) // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path
