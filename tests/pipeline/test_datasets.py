"""Datasets as they lie on disk: each miniature (published layout, label files included) is read
with the right labels, class order and class names (pipeline/datasets)."""
import json
from pathlib import Path

import pytest

from pipeline.datasets import (class_names, dataset_names, get_dataset, read_dataset, restrict_ranking,
                               subset_indices)
from pipeline.datasets.readers import imagenet_wnids
from pipeline.errors import InputError
from tests.helpers import SHARED
from tests.helpers.dataset_miniatures import BUILDERS, build, build_imagenet_kaggle

DCLIP = SHARED / "data" / "descriptors" / "dclip"


def test_every_registered_dataset_has_a_miniature():
    assert sorted(BUILDERS) == sorted(dataset_names())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_miniature_is_read_with_its_labels_and_names(tmp_path, name):
    root, expected = build(name, tmp_path)
    ds = read_dataset(name, root)
    got = {Path(it.path).name: (i, it.label) for it, i in zip(ds.items, ds.indices)}
    names = class_names(get_dataset(name))
    assert got == {f: (c, names[c]) for f, c in expected.items()}  # train images and other partitions left out
    assert all(Path(it.path).is_absolute() and Path(it.path).is_file() for it in ds.items)
    described = ds.describe()
    assert described["name"] == name and described["classes"] == names and described["n_images"] == len(expected)
    assert len(names) == get_dataset(name).n_classes


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_root_may_be_the_dataset_folder_itself(tmp_path, name):
    root, expected = build(name, tmp_path)
    folder = Path(read_dataset(name, root).folder)
    assert folder != root
    assert {Path(it.path).name for it in read_dataset(name, folder).items} == set(expected)


def test_imagenet_kaggle_layout(tmp_path):
    root, expected = build_imagenet_kaggle(tmp_path, [0, 27, 744, 999])
    ds = read_dataset("imagenet", root)
    assert {Path(it.path).name: it.label for it in ds.items} == {
        "ILSVRC2012_val_00000001.JPEG": "tench", "ILSVRC2012_val_00000002.JPEG": "eft",
        "ILSVRC2012_val_00000003.JPEG": "projectile", "ILSVRC2012_val_00000004.JPEG": "toilet paper"}


def test_imagenet_name_sets(tmp_path):
    """dclip (DCLIP/LaZSL keys) and openai (open_clip's list, WCA's names for clip/cupl/wca) differ at 4 classes."""
    dclip = class_names(get_dataset("imagenet"), "dclip")
    openai = class_names(get_dataset("imagenet"), "openai")
    assert [(i, a, b) for i, (a, b) in enumerate(zip(dclip, openai)) if a != b] == [
        (27, "eft", "newt"), (638, "maillot", "tights"), (744, "projectile", "missile"), (836, "sunglass", "sunglasses")]
    root, _ = build("imagenet", tmp_path, [27])
    assert [it.label for it in read_dataset("imagenet", root, "openai").items] == ["newt"]
    assert imagenet_wnids()[:2] == ("n01440764", "n01443537") and len(set(imagenet_wnids())) == 1000


@pytest.mark.skipif(not DCLIP.is_dir(), reason="../shared/data/descriptors is absent")
@pytest.mark.parametrize("name,file", [("cub", "cub"), ("food101", "food101"), ("pets", "pets"), ("dtd", "dtd"),
                                       ("places365", "places365"), ("eurosat", "eurosat"), ("imagenet", "imagenet")])
def test_default_names_are_the_descriptor_files_keys_in_label_order(name, file):
    keys = list(json.loads((DCLIP / f"descriptors_{file}.json").read_text()))
    assert class_names(get_dataset(name)) == keys


def test_class_folders_and_orders():
    assert get_dataset("dtd").class_ids == tuple(class_names(get_dataset("dtd")))  # DTD's folders are its names
    assert list(get_dataset("eurosat").class_ids) == sorted(get_dataset("eurosat").class_ids)  # ImageFolder's order
    pets = class_names(get_dataset("pets"))
    assert pets[:3] == ["Abyssinian", "american bulldog", "american pit bull terrier"]  # torchvision's order
    assert pets[-1] == "yorkshire terrier"


def test_places365_wca_names_collapse_to_344():
    wca = class_names(get_dataset("places365"), "wca")
    assert len(wca) == 365 and len(set(wca)) == 344
    assert wca[15:18] == ["arena", "arena", "arena"]
    assert class_names(get_dataset("places365"))[15:18] == ["arena-hockey", "arena-performance", "arena-rodeo"]


def test_imagenet_a_and_r_are_restricted_to_their_200_classes(tmp_path):
    a, r = subset_indices(get_dataset("imagenet-a")), subset_indices(get_dataset("imagenet-r"))
    assert len(a) == len(set(a)) == 200 and len(r) == len(set(r)) == 200
    assert a[:3] == [6, 11, 13] and r[:3] == [1, 2, 4]  # WCA's imagenet_{a,r}_lt
    root, _ = build("imagenet-a", tmp_path)
    desc = read_dataset("imagenet-a", root).describe()
    assert desc["restrict_to"][:2] == ["stingray", "goldfinch"] and len(desc["restrict_to"]) == 200
    assert subset_indices(get_dataset("imagenet")) is None
    assert restrict_ranking([[0, 6, 3, 11], [5, 4]], {6, 11}) == [[6, 11], []]


def test_a_class_folder_outside_the_subset_is_refused(tmp_path):
    (tmp_path / "imagenet-a" / imagenet_wnids()[0]).mkdir(parents=True)  # tench: not an ImageNet-A class
    with pytest.raises(InputError, match="not a ImageNet-A class folder"):
        read_dataset("imagenet-a", tmp_path)


@pytest.mark.parametrize("name,remove,message", [
    ("cub", "CUB_200_2011/image_class_labels.txt", "image_class_labels.txt: missing"),
    ("cub", "CUB_200_2011/train_test_split.txt", "train_test_split.txt: missing"),
    ("food101", "food-101/meta/classes.txt", "classes.txt: missing"),
    ("places365", "places365/categories_places365.txt", "categories_places365.txt: missing"),
    ("pets", "oxford-iiit-pet/annotations/test.txt", "test.txt: missing"),
])
def test_a_missing_label_file_is_one_line_naming_it(tmp_path, name, remove, message):
    root, _ = build(name, tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(InputError, match=message) as exc:
        read_dataset(name, root)
    assert "\n" not in str(exc.value) and "download" not in str(exc.value).replace("nothing is downloaded", "")


def test_no_layout_and_bad_lines_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no CUB-200-2011 layout"):
        read_dataset("cub", tmp_path)
    root, _ = build("dtd", tmp_path)
    (tmp_path / "dtd" / "labels" / "test1.txt").write_text("banded/banded_0001.jpg\nnot-a-class/x.jpg\n")
    with pytest.raises(InputError, match="test1.txt: line 2"):
        read_dataset("dtd", root)
    with pytest.raises(InputError, match="Unknown dataset"):
        read_dataset("cifar", root)
    with pytest.raises(InputError, match="--class-names wca"):
        read_dataset("cub", tmp_path, "wca")


def test_listed_but_missing_image_is_named(tmp_path):
    root, expected = build("places365", tmp_path)
    (tmp_path / "places365" / "val_256" / sorted(expected)[-1]).unlink()
    with pytest.raises(InputError, match="listed by the Places365 .* label files but missing"):
        read_dataset("places365", root)


def test_wca_presets_hold_wcas_released_settings():
    from pipeline.config import get_preset, list_presets

    wca = {p.name: p for p in list_presets() if p.name.startswith("wca-")}
    assert sorted(wca) == sorted(f"wca-{d}" for d in ("imagenet", "imagenet-v2", "imagenet-r", "imagenet-s", "imagenet-a",
                                                      "cub", "pets", "dtd", "food101", "places365"))
    for name, p in wca.items():
        n = 60 if name in ("wca-imagenet", "wca-imagenet-r", "wca-imagenet-s", "wca-imagenet-a") else 100
        assert p.regions == {"source": "crops", "n_crops": n, "crop_min": 0.1, "crop_max": 0.9}, name
        assert p.method == {"top_k": 0, "wca_patch_n": 60, "wca_runs": 20}, name
    assert get_preset("wca-imagenet-a").note  # no upstream config: said so
