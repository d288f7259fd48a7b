import json
import math

import numpy as np
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.stages.evaluate import classification_metrics


def test_metrics_against_hand_counts():
    truth = np.array([0, 0, 0, 1, 1, 2])
    ranked = [[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [2, 3, 4, 5, 6], [1, 0, 2, 3, 4], [0, 2, 3, 4, 5], [2, 0, 1, 3, 4]]
    m = classification_metrics(truth, ranked, n_classes=7)
    assert m["acc1"] == 3 / 6
    assert m["acc5"] == 4 / 6  # images 2 and 4 miss their class in the top five
    assert math.isclose(m["mean_per_class_recall"], (1 / 3 + 1 / 2 + 1) / 3)
    assert math.isnan(classification_metrics(truth, ranked, n_classes=4)["acc5"])


def test_evaluate_cli_writes_clip_benchmark_json(tmp_path, image_folder, attr_file):
    store = ["--store", str(tmp_path / "s")]
    r = CliRunner()
    assert r.invoke(cli, ["build-attributes", "--from-json", str(attr_file), "--model", "zsl-tiny", "--pretrained", "random:0", *store]).exit_code == 0
    assert r.invoke(cli, ["index-images", str(image_folder), "--n-crops", "4", "--workers", "0", *store]).exit_code == 0
    res = r.invoke(cli, ["evaluate", "--method", "clip,dclip,wca,lazsl", "--output", str(tmp_path / "out"), *store])
    assert res.exit_code == 0, res.output
    for m in ("clip", "dclip", "wca", "lazsl"):
        assert m in res.output
    files = sorted((tmp_path / "out").glob("*.json"))
    assert len(files) == 4
    rec = json.loads(files[0].read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(rec)
    assert rec["task"] == "zeroshot_classification" and rec["model"] == "zsl-tiny" and rec["pretrained"] == "random:0"
    assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and math.isnan(rec["metrics"]["acc5"])
    assert rec["classnames"] == ["cat", "dog"]
    # acc1 matches the predictions table: 3 images per class, 2 classes
    acc = rec["metrics"]["acc1"]
    assert acc * 6 == round(acc * 6)
