import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU path, as CI does
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSL_STORE", str(tmp_path / "default-store"))


@pytest.fixture(scope="session")
def tiny_model():
    from pipeline.models import load_model

    return load_model("zsl-tiny", "random:0", device="cpu")


def write_image(path: Path, size=(96, 80), color=(200, 30, 30), fmt=None, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 60).astype(np.uint8) + np.array(color, np.uint8) // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Two classes, three images each, JPEG and PNG, one folder per class."""
    root = tmp_path / "imgs"
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(3):
            ext = "jpg" if i % 2 else "png"
            write_image(root / c / f"{i}.{ext}", size=(96 + 8 * i, 80), color=color, seed=i + (10 if c == "dog" else 0))
    return root


@pytest.fixture
def attr_file(tmp_path):
    p = tmp_path / "attrs.json"
    p.write_text(json.dumps({"cat": ["pointy ears", "a long tail", "whiskers"], "dog": ["floppy ears", "has a wet nose"]}))
    return p
