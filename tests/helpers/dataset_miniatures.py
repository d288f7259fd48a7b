"""Miniatures of the seed papers' datasets: a few generated images in exactly the published folder
and file structure (label files included), for the readers of :mod:`pipeline.datasets`.

``build(name, root, classes)`` writes dataset ``name`` under ``root`` with one test image of each
class index in ``classes`` (plus, where the layout has a train split, a train image that must not
be read) and returns ``(root to pass as --root, {image file name: class index})``.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets import class_names, get_dataset
from pipeline.datasets.readers import imagenet_wnids

from . import write_image

SIZE = (64, 48)


def _img(path: Path, index: int, k: int = 0) -> str:
    write_image(path, size=SIZE, color=((37 * index) % 256, (91 * index) % 256, 120), seed=index * 7 + k)
    return path.name


def _ids(name: str) -> list[str]:
    """Folder-style identifiers of the classes (the names with '_' for ' ')."""
    return [n.replace(" ", "_") for n in class_names(get_dataset(name))]


def build_cub(root: Path, classes: list[int]):
    base = root / "CUB_200_2011"
    folders = [f"{i + 1:03d}.{n}" for i, n in enumerate(_ids("cub"))]
    (base / "images").mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(folders)))
    images, labels, split, expected = [], [], [], {}
    for k, c in enumerate(classes):
        for is_train in (1, 0):
            image_id = len(images) + 1
            rel = f"{folders[c]}/{folders[c].split('.', 1)[1]}_{image_id:04d}_{c}.jpg"
            name = _img(base / "images" / rel, c, is_train)
            images.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c + 1}\n")
            split.append(f"{image_id} {is_train}\n")
            if not is_train:
                expected[name] = c
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "train_test_split.txt").write_text("".join(split))
    return root, expected


def build_food101(root: Path, classes: list[int]):
    base = root / "food-101"
    ids = _ids("food101")
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in ids))
    (base / "meta" / "labels.txt").write_text("".join(f"{n}\n" for n in class_names(get_dataset("food101"))))
    test, train, expected = {}, {}, {}
    for k, c in enumerate(classes):
        for split, table in (("train", train), ("test", test)):
            stem = f"{1000 + 2 * k + (split == 'test')}"
            name = _img(base / "images" / ids[c] / f"{stem}.jpg", c, split == "test")
            table.setdefault(ids[c], []).append(f"{ids[c]}/{stem}")
            if split == "test":
                expected[name] = c
    for split, table in (("train", train), ("test", test)):
        (base / "meta" / f"{split}.json").write_text(json.dumps(table))
        (base / "meta" / f"{split}.txt").write_text("".join(f"{p}\n" for v in table.values() for p in v))
    return root, expected


def build_pets(root: Path, classes: list[int]):
    base = root / "oxford-iiit-pet"
    ids = _ids("pets")
    (base / "annotations").mkdir(parents=True)
    test, trainval, expected = [], [], {}
    for k, c in enumerate(classes):
        species = 1 if ids[c][0].isupper() else 2  # cat breeds are capitalised in the published names
        for n, lines in ((2 * k + 1, trainval), (2 * k + 2, test)):
            image_id = f"{ids[c]}_{n}"
            name = _img(base / "images" / f"{image_id}.jpg", c, n)
            lines.append(f"{image_id} {c + 1} {species} {c + 1}\n")
            if lines is test:
                expected[name] = c
    (base / "annotations" / "test.txt").write_text("".join(test))
    (base / "annotations" / "trainval.txt").write_text("".join(trainval))
    return root, expected


def build_dtd(root: Path, classes: list[int]):
    base = root / "dtd"
    ids = list(get_dataset("dtd").class_ids)
    (base / "labels").mkdir(parents=True)
    test, train, expected = [], [], {}
    for k, c in enumerate(classes):
        for n, lines in ((2 * k + 1, train), (2 * k + 2, test)):
            rel = f"{ids[c]}/{ids[c]}_{n:04d}.jpg"
            name = _img(base / "images" / rel, c, n)
            lines.append(rel + "\n")
            if lines is test:
                expected[name] = c
    (base / "labels" / "test1.txt").write_text("".join(test))
    (base / "labels" / "train1.txt").write_text("".join(train))
    (base / "labels" / "test2.txt").write_text("".join(train))  # another partition: must not be read
    return root, expected


def build_places365(root: Path, classes: list[int]):
    base = root / "places365"
    ids = _ids("places365")
    (base / "val_256").mkdir(parents=True)
    (base / "categories_places365.txt").write_text(
        "".join(f"/{c[0]}/{c.replace('-', '/')} {i}\n" for i, c in enumerate(ids)))
    lines, expected = [], {}
    for k, c in enumerate(classes):
        name = _img(base / "val_256" / f"Places365_val_{k + 1:08d}.jpg", c)
        lines.append(f"{name} {c}\n")
        expected[name] = c
    (base / "places365_val.txt").write_text("".join(lines))
    return root, expected


def build_eurosat(root: Path, classes: list[int]):
    ids = get_dataset("eurosat").class_ids
    expected = {}
    for k, c in enumerate(classes):
        expected[_img(root / "eurosat" / "2750" / ids[c] / f"{ids[c]}_{k + 1}.jpg", c)] = c
    return root, expected


def build_imagenet(root: Path, classes: list[int]):
    wnids = imagenet_wnids()
    expected = {}
    for k, c in enumerate(classes):
        expected[_img(root / "imagenet" / "val" / wnids[c] / f"ILSVRC2012_val_{k + 1:08d}.JPEG", c)] = c
    return root, expected


def build_imagenet_kaggle(root: Path, classes: list[int]):
    """ImageNet val as Kaggle ships it: flat images and LOC_val_solution.csv."""
    wnids = imagenet_wnids()
    base = root / "imagenet"
    rows, expected = ["ImageId,PredictionString\n"], {}
    for k, c in enumerate(classes):
        image_id = f"ILSVRC2012_val_{k + 1:08d}"
        expected[_img(base / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{image_id}.JPEG", c)] = c
        rows.append(f"{image_id},{wnids[c]} 10 12 40 44 {wnids[c]} 1 1 20 20 \n")
    (base / "LOC_val_solution.csv").write_text("".join(rows))
    (base / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    return root, expected


def build_imagenet_v2(root: Path, classes: list[int]):
    expected = {}
    for k, c in enumerate(classes):
        expected[_img(root / "imagenetv2-matched-frequency-format-val" / str(c) / f"{k:040x}.jpeg", c)] = c
    return root, expected


def _wnid_folders(folder: str, subset: str | None):
    def build(root: Path, classes: list[int]):
        wnids = imagenet_wnids()
        allowed = set(imagenet_wnids(subset)) if subset else set(wnids)
        expected = {}
        for k, c in enumerate(classes):
            assert wnids[c] in allowed, f"class {c} is not in {subset}"
            expected[_img(root / folder / wnids[c] / f"sketch_{k}.JPEG" if not subset else
                          root / folder / wnids[c] / f"{subset}_{k}.jpg", c)] = c
        return root, expected
    return build


BUILDERS = {
    "cub": build_cub, "food101": build_food101, "pets": build_pets, "dtd": build_dtd,
    "places365": build_places365, "eurosat": build_eurosat, "imagenet": build_imagenet,
    "imagenet-v2": build_imagenet_v2, "imagenet-sketch": _wnid_folders("sketch", None),
    "imagenet-r": _wnid_folders("imagenet-r", "imagenet_r"), "imagenet-a": _wnid_folders("imagenet-a", "imagenet_a"),
}

# classes each miniature holds: the first, a middle and the last class (IN-A/R: of their 200)
DEFAULT_CLASSES = {
    "cub": [0, 77, 199], "food101": [0, 50, 100], "pets": [0, 1, 36], "dtd": [0, 23, 46],
    "places365": [0, 15, 364], "eurosat": [0, 2, 9], "imagenet": [0, 27, 999], "imagenet-v2": [0, 27, 999],
    "imagenet-sketch": [0, 836, 999], "imagenet-r": [1, 2, 988], "imagenet-a": [6, 11, 988],
}


def build(name: str, root: Path, classes: list[int] | None = None):
    return BUILDERS[name](Path(root), list(DEFAULT_CLASSES[name] if classes is None else classes))
