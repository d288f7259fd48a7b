"""The methods of issue 14 through the command line: index with views and parts, then
evaluate awt, object-bound, waffle (several seeds) and dclip-nameless beside the others."""
import json

from click.testing import CliRunner

from pipeline.cli import cli
from stores.catalog import Catalog

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0"]


def run(args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res


def test_index_and_evaluate_every_new_method(tmp_path, image_folder, attr_file):
    store = ["--store", str(tmp_path / "s")]
    run(["build-attributes", "--from-json", str(attr_file), *MODEL, *store])
    run(["index-images", str(image_folder), "--n-crops", "5", "--n-parts", "4", "--part-min", "0.2", "--part-max", "0.4",
         "--n-views", "3", "--workers", "0", *store])
    res = run(["evaluate", "--method", "dclip,lazsl,awt,object-bound,waffle,dclip-nameless", "--waffle-seeds", "2",
               "--seed", "4", "--top-k", "0", "--format", "json", "-o", str(tmp_path / "out"), *store])
    rows = json.loads(res.stdout)
    assert [r["method"] for r in rows] == ["dclip", "lazsl", "awt", "object-bound", "waffle", "waffle", "dclip-nameless"]
    waffle = [r for r in rows if r["method"] == "waffle"]
    assert [r["seed"] for r in waffle] == [4, 5]
    mean = (waffle[0]["acc1"] + waffle[1]["acc1"]) / 2
    assert abs(waffle[0]["acc1_seeds_mean"] - mean) < 1e-12 and waffle[0]["n_seeds"] == 2
    # one CLIP_benchmark file per run: the two waffle seeds do not overwrite each other
    recs = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert sorted(r["method_label"] for r in recs) == sorted(
        ["dclip", "lazsl", "awt", "object-bound", "waffle-seed4", "waffle-seed5", "dclip-nameless"])
    nameless = next(r for r in recs if r["method"] == "dclip-nameless")
    assert sorted(nameless["templates"]["dog"]) == ["a photo of a dog.", "floppy ears", "has a wet nose"]
    with Catalog(tmp_path / "s", read_only=True) as cat:
        kinds = dict(cat.query("select kind, count(*) from regions group by kind").fetchall())
        sets = {r[0].split(":")[0] for r in cat.query("select distinct template_set from class_prompts").fetchall()}
        n_objects = cat.query("select count(*) from object_bindings").fetchone()[0]
    assert kinds["part"] == 6 * 4 and kinds.get("view", 0) + kinds.get("view-flip", 0) == 6 * 3
    assert sets == {"clip", "waffle", "nameless"}
    assert n_objects == 6 * 2  # one object per (image, class)
    # a later evaluate without --method finds both seeds of the latest waffle group
    table = run(["evaluate", *store]).output
    assert "over 2 seeds" in table and "waffle s4" in table and "waffle s5" in table
