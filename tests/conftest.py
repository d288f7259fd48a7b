import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU path, as CI does
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import SHARED, write_image  # noqa: F401  (SHARED for tests that read ../shared)


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSL_STORE", str(tmp_path / "default-store"))


@pytest.fixture(scope="session")
def tiny_model():
    from pipeline.models import load_model

    return load_model("zsl-tiny", "random:0", device="cpu")


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
