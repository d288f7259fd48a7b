import json
import math
from pathlib import Path

import numpy as np
import pytest
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
    assert rec["task"] == "zeroshot_classification" and rec["model"] == "zsl-tiny" and rec["checkpoint"] == "random:0"
    assert rec["pretrained"] == f"random:0+{rec['method']}" and rec["model_fullname"] == f"zsl-tiny {rec['pretrained']}"
    assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and math.isnan(rec["metrics"]["acc5"])
    assert rec["classnames"] == ["cat", "dog"]
    # acc1 matches the predictions table: 3 images per class, 2 classes
    acc = rec["metrics"]["acc1"]
    assert acc * 6 == round(acc * 6)


def clip_benchmark_build(paths) -> list[dict]:
    """CLIP_benchmark's ``build`` (clip_benchmark/cli.py ``main_build``), re-implemented: each
    file's metrics and fields in one row, ``model_fullname`` rebuilt from model and pretrained,
    written to CSV and read back (every value a string, as its notebook reads the CSV)."""
    import csv
    import io

    rows, fieldnames = [], set()
    for p in paths:
        data = json.loads(Path(p).read_text())
        row = {**data["metrics"], **data}
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        fieldnames |= set(row)
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=sorted(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def test_clip_benchmark_notebook_pivots_methods_apart(tmp_path, image_folder, attr_file):
    """After CLIP_benchmark's build, its notebook's ``pd.pivot(df, index="model_fullname",
    columns="dataset", values="acc1")`` has one row per (model, pretrained, method) and the
    accuracies evaluate reported."""
    store, out = ["--store", str(tmp_path / "s")], tmp_path / "out"
    r = CliRunner()
    assert r.invoke(cli, ["build-attributes", "--from-json", str(attr_file), "--model", "zsl-tiny", "--pretrained", "random:0", *store]).exit_code == 0
    assert r.invoke(cli, ["index-images", str(image_folder), "--n-crops", "4", "--workers", "0", *store]).exit_code == 0
    reported = {}
    for dataset in ("pets", "pets-v2"):  # two datasets: the notebook's columns
        res = r.invoke(cli, ["evaluate", "--method", "clip,dclip,lazsl,waffle", "--waffle-seeds", "2", "--dataset", dataset,
                             "--format", "json", "-o", str(out), *store])
        assert res.exit_code == 0, res.output
        for row in json.loads(res.stdout):
            label = row["method"] + (f"-seed{row['seed']}" if row.get("seed") is not None else "")
            reported[(label, dataset)] = row["acc1"]
    rows = clip_benchmark_build(sorted(out.glob("*.json")))
    assert len(rows) == 10 and {row["pretrained"] for row in rows} == {
        "random:0+clip", "random:0+dclip", "random:0+lazsl", "random:0+waffle-seed0", "random:0+waffle-seed1"}
    # the notebook's pivot, in plain python: a (model_fullname, dataset) pair twice is its error
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        assert row["dataset"] not in table.setdefault(row["model_fullname"], {}), "Index contains duplicate entries"
        table[row["model_fullname"]][row["dataset"]] = float(row["acc1"])
    assert len(table) == 5 and all(len(v) == 2 for v in table.values())
    for row in rows:
        assert row["model"] == "zsl-tiny" and row["checkpoint"] == "random:0"
        assert table[row["model_fullname"]][row["dataset"]] == reported[(row["method_label"], row["dataset"])]
    pd = pytest.importorskip("pandas")  # and with pandas, as the notebook runs it
    df = pd.DataFrame(rows).astype({"acc1": float})
    pivot = pd.pivot(df, index="model_fullname", columns="dataset", values="acc1").T.dropna()
    assert pivot.shape == (2, 5)
    assert {name: dict(col) for name, col in pivot.items()} == table
