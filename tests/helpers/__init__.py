"""Test helpers: the one reference Sinkhorn/LaZSL loop (:mod:`.reference`), store builders
(:mod:`.stores`), and a loopback fake LLM server (:mod:`.fake_llm_server`)."""
import os
from pathlib import Path

import numpy as np
from PIL import Image

# ../shared beside the checkout; ZSL_SHARED names it for a checkout elsewhere (a git worktree)
SHARED = Path(os.environ.get("ZSL_SHARED") or Path(__file__).resolve().parents[3] / "shared")


def write_image(path: Path, size=(96, 80), color=(200, 30, 30), fmt=None, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 60).astype(np.uint8) + np.array(color, np.uint8) // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path
