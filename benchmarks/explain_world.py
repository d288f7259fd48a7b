"""The demo's toy world as arrays, for measuring explanations (shared by the explain benchmarks).

:func:`build_world` runs the demo's stages for real (``make_toyworld`` → ``build-attributes`` →
``index-images`` with 30 crops, crop_min 0.5 → ``classify --method lazsl --top-k 0``), then
reads the store back into memory: every image's pixels, its crop boxes and stored region
embeddings, the attribute embeddings, and the LaZSL result with full plans recomputed by
:func:`queries.scoring.lazsl_scores` from the stored embeddings (checked to give the stored
predictions). Ground-truth part boxes come from the world's ``boxes.jsonl``.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_CROPS = 30
CROP_MIN = 0.5
THETA = 0.8
TOLERANCE = 8.0  # pointing game: the part box grown by 8 px on the 128 px image


@dataclass
class World:
    seed: int
    root: Path
    model: object
    image_ids: np.ndarray  # (B,)
    paths: list[str]
    arrays: np.ndarray  # (B, H, W, 3) uint8
    labels: np.ndarray  # (B,) class index (0..C-1) of the true class
    class_ids: np.ndarray  # (C,) store class ids, column order of every score matrix
    class_names: list[str]
    boxes: np.ndarray  # (B, R, 4) crop boxes (the full view excluded), image pixels
    full: np.ndarray  # (B, D) stored full-view embeddings
    crops: np.ndarray  # (B, R, D) stored crop embeddings
    attr: np.ndarray  # (A, D) attribute embeddings (DCLIP prompts)
    attr_class: np.ndarray  # (A,) class index of each attribute
    attr_text: list[str]  # descriptor text ("a red crest")
    attr_part: list[str]  # part that carries it ("crest")
    scores: np.ndarray  # (B, C) LaZSL scores
    plan: np.ndarray  # (B, C, R, N) transport plans
    attr_index: np.ndarray  # (B, C, N) attribute row per plan column
    crop_mass: np.ndarray  # (B, R)
    part_boxes: list[dict] = field(default_factory=list)  # per image: {part: (x0, y0, x1, y1)}
    store_accuracy: float = 0.0
    seconds: float = 0.0

    @property
    def predictions(self) -> np.ndarray:
        return self.scores.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean())

    def siblings(self, c1: int, c2: int) -> bool:
        """Classes that share crest, tail and legs (differ only in the wing pattern)."""
        def key(c):
            t = {self.attr_part[a]: self.attr_text[a] for a in np.flatnonzero(self.attr_class == c)}
            return tuple(sorted((p, v) for p, v in t.items() if p != "wings"))
        return c1 != c2 and key(c1) == key(c2)


def build_world(seed: int, root: str | Path | None = None, n_per_class: int = 20, model=None,
                n_crops: int = N_CROPS, crop_min: float = CROP_MIN, theta: float = THETA) -> World:
    from PIL import Image

    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.classify import classify
    from pipeline.stages.index_images import index_images
    from pipeline.models import load_model
    from pipeline.config import RegionConfig
    from pipeline.toy.world import PART_NAMES, PARTS, make_toyworld
    from queries.lazsl import lazsl_scores
    from stores.catalog import Catalog
    from stores.parquet import embeddings_to_numpy, read_tables

    t0 = time.perf_counter()
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix=f"explain-world-{seed}-"))
    world_dir = root / "world"
    if not (world_dir / "boxes.jsonl").is_file():
        make_toyworld(world_dir, n_per_class=n_per_class, seed=seed, setting="parts")
    model = model or load_model("zsl-tiny", "toy-clip", device="cpu")
    store = root / "store"
    fresh = not store.exists()
    with Catalog(store) as cat:
        if fresh:
            import_attribute_file(cat, model, world_dir / "attributes.json", progress=False)
            index_images(cat, model, [str(world_dir / "images")], RegionConfig(n_crops=n_crops, crop_min=crop_min),
                         progress=False)
            classify(cat, "lazsl", MethodConfig(top_k=0, theta=theta), model=model, progress=False)
        run_id = cat.query("SELECT max(run_id) FROM runs").fetchone()[0]
        cls_rows = cat.query("SELECT class_id, name FROM classes ORDER BY class_id").fetchall()
        class_ids = np.array([r[0] for r in cls_rows], np.int64)
        names = [r[1] for r in cls_rows]
        arows = cat.query(
            "SELECT a.attr_id, a.class_id, a.text, e.embedding FROM attributes a JOIN attribute_embeddings e USING (attr_id) "
            "WHERE e.model = ? AND a.style = 'descriptors' ORDER BY a.attr_id", [model.fingerprint]).fetchall()
        attr = np.array([r[3] for r in arows], np.float32)
        attr_class = np.searchsorted(class_ids, np.array([r[1] for r in arows]))
        attr_text = [r[2] for r in arows]
        part_of = {PARTS[p][1].format(v): p for p in PART_NAMES for v in PARTS[p][0]}
        attr_part = [part_of.get(t, "?") for t in attr_text]
        imgs = cat.query("SELECT image_id, path, label FROM images ORDER BY path").fetchall()
        t = read_tables(cat.shard_files("regions"), columns=["region_id", "image_id", "kind", "x0", "y0", "x1", "y1", "embedding"])
        emb = embeddings_to_numpy(t["embedding"])
        img_col = t["image_id"].to_numpy()
        kind = np.array(t["kind"].to_pylist())
        xy = np.stack([t[c].to_numpy() for c in ("x0", "y0", "x1", "y1")], 1)
        pred_store = dict(cat.query("SELECT image_id, class_id FROM predictions WHERE run_id = ? AND rank = 1",
                                    [run_id]).fetchall())
    image_ids, paths, labels, boxes, full, crops, arrays = [], [], [], [], [], [], []
    name_index = {n: i for i, n in enumerate(names)}
    for iid, path, label in imgs:
        rows = np.flatnonzero(img_col == iid)
        f = rows[kind[rows] == "full"]
        c = rows[kind[rows] != "full"]
        image_ids.append(iid)
        paths.append(path)
        labels.append(name_index[label])
        full.append(emb[f[0]])
        crops.append(emb[c])
        boxes.append(xy[c])
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
    full, crops = np.stack(full), np.stack(crops)
    res = lazsl_scores(full, crops, attr, attr_class, theta=theta)
    scores = np.asarray(res.scores)
    pred = scores.argmax(1)
    agree = np.mean([class_ids[p] == pred_store[i] for p, i in zip(pred, image_ids)])
    if agree < 0.99:
        raise RuntimeError(f"in-memory LaZSL agrees with the stored run on only {agree:.3f} of images")
    parts: dict[str, dict] = {}
    for line in (world_dir / "boxes.jsonl").read_text().splitlines():
        r = json.loads(line)
        parts.setdefault(str((world_dir / r["image"]).resolve()), {})[r["part"]] = (r["x0"], r["y0"], r["x1"], r["y1"])
    part_boxes = [parts[str(Path(p).resolve())] for p in paths]
    labels = np.array(labels)
    store_acc = float(np.mean([pred_store[i] == class_ids[l] for i, l in zip(image_ids, labels)]))
    return World(seed, root, model, np.array(image_ids), paths, np.stack(arrays), labels, class_ids, names,
                 np.stack(boxes).astype(np.float64), full, crops, attr, attr_class, attr_text, attr_part, scores,
                 np.asarray(res.plan), np.asarray(res.attr_index), np.asarray(res.crop_mass), part_boxes,
                 store_acc, time.perf_counter() - t0)
