"""The four stages through the CLI on real files, and the classify stage against the store."""
import json

import numpy as np
from click.testing import CliRunner

from pipeline.cli import cli
from stores.catalog import Catalog

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0"]


def run(args):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout


def test_cli_stages_and_sql(tmp_path, image_folder, attr_file):
    store = ["--store", str(tmp_path / "s")]
    out = run(["build-attributes", "--from-json", str(attr_file), *MODEL, *store])
    assert "2 classes, 5 attributes" in out
    out = run(["index-images", str(image_folder), "--n-crops", "8", "--workers", "0", *store])  # model from the store
    assert "6 images indexed (54 regions)" in out
    out = run(["classify", "--method", "lazsl", "--top-k", "0", "--limit", "2", *store])
    assert "run 1: lazsl on 6 images" in out
    printed = [line.split() for line in out.splitlines() if "lazsl" in line and ("/cat/" in line or "/dog/" in line)]
    assert len(printed) == 4 and {p[4] for p in printed} == {"1", "2"} and {p[5] for p in printed} <= {"cat", "dog"}
    rows = json.loads(run(["classify", "--method", "lazsl", "--top-k", "0", "--limit", "0", "--format", "json", *store]))
    assert len(rows) == 12 and {r["rank"] for r in rows} == {1, 2} and all(r["method"] == "lazsl" for r in rows)
    out = run(["sql", "select count(*) as n from alignments", "--format", "json", *store])
    assert json.loads(out)[0]["n"] > 0
    out = run(["sql", "select method from runs", "--format", "csv", *store])
    assert out == "method\nlazsl\nlazsl\n"  # \n line ends, as DuckDB writes CSV
    # an image_id pasted from CSV output, line end and all, is still an image id
    first = run(["sql", "select image_id, path from images order by image_id limit 1", "--format", "csv", *store])
    image_id, path = first.splitlines()[1].split(",")
    res = CliRunner().invoke(cli, ["explain", image_id + "\r\n", "--format", "json", "-o", str(tmp_path / "ex"), *store])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and {r["image"] for r in rows} == {path}
    # read-only: a write is refused with a one-line error
    res = CliRunner().invoke(cli, ["sql", "delete from runs", *store])
    assert res.exit_code == 1 and "read-only" in res.output and "Traceback" not in res.output

    with Catalog(tmp_path / "s", read_only=True) as cat:
        params = json.loads(cat.query("select params from runs where run_id = 1").fetchone()[0])
        assert params["config"]["theta"] == 0.8 and params["config"]["eps"] == 0.1 and params["model"] == "zsl-tiny/random:0"
        assert params["texts"]["kind"] == "descriptors" and params["index_runs"]
        assert params["origins"]["top_k"] == "option" and params["origins"]["theta"] == "default"
        # predictions: every image ranks both classes; rank 1 has the highest score
        pred = cat.query("select image_id, rank, score, global_score, local_score from predictions where run_id = 1 "
                         "order by image_id, rank").fetchall()
        assert len(pred) == 12
        for i in range(0, 12, 2):
            assert pred[i][1] == 1 and pred[i][2] >= pred[i + 1][2]
            # LaZSL decomposition: score = (1-θ)·global + θ·local
            assert abs(pred[i][2] - (0.2 * pred[i][3] + 0.8 * pred[i][4])) < 1e-5
        # the plan's column sums are the uniform attribute mass 1/N_c for every (image, class)
        sums = cat.query(
            "select al.image_id, al.class_id, al.attr_id, sum(mass) from alignments al where run_id = 1 group by all"
        ).fetchall()
        n_attrs = dict(cat.query("select class_id, count(*) from attributes group by class_id").fetchall())
        for _, cid, _, s in sums:
            assert abs(s - 1.0 / n_attrs[cid]) < 1e-4
        # score = Σ mass·similarity over the stored plan
        tot = dict(
            ((i, c), v) for i, c, v in cat.query(
                "select image_id, class_id, sum(mass * similarity) from alignments where run_id = 1 group by all").fetchall()
        )
        for iid, cid, score in cat.query("select image_id, class_id, score from predictions where run_id = 1").fetchall():
            assert abs(tot[(iid, cid)] - score) < 1e-4


def test_rescoring_needs_no_image_work_and_shortlist_keeps_scores(tmp_path, image_folder, attr_file, tiny_model):
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.methods import MethodConfig
    from pipeline.stages.classify import classify
    from pipeline.stages.index_images import index_images
    from pipeline.config import RegionConfig

    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, tiny_model, attr_file, progress=False)
        index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=6), progress=False)
        shards = sorted(p.stat().st_mtime_ns for p in cat.shard_files("regions"))
        a = classify(cat, "lazsl", MethodConfig(top_k=0), progress=False)
        b = classify(cat, "lazsl", MethodConfig(top_k=1), progress=False)
        c = classify(cat, "lazsl", MethodConfig(top_k=0, theta=0.5), progress=False)
        assert sorted(p.stat().st_mtime_ns for p in cat.shard_files("regions")) == shards
        full = dict(((i, k), s) for i, k, s in cat.query("select image_id, class_id, score from predictions where run_id = ?", [a.run_id]).fetchall())
        short = cat.query("select image_id, class_id, score from predictions where run_id = ?", [b.run_id]).fetchall()
        assert len(short) == 6
        for i, k, s in short:
            assert abs(full[(i, k)] - s) < 1e-6
        other = dict(((i, k), s) for i, k, s in cat.query("select image_id, class_id, score from predictions where run_id = ?", [c.run_id]).fetchall())
        assert any(abs(other[key] - full[key]) > 1e-4 for key in full)
        assert json.loads(cat.query("select params from runs where run_id = ?", [c.run_id]).fetchone()[0])["config"]["theta"] == 0.5
