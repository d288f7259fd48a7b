"""Datasets as they lie on disk: one registry of records (``datasets.json``), one reader per layout.

``read_dataset("cub", root)`` finds CUB-200-2011 under ``root``, reads its published label files
(:mod:`pipeline.datasets.readers`) and labels every image with the class name the upstream methods
use for its class index (``names/*.json``, open_clip's ImageNet list). ``index-images --dataset NAME
--root DIR`` indexes those images and records :meth:`DatasetImages.describe` (the dataset, its split,
the name set, every class name in label order and, for ImageNet-A/-R, the 200 classes their scores
are restricted to) in the index run's params; ``evaluate`` applies that restriction
(:func:`restrict_ranking`). Nothing here downloads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import InputError
from ..names import norm_class_name

DATASET_DIR = Path(__file__).parent


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset of the seed papers: its layout, split, and the class-name sets of the upstream methods."""

    name: str
    title: str
    layout: str
    folders: tuple[str, ...]
    split: str
    n_classes: int
    names: dict  # name set -> source ({"file": ...} or {"open_clip": ..., "replace": {...}})
    default_names: str
    subset: str | None = None  # timm's list of the classes the scores are restricted to (imagenet_a / imagenet_r)
    class_ids: tuple[str, ...] = field(default=())  # the layout's class folder names, in label order


@lru_cache(maxsize=None)
def _records() -> dict[str, DatasetRecord]:
    raw = json.loads((DATASET_DIR / "datasets.json").read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    out = {}
    for name, d in raw.items():
        names = raw[d["names"]]["names"] if isinstance(d["names"], str) else d["names"]
        out[name] = DatasetRecord(name=name, title=d["title"], layout=d["layout"], folders=tuple(d["folders"]),
                                  split=d["split"], n_classes=d["n_classes"], names=names,
                                  default_names=d["default_names"], subset=d.get("subset"),
                                  class_ids=tuple(d.get("class_ids", ())))
    return out


def dataset_names() -> list[str]:
    return list(_records())


def get_dataset(name: str) -> DatasetRecord:
    records = _records()
    if name not in records:
        raise InputError(f"Unknown dataset {name!r}; known: {', '.join(records)}.")
    return records[name]


def class_names(record: DatasetRecord, name_set: str | None = None) -> list[str]:
    """The class names of ``name_set`` (default: the record's) in label order."""
    name_set = name_set or record.default_names
    source = record.names.get(name_set)
    if source is None:
        raise InputError(f"--class-names {name_set}: {record.name} has {', '.join(record.names)}.")
    return list(_load_names(json.dumps(source, sort_keys=True)))


@lru_cache(maxsize=None)
def _load_names(source_json: str) -> tuple[str, ...]:
    source = json.loads(source_json)
    if "file" in source:
        names = json.loads((DATASET_DIR / "names" / source["file"]).read_text(encoding="utf-8"))
    else:
        from open_clip import zero_shot_metadata  # heavy: imported on use

        names = list(getattr(zero_shot_metadata, source["open_clip"]))
    for index, name in source.get("replace", {}).items():
        names[int(index)] = name
    return tuple(names)


def subset_indices(record: DatasetRecord) -> list[int] | None:
    """Indices (into the 1,000 ImageNet classes) a restricted dataset is scored on, or None."""
    if not record.subset:
        return None
    from .readers import imagenet_wnids  # heavy: imported on use (PIL, numpy via pipeline.imaging)

    index = {w: i for i, w in enumerate(imagenet_wnids())}
    return [index[w] for w in imagenet_wnids(record.subset)]


@dataclass
class DatasetImages:
    """A dataset read from disk: its images with labels, and what to record about it."""

    record: DatasetRecord
    root: str
    folder: str
    name_set: str
    names: list[str]
    items: list  # pipeline.imaging.ImageItem
    indices: list[int]  # class index of each item

    @property
    def subset(self) -> list[str] | None:
        idx = subset_indices(self.record)
        return None if idx is None else [self.names[i] for i in idx]

    def describe(self) -> dict:
        """What ``index_runs.params['dataset']`` records: enough to re-read the same images and labels."""
        return {"name": self.record.name, "title": self.record.title, "root": self.root, "folder": self.folder,
                "split": self.record.split, "class_names": self.name_set, "classes": list(self.names),
                "restrict_to": self.subset, "n_images": len(self.items)}


def find_folder(record: DatasetRecord, root: Path) -> Path:
    """``root`` itself, or the sub-folder (up to two levels, by the published names) holding the layout."""
    from .readers import LAYOUTS  # heavy: imported on use (PIL, numpy via pipeline.imaging)

    looks_right = LAYOUTS[record.layout][1]
    if not root.is_dir():
        raise InputError(f"--root {root}: no such folder; pass the folder that holds {record.title} "
                         f"({' or '.join(record.folders)}).")
    candidates = [root] + [root / a for a in record.folders] + [root / a / b for a in record.folders for b in record.folders]
    for c in candidates:
        if c.is_dir() and looks_right(c):
            return c
    raise InputError(f"--root {root}: no {record.title} layout found in it or in {'/, '.join(record.folders)}/ "
                     f"below it ({record.split.split(';')[0]}); see docs/reproduce.md.")


def read_dataset(name: str, root: str | Path, name_set: str | None = None) -> DatasetImages:
    """The images of dataset ``name`` under ``root``, labelled with ``name_set``'s class names."""
    # heavy: imported on use (PIL, numpy: `pipeline --help` imports this package)
    from ..imaging import ImageItem
    from .readers import LAYOUTS

    record = get_dataset(name)
    names = class_names(record, name_set)
    if len(names) != record.n_classes:  # a shipped list of the wrong length fails loudly
        raise InputError(f"{record.name}: the {name_set or record.default_names} class names are {len(names)}, "
                         f"not {record.n_classes}.")
    folder = find_folder(record, Path(root))
    pairs = LAYOUTS[record.layout][0](folder, record)
    if not pairs:
        raise InputError(f"{folder}: the {record.title} label files list no images.")
    missing = [p for p, _ in pairs[:1] + pairs[-1:] if not Path(p).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: listed by the {record.title} label files but missing; is the copy complete?")
    items = [ImageItem(str(Path(p).resolve()), names[i], f"{record.name} {folder}") for p, i in pairs]
    return DatasetImages(record, str(root), str(folder), name_set or record.default_names, names, items,
                         [i for _, i in pairs])


def restrict_ranking(ranked: list[list[int]], allowed: set[int]) -> list[list[int]]:
    """Each image's ranked class ids restricted to ``allowed``: the argmax of the restricted scores
    is the first allowed class of the full ranking (how upstream scores ImageNet-A/-R)."""
    return [[c for c in r if c in allowed] for r in ranked]


def restricted_class_ids(index_runs: list[dict], class_ids_by_norm: dict[str, int]) -> set[int] | None:
    """The store's class ids a run's accuracy is restricted to: the classes an index run's dataset
    is scored on (ImageNet-A/-R: 200 of the 1,000) that the store holds, or None for every class.
    A store whose index runs disagree (an ImageNet-A run beside a full ImageNet one) is refused:
    one dataset per store."""
    recorded = [(p.get("dataset") or {}).get("restrict_to") for p in index_runs]
    kinds = {None if r is None else tuple(r) for r in recorded}
    if kinds == {None} or not kinds:
        return None
    if len(kinds) > 1:
        raise InputError("This store's images come from datasets scored on different class sets (e.g. ImageNet-A "
                         "beside ImageNet); index each dataset into its own --store.")
    ids = {class_ids_by_norm[norm_class_name(n)] for n in next(iter(kinds)) if norm_class_name(n) in class_ids_by_norm}
    if not ids:
        raise InputError("None of the classes this store's dataset is scored on is in the store; build-attributes "
                         "with the ImageNet file first.")
    return ids
