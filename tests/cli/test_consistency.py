"""Configuration that travels with the data, templates apart from attributes, comparable
results, and commands that fail cleanly (issue 10's checks)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.models import ModelLoadError, load_model
from stores.catalog import Catalog

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0"]
ROOT = Path(__file__).resolve().parents[2]


def run(args, ok=True):
    res = CliRunner().invoke(cli, args)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture
def indexed(tmp_path, image_folder, attr_file):
    """A store indexed with --preset cub-b32 (θ 0.95 is the preset's; crops from the preset too)."""
    store = ["--store", str(tmp_path / "s")]
    run(["build-attributes", "--from-json", str(attr_file), *MODEL, *store])
    out = run(["index-images", str(image_folder), "--preset", "cub-b32", "--n-crops", "6", "--workers", "0", *store])
    assert "n_crops=6 overrides preset cub-b32" in out.output
    return tmp_path / "s", store


def test_readme_protocol_records_the_presets_theta(indexed):
    """index-images --preset cub-b32, then evaluate --method lazsl without --preset: θ 0.95."""
    path, store = indexed
    res = run(["evaluate", "--method", "clip,lazsl", *store])
    assert "theta=0.95 from the store's preset cub-b32" in res.output
    res = run(["classify", "--method", "lazsl", "--theta", "0.5", "--limit", "0", *store])
    assert "theta=0.5 overrides preset cub-b32's theta=0.95" in res.output
    with Catalog(path, read_only=True) as cat:
        runs = cat.query("select method, params from runs order by run_id").fetchall()
        index = json.loads(cat.query("select params from index_runs").fetchone()[0])
    assert index["preset"] == "cub-b32" and index["regions"]["crop_min"] == 0.5 and index["regions"]["n_crops"] == 6
    params = [(m, json.loads(p)) for m, p in runs]
    (m1, p1), (m2, p2), (m3, p3) = params
    assert (m2, p2["config"]["theta"], p2["preset"]) == ("lazsl", 0.95, "cub-b32")
    assert p2["origins"]["theta"].startswith("store") and p2["origins"]["top_k"] == "default"
    assert (m3, p3["config"]["theta"], p3["origins"]["theta"]) == ("lazsl", 0.5, "option")


def test_templates_live_apart_and_exports_round_trip(tmp_path, indexed, attr_file):
    path, store = indexed
    run(["classify", "--method", "clip,wca,clip-e,lazsl", "--templates", "simple", "--limit", "0", *store])
    with Catalog(path, read_only=True) as cat:
        assert cat.query("select count(*) from attributes where source like 'template%'").fetchone()[0] == 0
        sets = dict(cat.query("select template_set, count(*) from class_prompts group by all").fetchall())
        assert sets == {"clip": 2, "ensemble-simple": 2 * 7}
        n_attr = cat.query("select count(*) from attributes").fetchone()[0]
    assert n_attr == 5
    # the descriptors export exactly as imported, even with class prompts in the store
    run(["export-attributes", "--schema", "dclip", "-o", str(tmp_path / "d.json"), *store])
    assert json.loads((tmp_path / "d.json").read_text()) == json.loads(attr_file.read_text())
    # evaluate's templates are the prompts each method used
    run(["evaluate", "-o", str(tmp_path / "res"), "--format", "json", *store])
    recs = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in (tmp_path / "res").glob("*.json")}
    assert recs["clip"]["templates"] == {"cat": ["a photo of a cat."], "dog": ["a photo of a dog."]}
    assert len(recs["clip-e"]["templates"]["cat"]) == 7
    assert recs["lazsl"]["templates"]["dog"] == ["dog, which has floppy ears", "dog, which has a wet nose"]
    # CLIP_benchmark's notebook pivots on model_fullname: one per method
    assert len({r["model_fullname"] for r in recs.values()}) == len(recs) == 4


def test_demo_store_descriptors_round_trip_exactly(tmp_path):
    """The demo's world attributes through a store with clip/wca runs (templates) and back out."""
    from pipeline.toy.world import make_toyworld

    make_toyworld(tmp_path / "w", n_per_class=1, seed=3, setting="parts")
    store = ["--store", str(tmp_path / "s")]
    run(["build-attributes", "--from-json", str(tmp_path / "w" / "attributes.json"), "--pretrained", "toy-clip", *store])
    run(["index-images", str(tmp_path / "w" / "images"), "--preset", "toy-demo", "--n-crops", "4", "--workers", "0", *store])
    run(["classify", "--method", "clip,wca", "--limit", "0", *store])
    run(["export-attributes", "--schema", "dclip", "-o", str(tmp_path / "out.json"), *store])
    original = json.loads((tmp_path / "w" / "attributes.json").read_text())
    assert json.loads((tmp_path / "out.json").read_text()) == original


def test_evaluate_reports_wca_per_draw_mean_std_and_shortlist_recall(indexed):
    path, store = indexed
    res = run(["evaluate", "--method", "wca", "--format", "json", *store])
    (row,) = json.loads(res.stdout)
    with Catalog(path, read_only=True) as cat:
        draws = cat.query(
            "select s.sample, avg((lower(i.label) = c.norm_name)::int) from sample_predictions s "
            "join images i using (image_id) join classes c using (class_id) where s.run_id = ? group by all order by 1",
            [row["run_id"]]).fetchall()
    acc = [a for _, a in draws]
    assert len(acc) == 20
    assert math.isclose(row["acc1_per_draw_mean"], sum(acc) / 20, abs_tol=1e-9)
    mean = sum(acc) / 20
    assert math.isclose(row["acc1_per_draw_std"], math.sqrt(sum((a - mean) ** 2 for a in acc) / 20), abs_tol=1e-9)
    table = run(["evaluate", "--run", str(row["run_id"]), *store]).output
    assert "acc1 per crop draw" in table and "ensemble" in table
    # a shortlist of one class out of two: the recall is the share whose true class survived it
    res = run(["evaluate", "--method", "lazsl", "--top-k", "1", "--format", "json", *store])
    (row,) = json.loads(res.stdout)
    assert row["shortlist_recall"] == row["acc1"]  # with k = 1 the shortlist is the prediction
    res = run(["evaluate", "--method", "lazsl", "--top-k", "0", "--format", "json", *store])
    assert json.loads(res.stdout)[0]["shortlist_recall"] == 1.0


def test_failed_commands_leave_no_empty_store(tmp_path, attr_file):
    for args in (["index-images", str(tmp_path / "nope"), *MODEL], ["build-attributes", "--from-json", str(tmp_path / "no.json"), *MODEL],
                 ["classify", "--method", "lazsl"]):
        target = tmp_path / "new-store"
        res = run([*args, "--store", str(target)], ok=False)
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert not target.exists(), args
    # a store that existed before is kept, even if the command fails
    run(["build-attributes", "--from-json", str(attr_file), *MODEL, "--store", str(tmp_path / "kept")])
    res = run(["index-images", str(tmp_path / "nope"), "--store", str(tmp_path / "kept")], ok=False)
    assert res.exit_code == 1 and (tmp_path / "kept" / "catalog.duckdb").is_file()


def test_shipped_tag_implies_its_architecture_and_bad_weights_are_one_line(tmp_path):
    m = load_model(None, "toy-clip", device="cpu")
    assert m.name == "zsl-tiny" and m.fingerprint.startswith("zsl-tiny/sha256:")
    with pytest.raises(ModelLoadError, match="holds weights for zsl-tiny"):
        load_model("ViT-B-32", "toy-clip", device="cpu")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ModelLoadError, match="is it an open_clip checkpoint") as exc:
        load_model("zsl-tiny", str(junk), device="cpu")
    assert "\n" not in str(exc.value)
    res = run(["index-images", str(tmp_path), "--pretrained", "/etc/passwd", "--model", "zsl-tiny",
               "--store", str(tmp_path / "s")], ok=False)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_hf_hub_in_pretrained_names_the_model_and_fails_fast_offline():
    with pytest.raises(ModelLoadError) as exc:
        load_model(None, "hf-hub:timm/ViT-B-16-SigLIP", device="cpu")
    assert "hf-hub:timm/ViT-B-16-SigLIP" in str(exc.value) and "\n" not in str(exc.value)


def test_progress_respects_quiet_tqdm_disable_and_terminals(monkeypatch):
    import click

    from pipeline.cli.options import show_progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with click.Context(cli) as ctx:
        assert show_progress()
        monkeypatch.setenv("TQDM_DISABLE", "1")
        assert not show_progress()
        monkeypatch.delenv("TQDM_DISABLE")
        ctx.meta["zsl_quiet"] = True
        assert not show_progress()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with click.Context(cli):
        assert not show_progress()


def test_presets_command_lists_the_table():
    res = run(["presets", "--format", "json"])
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["cub-b32"]["method.theta"] == 0.95 and rows["cub-b32"]["regions.n_crops"] == 80
    assert rows["toy-demo"]["method.top_k"] == 0


def make_venv_with_installed_packages(venv: Path) -> Path:
    """A fresh venv that sees the packages installed for *this* interpreter. Inside a virtualenv,
    ``python -m venv --system-site-packages`` would see the base interpreter's packages only (it
    lacks duckdb and the rest), so the running interpreter's site-packages are added by a .pth
    file instead; the venv's own site-packages still come first, so the wheel installed there wins."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    here = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (Path(purelib) / "_installed_packages.pth").write_text("".join(f"{p}\n" for p in here))
    return venv


def test_venv_for_the_install_test_sees_the_installed_packages(tmp_path):
    """The fresh venv imports what this interpreter has installed (duckdb), even inside a virtualenv."""
    venv = make_venv_with_installed_packages(tmp_path / "venv")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import duckdb, sys; print(duckdb.__file__, sys.prefix)"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert str(venv) in out.stdout.split()[1]


@pytest.mark.slow
def test_non_editable_install_runs_the_demo(tmp_path):
    """pip install . (a wheel, not editable) into a fresh venv, then `pipeline demo` from elsewhere."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    venv = make_venv_with_installed_packages(tmp_path / "venv")
    py = venv / "bin" / "python"
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], check=True,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZSL_STORE")}
    out = subprocess.run([str(venv / "bin" / "pipeline"), "demo", "-o", str(tmp_path / "demo"),
                          "--store", str(tmp_path / "demo-store")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lazsl" in out.stdout and (tmp_path / "demo" / "report.html").is_file()
    # the package came from the venv, not from the source tree
    where = subprocess.run([str(py), "-c", "import pipeline.models as m; print(m.__file__, m.data_dir())"], cwd=tmp_path,
                           env=env, capture_output=True, text=True).stdout
    assert str(venv) in where and str(ROOT) not in where


# ---- one word, one meaning, in every command (issue 19 part 4) ------------------------------
def _commands():
    from pipeline.cli.docs import iter_commands

    return [(" ".join(path), cmd) for path, cmd in iter_commands(cli) if not isinstance(cmd, click.Group)]


def _options(cmd):
    return [p for p in cmd.params if isinstance(p, click.Option)]


def _violations(rule, owners=("faithfulness", "explain")):
    """(ours, theirs): a rule's violations outside and inside the commands another branch owns."""
    found = [(name, problem) for name, cmd in _commands() for problem in rule(cmd)]
    return ([f"{n}: {p}" for n, p in found if n not in owners], [f"{n}: {p}" for n, p in found if n in owners])


SHOWN = ("printed", "listed", "shown", "on the page")


def _limit_is_rows_shown(cmd):
    """--limit caps what is shown (its help says so); a cap on work is another option."""
    return [f"--limit {o.help!r} is not a cap on rows shown" for o in _options(cmd)
            if "--limit" in o.opts and not any(w in (o.help or "") for w in SHOWN)]


def _work_caps_are_max_images(cmd):
    """The cap on how many images a command works through is --max-images, an int >= 0 (a cap
    on a subset of the work says which: --max-occlusion-images)."""
    out = []
    for o in _options(cmd):
        if "--max-images" in o.opts and not (o.type.kind is int and o.type.lo == 0):
            out.append("--max-images is not an integer >= 0")
        out += [f"{name} caps images: call it --max-images" for name in o.opts
                if name not in ("--max-images", "--max-image-bytes") and name.endswith("-images")
            and not name.startswith("--max-")]
    return out


def _top_k_spelling(cmd):
    return [f"{name}: spell it like --top-k" for o in _options(cmd) for name in o.opts if "topk" in name]


def _plot_spelling(cmd):
    return [f"{name}: the plot option is --plot" for o in _options(cmd) for name in o.opts if name == "--plots"]


def test_limit_caps_rows_shown_in_every_command():
    ours, _ = _violations(_limit_is_rows_shown)
    assert ours == []


def test_limit_caps_rows_shown_in_faithfulness_and_explain():
    assert _violations(_limit_is_rows_shown)[1] == []


def test_work_caps_are_max_images_in_every_command():
    ours, _ = _violations(_work_caps_are_max_images)
    assert ours == []
    have = {name for name, cmd in _commands() if any("--max-images" in o.opts for o in _options(cmd))}
    assert {"index-images", "mutual-knowledge", "compare"} <= have


def test_work_caps_are_max_images_in_faithfulness_and_explain():
    assert _violations(_work_caps_are_max_images)[1] == []


def test_n_parts_means_one_thing():
    helps = {(o.help, o.type.lo, o.type.hi) for _, cmd in _commands() for o in _options(cmd) if "--n-parts" in o.opts}
    assert len(helps) == 1, helps  # index-images' part crops; mutual knowledge's parts are --concept-parts


def test_top_k_and_plot_have_one_spelling():
    assert _violations(_top_k_spelling, owners=()) == ([], [])
    assert _violations(_plot_spelling, owners=()) == ([], [])


def test_the_word_rules_fail_on_a_planted_command():
    @click.command()
    @click.option("--limit", type=int, help="Images to score.")
    @click.option("--occlusion-images", type=int, help="Occlusion maps on the first N images.")
    @click.option("--part-topk", type=int, help="Concepts per part.")
    @click.option("--plots", help="Folder for plots.")
    def planted(limit, occlusion_images, part_topk, plots):
        """A command speaking the old words."""

    assert _limit_is_rows_shown(planted) == ["--limit 'Images to score.' is not a cap on rows shown"]
    assert _work_caps_are_max_images(planted) == ["--occlusion-images caps images: call it --max-images"]
    assert _top_k_spelling(planted) == ["--part-topk: spell it like --top-k"]
    assert _plot_spelling(planted) == ["--plots: the plot option is --plot"]
