"""Issue 11, "High: hostile and broken input": each probe of the issue yields a one-line error,
a recorded skip, or correct behaviour. The probes, in the issue's order, are the tests below
(the numeric options are also fuzzed one by one in ``test_option_fuzz.py``)."""
from __future__ import annotations

import json
import os
import resource
import sys

import duckdb
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.config import RegionConfig
from pipeline.stages.methods import MethodConfig
from pipeline.errors import InputError
from pipeline.stages.index_images import index_images
from stores.catalog import Catalog
from stores.migrations import MIGRATIONS
from tests.helpers import write_image
from tests.helpers.small_store import MODEL_ARGS, build_small_store


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from pipeline.models import load_model

    return build_small_store(tmp_path_factory.mktemp("hostile"), load_model("zsl-tiny", "random:0", device="cpu"))


def one_line_error(res, code=None):
    lines = res.output.strip().splitlines()
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in ((code,) if code else (1, 2)), res.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    return lines[0]


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def image_errors(store) -> list[tuple]:
    with Catalog(store, read_only=True) as cat:
        return cat.query("SELECT path, sha256, reason, index_run_id FROM image_errors ORDER BY path, reason").fetchall()


# ---- "A 4 GB sparse file named .jpg is read whole into memory (peak RSS 4.7 GB)" ----------
def test_sparse_4gb_image_is_refused_by_size_before_reading(tmp_path, tiny_model):
    folder = tmp_path / "imgs"
    write_image(folder / "ok.png", size=(40, 32))
    huge = folder / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB on paper, nothing on disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the peak so far
    with Catalog(tmp_path / "s") as cat:
        rep = index_images(cat, tiny_model, [str(folder)], RegionConfig(n_crops=2), progress=False)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (rep.indexed, rep.failed) == (1, 1)
    assert grown_mib < 512, f"peak RSS grew by {grown_mib:.0f} MiB: the file was read"
    [(path, sha, reason, _)] = image_errors(tmp_path / "s")
    assert path == str(huge.resolve()) and sha is None
    assert reason == "file too large (4.0 GiB, the limit is 256.0 MiB; --max-image-bytes allows more)"


def test_max_image_bytes_flag_and_errors_cleared_once_indexed(tmp_path):
    folder = tmp_path / "imgs"
    img = write_image(folder / "a.png", size=(64, 48))
    store = tmp_path / "s"
    args = ["index-images", folder, "--store", store, "--n-crops", "2", "--workers", "0", "-q", *MODEL_ARGS]
    res = invoke(*args, "--max-image-bytes", "1K")
    assert res.exit_code == 1 and "0 images indexed" in res.output and "1 failed" in res.output
    assert "file too large" in res.output and "--max-image-bytes allows more" in res.output
    assert len(image_errors(store)) == 1
    res = invoke(*args, "--max-image-bytes", "4M")  # 4 MiB: it fits now
    assert res.exit_code == 0 and "1 images indexed" in res.output
    assert image_errors(store) == []  # the old failure of this path is void
    assert img.stat().st_size > 1024


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")
def test_fifo_and_device_named_jpg_are_recorded_not_read(tmp_path, tiny_model):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # reading it would block forever
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")  # reading it would never end
    with Catalog(tmp_path / "s") as cat:
        rep = index_images(cat, tiny_model, [str(fifo), str(zero)], RegionConfig(n_crops=2), progress=False)
    assert rep.failed == 2
    reasons = sorted(r for _, _, r, _ in image_errors(tmp_path / "s"))
    assert reasons == ["not a regular file (a FIFO)", "not a regular file (a device)"]


# ---- "a JSON file of 100,000 nested [ gives a RecursionError traceback" --------------------
@pytest.mark.parametrize("where", ["attributes", "class list", "boxes"])
def test_deeply_nested_json_is_one_line(tmp_path, small, where):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    if where == "attributes":
        res = invoke("build-attributes", "--from-json", deep, "--store", small.store, *MODEL_ARGS)
    elif where == "class list":
        res = invoke("build-attributes", deep, "--llm-model", "m", "--base-url", "http://127.0.0.1:9/v1",
                     "--store", small.store, *MODEL_ARGS)
    else:
        res = invoke("faithfulness", "--boxes", deep, "--max-images", "1", "--steps", "2", "--store", small.store, *MODEL_ARGS)
    line = one_line_error(res, 1)
    assert "nested deeper than 64 levels" in line and str(deep) in line


def test_json_size_limit_before_reading(tmp_path, small):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"cat": ["a feature number %d" % i for i in range(200)]}))
    res = invoke("build-attributes", "--from-json", big, "--max-file-bytes", "1K", "--store", small.store, *MODEL_ARGS)
    line = one_line_error(res, 1)
    assert "file too large" in line and "--max-file-bytes allows more" in line


def test_llm_answer_nested_deeply_is_an_unusable_answer_not_a_crash():
    from pipeline.stages.llm import parse_answer
    from pipeline.stages.llm.prompt_sets import get_prompt_set

    items, reason = parse_answer("[" * 100_000 + "]" * 100_000, get_prompt_set("descriptors"), "cat")
    assert items == [] and reason.startswith("the answer was JSON nested deeper than 64 levels")


# ---- "--pretrained /etc/passwd an IndexError traceback" -----------------------------------
@pytest.mark.parametrize("pretrained,message", [("/etc/passwd", "Could not load ViT-B-32 with --pretrained /etc/passwd"),
                                                ("random:abc", "use random or random:SEED"),
                                                ("random:-1", "use random or random:SEED")])
def test_pretrained_that_is_no_checkpoint_is_one_line(tmp_path, small, pretrained, message):
    res = invoke("index-images", small.images, "--store", tmp_path / "s", "--pretrained", pretrained)
    assert message in one_line_error(res, 1)
    assert not (tmp_path / "s").exists()  # the failed command left no empty store


# ---- "report --out <a directory>: IsADirectoryError and a stray .tmp" ----------------------
def test_report_out_a_folder_is_one_line_and_leaves_nothing(tmp_path, small):
    target = tmp_path / "a-folder"
    target.mkdir()
    line = one_line_error(invoke("report", "--store", small.store, "-o", target), 2)
    assert "is a directory" in line
    assert list(tmp_path.iterdir()) == [target] and list(target.iterdir()) == []


# ---- "report --out /nonexistent/x.html creates the directory" -----------------------------
@pytest.mark.parametrize("cmd", [["report", "-o", "{missing}/x.html"], ["sql", "select 1", "-o", "{missing}/x.csv"],
                                 ["export-attributes", "--schema", "dclip", "-o", "{missing}/x.json"],
                                 ["evaluate", "-o", "{missing}/results"], ["explain", "{image}", "-o", "{missing}/maps"],
                                 ["report", "--plot", "{missing}/plots"], ["make-toyworld", "-o", "{missing}/world"],
                                 ["classify", "--store", "{missing}/store"], ["demo", "-o", "{missing}/demo"],
                                 ["demo", "-o", "{tmp}/demo", "--store", "{missing}/store"]])
def test_no_folder_is_created_that_was_not_asked_for(tmp_path, small, cmd):
    missing = tmp_path / "nonexistent"
    args = [a.format(missing=missing, image=small.image_path, tmp=tmp_path) for a in cmd]
    if "--store" not in args and cmd[0] != "make-toyworld":
        args += ["--store", str(small.store)]
    if cmd[0] == "report" and "-o" not in args:
        args += ["-o", str(tmp_path / "r.html")]
    line = one_line_error(invoke(*args), 1)
    assert str(missing) in line and ("does not exist" in line or "parent exists" in line)
    assert not missing.exists() and not (tmp_path / "r.html").exists()


def test_output_checked_before_work_starts(tmp_path, small):
    """evaluate -o naming a file: refused before any method runs (no new run)."""
    afile = tmp_path / "results.json"
    afile.write_text("{}")
    with Catalog(small.store, read_only=True) as cat:
        runs = cat.query("SELECT count(*) FROM runs").fetchone()[0]
    line = one_line_error(invoke("evaluate", "--method", "lazsl", "-o", afile, "--store", small.store), 2)
    assert "is a file" in line
    with Catalog(small.store, read_only=True) as cat:
        assert cat.query("SELECT count(*) FROM runs").fetchone()[0] == runs


# ---- "faithfulness --steps 100000 exhausts 24 GB of memory" --------------------------------
def test_faithfulness_steps_bounded(small):
    from pipeline.explain.faithfulness import MAX_STEPS, faithfulness

    line = one_line_error(invoke("faithfulness", "--steps", "100000", "--store", small.store, *MODEL_ARGS), 2)
    assert f"must be >= 1 and <= {MAX_STEPS} (got 100000)" in line
    with Catalog(small.store) as cat, pytest.raises(InputError, match=r"--steps must be in \[1, 200\]"):
        faithfulness(cat, None, steps=100_000)  # the stage refuses too, before any work


# ---- "--n-crops 0 makes LaZSL fail for the whole store forever"; -5, --batch-size 0, --workers -1
@pytest.mark.parametrize("opt,value,message", [
    ("--n-crops", "0", "'--n-crops': must be >= 1 and <= 1024 (got 0)"),
    ("--n-crops", "-5", "'--n-crops': must be >= 1 and <= 1024 (got -5)"),
    ("--batch-size", "0", "'--batch-size': must be >= 1 and <= 65536 (got 0)"),
    ("--workers", "-1", "'--workers': must be >= 0 and <= 64 (got -1)"),
])
def test_region_and_batch_options_refused(tmp_path, small, opt, value, message):
    res = invoke("index-images", small.images, "--store", tmp_path / "s", f"{opt}={value}", *MODEL_ARGS)
    assert message in one_line_error(res, 2)
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError):
        RegionConfig(n_crops=0)


def test_one_crop_still_classifies(tmp_path, tiny_model):
    """The smallest accepted value works end to end: LaZSL keeps the one crop."""
    folder = tmp_path / "imgs"
    for c, col in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        write_image(folder / c / "0.png", size=(48, 40), color=col)
    attrs = tmp_path / "a.json"
    attrs.write_text(json.dumps({"cat": ["whiskers", "a tail"], "dog": ["a wet nose", "paws"]}))
    store = tmp_path / "s"
    assert invoke("build-attributes", "--from-json", attrs, "--store", store, "-q", *MODEL_ARGS).exit_code == 0
    assert invoke("index-images", folder, "--n-crops", "1", "--store", store, "-q", "--workers", "0", *MODEL_ARGS).exit_code == 0
    res = invoke("classify", "--method", "lazsl", "--store", store, "--limit", "0", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.output.split("\n", 1)[1]) if r["rank"] == 1]
    assert len(rows) == 2 and all(r["score"] == r["score"] for r in rows)  # two images, finite scores


# ---- "--theta nan stores NaN scores and evaluate prints 76.67%" ----------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_theta_not_finite_refused(small, value):
    line = one_line_error(invoke("classify", "--store", small.store, f"--theta={value}"), 2)
    assert "'--theta'" in line and "must be a finite number" in line
    with pytest.raises(InputError, match="--theta must be a finite number"):
        MethodConfig(theta=float(value))


# ---- "A manifest that lists the same path with two labels silently drops one label" --------
def test_manifest_conflicting_labels_refused(tmp_path, small):
    img = small.image_path
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\n{img},cat\n{small.images / 'dog' / '0.png'},dog\n{img},dog\n")
    line = one_line_error(invoke("index-images", m, "--store", tmp_path / "s", *MODEL_ARGS), 1)
    assert f"{img} is labelled 'cat' (m.csv line 2) and 'dog' (m.csv line 4)" in line
    assert not (tmp_path / "s").exists()
    # a folder and a manifest that disagree are refused the same way
    m.write_text(f"path,label\n{img},dog\n")
    line = one_line_error(invoke("index-images", small.images, m, "--store", tmp_path / "s", *MODEL_ARGS), 1)
    assert "is labelled 'cat' (folder" in line and "'dog' (m.csv line 2)" in line


def test_manifest_same_path_same_label_counts_once(tmp_path, tiny_model, small):
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\n{small.image_path},cat\n{small.image_path},cat\n")
    with Catalog(tmp_path / "s") as cat:
        rep = index_images(cat, tiny_model, [str(m)], RegionConfig(n_crops=2), progress=False)
        assert (rep.seen, rep.indexed, rep.skipped) == (1, 1, 0)
        assert cat.query("SELECT path, label FROM images").fetchall() == [(small.image_path, "cat")]


@pytest.mark.parametrize("body,message", [
    ("path,label\n,cat\n", "m.csv: line 2: empty path"),
    ("path,label\nx.png,ca\x1bt\n", "m.csv: line 2: the label 'ca\\x1bt' contains U+001B escape"),
    ("file,label\nx.png,cat\n", "a manifest needs a 'path' column"),
    ("path,label\n", "the manifest lists no images"),
])
def test_bad_manifest_rows_are_one_line(tmp_path, body, message):
    m = tmp_path / "m.csv"
    m.write_text(body)
    assert message in one_line_error(invoke("index-images", m, "--store", tmp_path / "s", *MODEL_ARGS), 1)


# ---- "image_errors grows on every re-run" ---------------------------------------------------
def test_image_errors_one_row_per_file_across_reruns(tmp_path, tiny_model):
    folder = tmp_path / "imgs"
    write_image(folder / "ok.png", size=(40, 32))
    (folder / "broken.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    for _ in range(3):
        with Catalog(tmp_path / "s") as cat:
            index_images(cat, tiny_model, [str(folder)], RegionConfig(n_crops=2), progress=False)
    rows = image_errors(tmp_path / "s")
    assert [(os.path.basename(p), r) for p, _, r, _ in rows] == [("broken.png", "not an image"), ("empty.jpg", "empty file")]
    assert {run for *_, run in rows} == {3}  # the latest run that saw them
    with Catalog(tmp_path / "s") as cat, pytest.raises(duckdb.ConstraintException):
        p, sha, reason, run = rows[0]
        cat.con.execute("INSERT INTO image_errors VALUES (?, ?, ?, ?, now())", [p, sha, reason, run])


def test_migration_folds_duplicate_image_errors(tmp_path):
    """A store written before m008, with the duplicates the issue saw, is folded on open."""
    root = tmp_path / "old"
    root.mkdir()
    con = duckdb.connect(str(root / "catalog.duckdb"))
    con.execute("CREATE TABLE _migrations(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    n008 = [m.__name__ for m in MIGRATIONS].index("m008_image_errors_key")
    con.execute("CREATE VIEW images AS SELECT NULL::BIGINT AS image_id, NULL AS path, NULL AS label WHERE false")
    for m in MIGRATIONS[:n008]:
        m(con)
        con.execute("INSERT INTO _migrations VALUES (?, now())", [m.__name__])
    for run in (1, 2, 3):
        con.execute("INSERT INTO image_errors VALUES ('/x/a.png', NULL, 'empty file', ?, now())", [run])
        con.execute("INSERT INTO image_errors VALUES ('/x/b.png', 'abc', 'not an image', ?, now())", [run])
    con.execute("INSERT INTO image_errors VALUES ('/x/b.png', 'abd', 'not an image', 3, now())")  # new content
    con.close()
    with Catalog(root) as cat:
        rows = cat.query("SELECT path, sha256, reason, index_run_id FROM image_errors ORDER BY ALL").fetchall()
    assert rows == [("/x/a.png", None, "empty file", 3), ("/x/b.png", "abc", "not an image", 3),
                    ("/x/b.png", "abd", "not an image", 3)]


# ---- "two class names that slug to the same file name overwrite each other's overlays" -----
def test_overlays_of_names_that_slug_alike_do_not_collide(tmp_path, tiny_model):
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.classify import classify

    folder = tmp_path / "imgs"
    write_image(folder / "x" / "0.png", size=(64, 48))
    attrs = tmp_path / "a.json"
    attrs.write_text(json.dumps({"Red Circle!": ["round", "a red rim"], "red circle?": ["round shape", "red"],
                                 "C++": ["plus signs", "braces"], "C#": ["a sharp", "braces too"]}))
    store = tmp_path / "s"
    with Catalog(store) as cat:
        import_attribute_file(cat, tiny_model, attrs, progress=False)
        index_images(cat, tiny_model, [str(folder)], RegionConfig(n_crops=3), progress=False)
        classify(cat, "lazsl", MethodConfig(top_k=0), progress=False)
    out = tmp_path / "maps"
    written = {}
    for name in ("Red Circle!", "red circle?", "C++", "C#"):
        res = invoke("explain", folder / "x" / "0.png", "--class", name, "-o", out, "--store", store, "--format", "json")
        assert res.exit_code == 0, res.output
        rows = json.loads(res.output)
        written[name] = {r[k] for r in rows for k in ("overlay", "npy") if r[k]}
    class_files = [next(f for f in fs if ".attr" not in f and f.endswith(".png")) for fs in written.values()]
    assert len(set(class_files)) == 4  # one class overlay each, none overwritten
    all_files = set().union(*written.values())
    assert all_files == {str(p) for p in out.iterdir()}  # every file a command reported is still there
    assert any("red-circle-" in f for f in class_files) and any(".c-" in f for f in class_files), class_files


# ---- "control characters (NUL, newlines) in class names are stored and printed raw" --------
@pytest.mark.parametrize("name,content,message", [
    ("classes.txt", b"cat\ndo\x00g\n", "classes.txt: line 2: the class name 'do\\x00g' contains U+0000 NUL"),
    ("classes.txt", b"cat\n\x1b[31mdog\n", "line 2: the class name '\\x1b[31mdog' contains U+001B escape"),
    ("classes.txt", "cat\nevil\u202egnp.exe\n".encode(), "contains U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("classes.csv", b'name\ncat\n"two\nlines"\n', "classes.csv: line 4: the class name 'two\\nlines' contains U+000A newline"),
    ("classes.json", json.dumps({"cat": ["a"], "do\ng": ["b"]}).encode(), "key 'do\\ng': the class name"),
    ("classes.json", json.dumps({"cat": ["fine", "bad\x07bell"]}).encode(), "key 'cat', item 2: the attribute text"),
])
def test_control_characters_in_names_refused_naming_the_place(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content)
    if name.endswith(".json"):
        res = invoke("build-attributes", "--from-json", f, "--store", tmp_path / "s", *MODEL_ARGS)
    else:
        res = invoke("build-attributes", f, "--llm-model", "m", "--base-url", "http://127.0.0.1:9/v1",
                     "--store", tmp_path / "s", *MODEL_ARGS)
    line = one_line_error(res, 1)
    assert message in line and "\x00" not in line and "\x1b" not in line and "\u202e" not in line
    assert not (tmp_path / "s").exists()


def test_folder_label_with_a_control_character_refused(tmp_path):
    write_image(tmp_path / "imgs" / "bad\x1bname" / "0.png", size=(32, 32))
    line = one_line_error(invoke("index-images", tmp_path / "imgs", "--store", tmp_path / "s", *MODEL_ARGS), 1)
    assert "the label (a folder name) 'bad\\x1bname' contains U+001B escape" in line


def test_llm_items_have_control_characters_replaced():
    from pipeline.stages.llm import parse_answer
    from pipeline.stages.llm.prompt_sets import get_prompt_set

    content = json.dumps({"descriptors": ["red\x00crest", "long\x1b[2Jtail", "black\u202ewings", "a\u2028beak"]})
    items, reason = parse_answer(content, get_prompt_set("descriptors"), "cardinal")
    assert reason is None and items == ["red crest", "long [2Jtail", "black wings", "a beak"]


def test_printed_tables_escape_control_characters():
    from pipeline.cli.output import format_rows

    out = format_rows(["path"], [["/img/a\x1b[31mb\nc\u202e.png"]])
    assert "\x1b" not in out and "\u202e" not in out and "/img/a\\x1b[31mb\\nc\\u202e.png" in out


def test_templates_are_text_not_format_strings(tmp_path, tiny_model, small):
    """A template line is substituted, never run through str.format (which would expand
    "{:>999999999}" to a gigabyte or reach attributes with "{0.__class__}")."""
    from pipeline.stages.attributes import add_class_prompts
    from pipeline.stages.classify import load_templates

    t = tmp_path / "t.txt"
    t.write_text("a photo of {} {:>999999999} {0.__class__}\n")
    templates = load_templates(str(t))
    with Catalog(small.store) as cat:
        add_class_prompts(cat, templates, "evil")
        prompts = {p for (p,) in cat.query("SELECT prompt FROM class_prompts WHERE template_set = 'evil'").fetchall()}
    assert prompts == {"a photo of cat {:>999999999} {0.__class__}", "a photo of dog {:>999999999} {0.__class__}"}
    t.write_text("a {} with a\x00nul\n")
    with pytest.raises(InputError, match="line 1: the template 'a {} with a\\\\x00nul' contains U\\+0000 NUL"):
        load_templates(str(t))


# ---- numbers and files elsewhere ------------------------------------------------------------
def test_store_that_is_a_file_or_has_no_parent(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file; a store is a folder" in one_line_error(invoke("catalog", "status", "--store", f), 1)
    assert "--store" in one_line_error(invoke("build-attributes", "--from-json", f, "--store", tmp_path / "a" / "b"), 1)
    assert not (tmp_path / "a").exists()


def test_boxes_rows_with_bad_numbers_are_one_line(tmp_path, small):
    for row, message in ([{"image": "x.png", "box": [0, 0, float("nan"), 4]}, "four finite numbers"],
                         [{"image": "x.png", "box": [0, 0, 10**400, 4]}, "four finite numbers"],
                         [{"image_id": "abc", "box": [0, 0, 4, 4]}, "image_id must be a non-negative integer"]):
        b = tmp_path / "b.jsonl"
        b.write_text(json.dumps(row) + "\n")
        res = invoke("faithfulness", "--boxes", b, "--max-images", "1", "--steps", "2", "--store", small.store, *MODEL_ARGS)
        assert message in one_line_error(res, 1)


def test_evaluate_two_runs_of_one_method_write_two_files(tmp_path, small):
    with Catalog(small.store) as cat:
        from pipeline.stages.classify import classify

        second = classify(cat, "lazsl", MethodConfig(top_k=0, theta=0.5), progress=False).run_id
    res = invoke("evaluate", "--run", small.run_id, "--run", second, "-o", tmp_path / "r", "--store", small.store)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert len(names) == 2 and names[0].endswith(f"_run{small.run_id}.json") and names[1].endswith(f"_run{second}.json")
    assert {json.loads((tmp_path / "r" / n).read_text())["run_id"] for n in names} == {small.run_id, second}


def test_image_file_bigger_than_limit_in_explain_is_one_line(tmp_path, small, monkeypatch):
    import pipeline.imaging as imaging

    monkeypatch.setattr(imaging, "DEFAULT_MAX_IMAGE_BYTES", 16)
    monkeypatch.setattr(imaging.read_image_file, "__defaults__", (16,))
    line = one_line_error(invoke("explain", small.image_path, "-o", tmp_path / "m", "--store", small.store), 1)
    assert "file too large" in line and small.image_path in line
    Image.open(small.image_path).verify()  # the file itself is fine: only the limit refused it


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--dataset", "cub\x00"], "--dataset: the dataset name 'cub\\x00' contains U+0000 NUL"),
    (["build-attributes", "{classes}", "--llm-model", "gpt\nx", "--base-url", "http://127.0.0.1:9/v1"],
     "--llm-model: the model name 'gpt\\nx' contains U+000A newline"),
    (["build-attributes", "{classes}", "--llm-model", "m", "--prompt-version", "../../../tmp/x", "--base-url",
      "http://127.0.0.1:9/v1", *MODEL_ARGS], "Unknown prompt set '../../../tmp/x'"),
])
def test_free_text_options_that_become_names_or_paths(small, args, message):
    args = [a.format(classes=small.classes) for a in args]
    assert message in one_line_error(invoke(*args, "--store", small.store), 1)


def test_a_preset_made_for_another_model_is_named_not_silently_used(small):
    """`--preset cub-b32` (LaZSL's CUB table for ViT-B-32) on a zsl-tiny store: a note says so."""
    res = CliRunner().invoke(cli, ["classify", "--method", "dclip", "--preset", "cub-b32", "--store", str(small.store)])
    assert res.exit_code == 0, res.output
    assert "preset cub-b32 was made for ViT-B-32, but this store's model is zsl-tiny" in res.output
    same = CliRunner().invoke(cli, ["classify", "--method", "dclip", "--preset", "toy-demo", "--store", str(small.store)])
    assert same.exit_code == 0 and "was made for" not in same.output, same.output
