"""One reader per published dataset layout: a dataset folder in, ``(path, class index)`` pairs out.

Labels come from the dataset's own label files where it has them (CUB's ``image_class_labels.txt``,
Food-101's ``meta/test.json``, Pets' ``annotations/test.txt``, DTD's ``labels/test1.txt``,
Places365's ``places365_val.txt``, ImageNet's ``LOC_val_solution.csv``), else from the folder
names the layout defines (wnids, ImageNet-V2's 0..999, EuroSAT's class folders), each mapped to its
index through a fixed list, so a partial copy of a dataset keeps the true indices. torchvision reads
Food-101 and Pets (its own offline readers); it is not used where it would download, check md5 sums
of the label files (Places365) or number the classes it happens to find (DTD, EuroSAT's ImageFolder).
Nothing here downloads: a missing file is one line naming the file the layout expects.
"""
from __future__ import annotations

import csv
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..imaging import IMAGE_EXTENSIONS

Pairs = list[tuple[str, int]]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: missing; the {what} layout needs this file (nothing is downloaded).")
    return path


def _lines(path: Path, what: str) -> list[list[str]]:
    """A label file's non-empty lines, split on whitespace."""
    try:
        text = _need(path, what).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; is it the {what} label file?") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def _bad_line(path: Path, n: int, expected: str) -> InputError:
    return InputError(f"{path}: line {n}: expected '{expected}'; is this the published file?")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@lru_cache(maxsize=None)
def imagenet_wnids(subset: str = "imagenet") -> tuple[str, ...]:
    """The 1,000 ImageNet wnids in class-index order (sorted), or the 200 of ``imagenet_a`` /
    ``imagenet_r`` (the lists timm ships; equal to WCA's ``imagenet_{a,r}_lt`` indices)."""
    data = pkgutil.get_data("timm", f"data/_info/{subset}_synsets.txt")
    if data is None:  # pragma: no cover - timm comes with open_clip
        raise InputError(f"timm's {subset}_synsets.txt is missing; reinstall timm (open_clip depends on it).")
    return tuple(data.decode().split())


def _wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def _folder_classes(folder: Path, index: Callable[[str], int | None], what: str, expected: str) -> Pairs:
    """Images in ``folder/<class folder>/``; ``index`` maps a class folder's name to its class."""
    out: Pairs = []
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    for sub in subdirs:
        i = index(sub.name)
        if i is None:
            raise InputError(f"{sub}: not a {what} class folder (expected {expected}).")
        out += [(str(f), i) for f in _image_files(sub)]
    return out


# ---- the layouts ------------------------------------------------------------------------
def read_imagenet(folder: Path, record) -> Pairs:
    """ILSVRC-2012 val: ``val/<wnid>/*.JPEG``, or Kaggle's ``LOC_val_solution.csv`` beside
    ``ILSVRC/Data/CLS-LOC/val/<ImageId>.JPEG``."""
    index = _wnid_index()
    solution = folder / "LOC_val_solution.csv"
    if not solution.exists():
        return _folder_classes(_need(folder / "val", "ImageNet val (val/<wnid>/ or LOC_val_solution.csv)"),
                               index.get, "ImageNet", "a wnid such as n01440764")
    images = folder / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    out: Pairs = []
    with open(solution, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["ImageId", "PredictionString"]:
            raise _bad_line(solution, 1, "ImageId,PredictionString")
        for n, row in enumerate(rows, 2):
            wnid = row[1].split()[0] if len(row) == 2 and row[1].split() else None
            if wnid not in index:
                raise _bad_line(solution, n, "ImageId,<wnid> x y x y ...")
            out.append((str(images / f"{row[0]}.JPEG"), index[wnid]))
    return sorted(out)


def read_imagenet_v2(folder: Path, record) -> Pairs:
    """ImageNet-V2: ``<0..999>/*.jpeg``, the folder is the class index."""
    def index(name: str) -> int | None:
        return int(name) if name.isdigit() and int(name) < record.n_classes else None

    return _folder_classes(folder, index, "ImageNet-V2", "0..999")


def read_imagenet_wnids(folder: Path, record) -> Pairs:
    """ImageNet-Sketch/-R/-A: ``<wnid>/*``; -R and -A hold only their 200 classes."""
    index = _wnid_index()
    allowed = set(imagenet_wnids(record.subset)) if record.subset else set(index)
    return _folder_classes(folder, lambda w: index[w] if w in allowed else None, record.title,
                           f"one of its {len(allowed)} wnids")


def read_cub(folder: Path, record) -> Pairs:
    """CUB-200-2011: ``images.txt`` (id path), ``image_class_labels.txt`` (id class 1..200),
    ``train_test_split.txt`` (id is_training_image); the test split is is_training_image = 0."""
    paths = {}
    for n, parts in enumerate(_lines(folder / "images.txt", "CUB-200-2011"), 1):
        if len(parts) != 2:
            raise _bad_line(folder / "images.txt", n, "<image_id> <path>")
        paths[parts[0]] = parts[1]
    labels = _id_ints(folder / "image_class_labels.txt", "<image_id> <class_id>")
    is_train = _id_ints(folder / "train_test_split.txt", "<image_id> <is_training_image>")
    n_classes = len(_lines(folder / "classes.txt", "CUB-200-2011"))
    if n_classes != record.n_classes:
        raise InputError(f"{folder / 'classes.txt'}: {n_classes} classes; CUB-200-2011 has {record.n_classes}.")
    out: Pairs = []
    for image_id, path in paths.items():
        if image_id not in labels or image_id not in is_train:
            raise InputError(f"{folder}: image {image_id} of images.txt has no line in image_class_labels.txt "
                             "or train_test_split.txt.")
        if not 1 <= labels[image_id] <= record.n_classes:
            raise InputError(f"{folder / 'image_class_labels.txt'}: image {image_id}: class {labels[image_id]} "
                             f"is not in 1..{record.n_classes}.")
        if is_train[image_id] == 0:
            out.append((str(folder / "images" / path), labels[image_id] - 1))
    return out


def _id_ints(path: Path, expected: str) -> dict[str, int]:
    out = {}
    for n, parts in enumerate(_lines(path, "CUB-200-2011"), 1):
        if len(parts) != 2 or not parts[1].isdigit():
            raise _bad_line(path, n, expected)
        out[parts[0]] = int(parts[1])
    return out


def read_food101(folder: Path, record) -> Pairs:
    """Food-101 test split by torchvision's ``Food101`` (``meta/test.json``); torchvision numbers
    the classes it finds, so each is mapped through ``meta/classes.txt`` (all 101, sorted)."""
    from torchvision.datasets import Food101  # heavy: imported on use

    _need(folder / "meta" / "test.json", "Food-101")
    class_ids = [p[0] for p in _lines(folder / "meta" / "classes.txt", "Food-101")]
    tv = _torchvision(Food101, folder, "food-101", split="test")
    index = {c: i for i, c in enumerate(class_ids)}
    out: Pairs = []
    for path, label in zip(tv._image_files, tv._labels):
        name = tv.classes[label]
        if name not in index:
            raise InputError(f"{folder / 'meta' / 'test.json'}: class {name!r} is not in meta/classes.txt.")
        out.append((str(path), index[name]))
    return out


def read_pets(folder: Path, record) -> Pairs:
    """Oxford-IIIT Pets test split by torchvision's ``OxfordIIITPet`` (``annotations/test.txt``:
    name class_id species breed_id; class index = class_id - 1, torchvision's order)."""
    from torchvision.datasets import OxfordIIITPet  # heavy: imported on use

    _need(folder / "annotations" / "test.txt", "Oxford-IIIT Pets")
    _need(folder / "images", "Oxford-IIIT Pets")
    tv = _torchvision(OxfordIIITPet, folder, "oxford-iiit-pet", split="test", target_types="category")
    return [(str(p), int(label)) for p, label in zip(tv._images, tv._labels)]


def _torchvision(cls, folder: Path, expected_name: str, **kwargs):
    """torchvision's reader on ``folder`` (which it expects to be called ``expected_name``), never downloading."""
    if folder.name != expected_name:
        raise InputError(f"{folder}: torchvision's {cls.__name__} reads a folder named {expected_name}/; "
                         f"rename or link it to {folder.parent / expected_name}.")
    try:
        return cls(str(folder.parent), download=False, **kwargs)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise InputError(f"{folder}: torchvision's {cls.__name__} cannot read it: {str(exc).splitlines()[0]}") from None


def read_dtd(folder: Path, record) -> Pairs:
    """DTD test partition 1: ``labels/test1.txt`` lines ``<class>/<file>``, images in ``images/``."""
    path = folder / "labels" / "test1.txt"
    index = {c: i for i, c in enumerate(record.class_ids)}
    out: Pairs = []
    for n, parts in enumerate(_lines(path, "DTD"), 1):
        cls = parts[0].split("/")[0] if len(parts) == 1 else None
        if cls not in index or parts[0].count("/") != 1:
            raise _bad_line(path, n, "<class>/<file>.jpg")
        out.append((str(folder / "images" / parts[0]), index[cls]))
    return out


def read_places365(folder: Path, record) -> Pairs:
    """Places365 val: ``places365_val.txt`` (file index) over ``val_256/`` (or ``val_large/``),
    the 365 classes of ``categories_places365.txt``. (torchvision's ``Places365`` checks the
    files' md5 sums, so it reads no partial copy; the format is the same.)"""
    n_classes = len(_lines(folder / "categories_places365.txt", "Places365"))
    if n_classes != record.n_classes:
        raise InputError(f"{folder / 'categories_places365.txt'}: {n_classes} categories; Places365 has "
                         f"{record.n_classes}.")
    images = folder / "val_256"
    if not images.is_dir() and (folder / "val_large").is_dir():
        images = folder / "val_large"
    _need(images, "Places365 (val_256/ or val_large/)")
    path = folder / "places365_val.txt"
    out: Pairs = []
    for n, parts in enumerate(_lines(path, "Places365"), 1):
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= n_classes:
            raise _bad_line(path, n, f"<file> <class 0..{n_classes - 1}>")
        out.append((str(images / parts[0].lstrip("/")), int(parts[1])))
    return out


def read_eurosat(folder: Path, record) -> Pairs:
    """EuroSAT RGB: ``2750/<Class>/<Class>_N.jpg``; class index = the folder's place in the 10
    sorted class folders (what torchvision's ``EuroSAT`` ImageFolder gives on the full set)."""
    index = {c: i for i, c in enumerate(record.class_ids)}
    return _folder_classes(folder, index.get, "EuroSAT", ", ".join(record.class_ids))


# layout -> (reader, test that a folder holds this layout)
LAYOUTS: dict[str, tuple[Callable[[Path, object], Pairs], Callable[[Path], bool]]] = {
    "imagenet": (read_imagenet, lambda f: (f / "val").is_dir() or (f / "LOC_val_solution.csv").is_file()),
    "imagenet-v2": (read_imagenet_v2, lambda f: any(p.name.isdigit() for p in f.iterdir() if p.is_dir())),
    "imagenet-wnids": (read_imagenet_wnids, lambda f: any(p.name.startswith("n0") or p.name.startswith("n1")
                                                          for p in f.iterdir() if p.is_dir())),
    "cub": (read_cub, lambda f: (f / "images.txt").is_file()),
    "food101": (read_food101, lambda f: (f / "meta").is_dir()),
    "pets": (read_pets, lambda f: (f / "annotations").is_dir()),
    "dtd": (read_dtd, lambda f: (f / "labels").is_dir()),
    "places365": (read_places365, lambda f: (f / "places365_val.txt").is_file()),
    "eurosat": (read_eurosat, lambda f: any((f / c).is_dir() for c in ("AnnualCrop", "Forest", "Highway", "River", "SeaLake"))),
}
