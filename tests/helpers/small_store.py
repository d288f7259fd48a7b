"""The smallest complete store: 2 classes, 6 images (3 per class), 4 crops each, one LaZSL
run with alignments, built with the stage functions in a few seconds. For tests that need
every command to have something to work on (the option fuzz, the hostile-input probes)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import write_image

MODEL_ARGS = ["--model", "zsl-tiny", "--pretrained", "random:0", "--device", "cpu"]


@dataclass
class SmallStore:
    root: Path  # the folder holding everything below
    store: Path
    images: Path  # images/<class>/<i>.png
    attrs: Path  # the DCLIP JSON the attributes came from
    classes: Path  # classes.txt (one name a line)
    boxes: Path  # a boxes JSONL for the pointing game
    run_id: int
    image_path: str  # one indexed image


def build_small_store(root: Path, model, n_crops: int = 4) -> SmallStore:
    from pipeline.config import RegionConfig
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.classify import classify
    from pipeline.stages.index_images import index_images
    from stores.catalog import Catalog

    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(3):
            write_image(images / c / f"{i}.png", size=(64 + 8 * i, 56), color=color, seed=i + (10 if c == "dog" else 0))
    attrs = root / "attrs.json"
    attrs.write_text(json.dumps({"cat": ["pointy ears", "a long tail", "whiskers"], "dog": ["floppy ears", "a wet nose"]}))
    classes = root / "classes.txt"
    classes.write_text("cat\ndog\n")
    image_path = str((images / "cat" / "0.png").resolve())
    boxes = root / "boxes.jsonl"
    boxes.write_text(json.dumps({"image": image_path, "class": "cat", "box": [0, 0, 32, 28]}) + "\n")
    store = root / "store"
    with Catalog(store) as cat:
        import_attribute_file(cat, model, attrs, progress=False)
        index_images(cat, model, [str(images)], RegionConfig(n_crops=n_crops), progress=False)
        run_id = classify(cat, "lazsl", MethodConfig(top_k=0), progress=False).run_id
    return SmallStore(root, store, images, attrs, classes, boxes, run_id, image_path)
