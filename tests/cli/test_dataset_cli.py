"""``index-images --dataset NAME --root DIR``: the dataset's labels and class names recorded with the
images; ImageNet-A scored on the 1000-way scores restricted to its 200 classes."""
import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.datasets import class_names, get_dataset, subset_indices
from stores.catalog import Catalog
from tests.helpers.dataset_miniatures import build

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0"]


def run(args, code=0):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


def test_cub_miniature_indexes_with_its_labels_and_class_list(tmp_path):
    root, expected = build("cub", tmp_path / "data")
    names = class_names(get_dataset("cub"))
    (tmp_path / "cub.json").write_text(json.dumps({n: ["a beak"] for n in names}))
    store = ["--store", str(tmp_path / "s")]
    run(["build-attributes", "--from-json", str(tmp_path / "cub.json"), *MODEL, *store])
    out = run(["index-images", "--dataset", "cub", "--root", str(root), "--n-crops", "2", "--workers", "0", *store]).output
    assert "CUB-200-2011: 3 images" in out and "3 images indexed" in out
    with Catalog(tmp_path / "s", read_only=True) as cat:
        labels = dict(cat.query("select path, label from images").fetchall())
        params = json.loads(cat.query("select params from index_runs").fetchone()[0])
    assert {p.rsplit("/", 1)[1]: lab for p, lab in labels.items()} == {f: names[c] for f, c in expected.items()}
    assert params["dataset"]["name"] == "cub" and params["dataset"]["classes"] == names
    assert params["dataset"]["class_names"] == "dclip" and params["dataset"]["restrict_to"] is None


@pytest.mark.slow  # 1,000 classes encoded (about 2 minutes on 2 cores)
def test_imagenet_a_is_scored_on_its_200_classes(tmp_path):
    root, expected = build("imagenet-a", tmp_path / "data", [6, 11, 988])
    names = class_names(get_dataset("imagenet"))
    (tmp_path / "in.json").write_text(json.dumps({n: [f"{n} thing"] for n in names}))
    store = ["--store", str(tmp_path / "s")]
    run(["build-attributes", "--from-json", str(tmp_path / "in.json"), *MODEL, *store])
    run(["index-images", "--dataset", "imagenet-a", "--root", str(root), "--n-crops", "1", "--workers", "0", *store])
    res = CliRunner().invoke(cli, ["classify", "--method", "dclip", "--top-k", "50", *store])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", *store])  # the latest dclip run
    assert res.exit_code == 1 and "--top-k 0" in res.output and "Traceback" not in res.output
    run(["classify", "--method", "dclip", "--top-k", "0", *store])
    allowed_idx = set(subset_indices(get_dataset("imagenet-a")))
    with Catalog(tmp_path / "s") as cat:
        ids = dict(cat.query("select name, class_id from classes").fetchall())
        run_id = cat.query("select max(run_id) from runs").fetchone()[0]
        images = cat.query("select image_id, label from images order by image_id").fetchall()
        # a known 1000-way ranking per image: an outside class first, then (image 1, 2) the true class, or (image 3)
        # another of the 200 before the true class
        outside = ids[names[0]]  # tench: not an ImageNet-A class
        other = ids[names[sorted(allowed_idx)[-1]]]
        for k, (image_id, label) in enumerate(images):
            order = [outside, ids[label]] if k < 2 else [outside, other, ids[label]]
            rest = [c for c in sorted(ids.values()) if c not in order]
            for rank, cid in enumerate(order + rest, 1):
                cat.query("UPDATE predictions SET rank = ? WHERE run_id = ? AND image_id = ? AND class_id = ?",
                          [rank, run_id, image_id, cid])
    out = json.loads(run(["evaluate", "--run", str(run_id), "--format", "json", *store]).stdout)
    rec = out[0] if isinstance(out, list) else out
    metrics = rec.get("metrics", rec)
    assert abs(metrics["acc1"] - 2 / 3) < 1e-9  # unrestricted it would be 0 (tench first everywhere)
    assert metrics["acc5"] == 1.0


def test_dataset_option_errors_are_one_line(tmp_path):
    for args, message in (
        (["index-images", "--dataset", "cub"], "needs --root"),
        (["index-images", "x", "--dataset", "cub", "--root", "x"], "not both"),
        (["index-images", "--root", "x", str(tmp_path)], "go with --dataset"),
        (["index-images", "--dataset", "cub", "--root", str(tmp_path), *MODEL], "no CUB-200-2011 layout"),
    ):
        res = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "s")])
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output, res.output


def test_real_weights_missing_fail_at_once_in_one_line(tmp_path, monkeypatch):
    """--pretrained openai without the weights: one line saying how to supply them, before the
    architecture is even built (and no image read)."""
    import open_clip

    from pipeline.models import weights_in_cache

    if weights_in_cache("ViT-B-32", "openai"):
        import pytest

        pytest.skip("ViT-B-32/openai weights are in this machine's Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def built(*a, **k):
        raise AssertionError("the model was built before the weights were found missing")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", built)
    root, _ = build("cub", tmp_path / "data")
    res = CliRunner().invoke(cli, ["index-images", "--dataset", "cub", "--root", str(root), "--model", "ViT-B-32",
                                   "--pretrained", "openai", "--store", str(tmp_path / "s")])
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert res.exit_code == 1 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "not available offline" in errors[0] and "--pretrained /path/to/" in errors[0]
