"""Texts as the upstream code reads them: repeats kept with their count, AWT's description files
and prompts, and parity on the real descriptor files in ../shared (CuPL's and AWT's).

The real-file tests skip when ../shared is absent (set ZSL_SHARED for a checkout elsewhere)."""
import json

import numpy as np
import pytest

from pipeline.config import RegionConfig
from pipeline.stages.methods import MethodConfig
from pipeline.stages.attributes import (
    add_attributes,
    awt_template_for,
    drop_blank_texts,
    first_per_class,
    import_attribute_file,
    read_attribute_lists,
)
from pipeline.stages.methods import get_method
from pipeline.stages.classify import classify
from pipeline.stages.index_images import index_images
from queries.awt import awt_scores
from stores import tables
from stores.catalog import Catalog
from tests.helpers import SHARED, write_image

DESCRIPTORS = SHARED / "data" / "descriptors"
needs_shared = pytest.mark.skipif(not DESCRIPTORS.is_dir(), reason="../shared/data/descriptors not present")


def class_means(m: tables.TextMatrix) -> dict[int, np.ndarray]:
    """Mean embedding of each class's rows (repeats weigh as many times as they are stored)."""
    return {int(c): m.embeddings[m.class_ids == c].astype(np.float64).mean(0) for c in np.unique(m.class_ids)}


def rows_per_class(cat, style: str) -> dict[str, list[str]]:
    return {name: [t for t, _ in rows] for name, rows in tables.attributes_by_class(cat, style).items()}


@pytest.fixture(scope="module")
def toy_clip():
    from pipeline.models import load_model

    return load_model("zsl-tiny", "toy-clip", device="cpu")


# ---- repeats --------------------------------------------------------------------------------
def test_repeated_texts_are_kept_once_per_occurrence(tmp_path, tiny_model):
    f = tmp_path / "cupl_pets.json"
    sentences = ["A cat is a small furry animal.", "A cat is a small furry animal.", "Cats have whiskers on the face."]
    f.write_text(json.dumps({"cat": sentences, "dog": ["A dog has a wet nose.", "Dogs bark at strangers a lot."]}))
    with Catalog(tmp_path / "s") as cat:
        report = import_attribute_file(cat, tiny_model, f, progress=False)
        assert (report.style, report.attributes, report.repeated_texts) == ("sentences", 5, 1)
        assert rows_per_class(cat, "sentences")["cat"] == sentences
        m = tables.attribute_matrix(cat, cat.model, "sentences")
        cid = tables.class_ids_by_norm(cat)["cat"]
        want = tiny_model.encode_texts(sentences).astype(np.float64).mean(0)  # upstream: mean over the list
        np.testing.assert_allclose(class_means(m)[cid], want, atol=1e-6)
        # the same file again adds nothing; a list holding a text once more adds that one row
        assert import_attribute_file(cat, tiny_model, f, progress=False).attributes == 0
        f.write_text(json.dumps({"cat": sentences + [sentences[0]]}))
        assert import_attribute_file(cat, tiny_model, f, progress=False).attributes == 1
        assert rows_per_class(cat, "sentences")["cat"] == sentences + [sentences[0]]
        # the repeated prompt was encoded once per chunk, and each row has its embedding
        assert cat.query("select count(*) from attribute_embeddings").fetchone()[0] == 6


# ---- AWT -----------------------------------------------------------------------------------
AWT_FILE = {
    "cat": ["Cats have pointed ears.", "", "Cats have pointed ears.", "A cat has whiskers.", "The fifth text is cut."],
    "dog": ["Dogs have floppy ears.", "A dog has a wet nose.", "Dogs wag their tails.", "Dogs bark.", "Cut as well."],
}


@pytest.fixture(scope="module")
def awt_store(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("awt")
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(2):
            write_image(root / "imgs" / c / f"{i}.png", size=(96, 80 + 8 * i), color=color, seed=i + 10 * (c == "dog"))
    (root / "awt_cub.json").write_text(json.dumps(AWT_FILE))
    (root / "d.json").write_text(json.dumps({"cat": ["pointy ears"], "dog": ["floppy ears"]}))
    cat = Catalog(root / "s")
    import_attribute_file(cat, tiny_model, root / "d.json", progress=False)
    report = import_attribute_file(cat, tiny_model, root / "awt_cub.json", progress=False)
    index_images(cat, tiny_model, [str(root / "imgs")], RegionConfig(n_crops=2, n_views=4), progress=False,
                 dtype="float32")
    yield cat, report
    cat.close()


def test_awt_file_is_recognised_and_stored_with_awt_prompts(awt_store):
    cat, report = awt_store
    assert report.style == "awt" and report.class_template == "a photo of the {}"  # AWT's cub template
    assert awt_template_for("cub.json") == awt_template_for("awt_cub.json") == "a photo of the {}"
    assert awt_template_for("awt_dtd.json") == "a photo of a {}, which is a type of texture, or a type of pattern"
    stored = dict(tables.attributes_by_class(cat, "awt"))
    assert [t for t, _ in stored["cat"]] == AWT_FILE["cat"]  # blanks and repeats kept, in order
    assert [p for _, p in stored["cat"]][:2] == ["a photo of the cat. Cats have pointed ears.", "a photo of the cat. "]


def test_awt_default_scores_as_awt_code(awt_store, tiny_model):
    """--method awt by default: the class prompt 'a photo of the {c}.' and the first N
    descriptions, each 'a photo of the {c}. {d}', encoded and scored as AWT's evaluate.py."""
    cat, _ = awt_store
    config = MethodConfig(top_k=0, awt_descriptions=4)
    run = classify(cat, "awt", config, model=tiny_model, progress=False)
    assert run.params["texts"]["kind"] == "awt" and run.params["texts"]["n_texts"] == 8 and not run.notes
    names = sorted(tables.class_names(cat).items())
    texts, cls, prompts = [], [], []
    for c, (_, name) in enumerate(names):  # AWT's loop: prompt = template.format(c); prompt + '.', prompt + '. ' + d
        head = f"a photo of the {name}"
        prompts.append(head + ".")
        texts += [head + ". " + d for d in AWT_FILE[name][:4]]
        cls += [c] * 4
    t_emb = tiny_model.encode_texts(texts).astype(np.float64)
    p_emb = tiny_model.encode_texts(prompts).astype(np.float64)
    scale = float(tiny_model.model.logit_scale.detach().exp())
    got = {(i, c): s for i, c, s in cat.query(
        "select image_id, class_id, score from predictions where run_id = ?", [run.run_id]).fetchall()}
    for (iid,) in cat.query("select image_id from images order by image_id").fetchall():
        views = np.array([r[0] for r in cat.query(
            "select embedding from regions where image_id = ? and kind in ('full', 'view', 'view-flip') "
            "order by kind <> 'full', region_id", [iid]).fetchall()], np.float64)
        want = awt_scores(views[None], t_emb, np.array(cls), p_emb, logit_scale=scale).scores[0]
        for c, (cid, _) in enumerate(names):
            assert abs(got[(iid, cid)] - want[c]) < 1e-5


def test_awt_without_awt_descriptions_falls_back_and_says_so(tmp_path, tiny_model, image_folder, attr_file):
    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, tiny_model, attr_file, progress=False)
        index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=2, n_views=2), progress=False)
        run = classify(cat, "awt", MethodConfig(top_k=0), model=tiny_model, progress=False)
        assert run.params["texts"]["kind"].startswith("descriptors (no AWT descriptions")
        assert run.params["texts"]["photo"] == 2 and "descriptors+prompt" in run.notes[0]
        same = classify(cat, "awt", MethodConfig(top_k=0, awt_texts="descriptors+prompt"), model=tiny_model,
                        progress=False)
        rows = "select image_id, class_id, score from predictions where run_id = ? order by all"
        assert cat.query(rows, [run.run_id]).fetchall() == cat.query(rows, [same.run_id]).fetchall()


# ---- the real files ----------------------------------------------------------------------------
REAL_FILES = ["cupl/cupl_cub.json", "cupl/cupl_dtd.json", "cupl/cupl_eurosat.json", "cupl/cupl_food101.json",
              "cupl/cupl_oxford_pet.json", "awt/awt_cub.json", "awt/awt_dtd.json", "awt/awt_food101.json"]


@needs_shared
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_text_counts_per_class_equal_the_files(tmp_path, name):
    """Every class stores as many texts as its list holds (repeats included; AWT: blanks too)."""
    path = DESCRIPTORS / name
    raw = json.loads(path.read_text())
    lists, report = read_attribute_lists(path)
    style = "awt" if name.startswith("awt/") else "sentences"
    from pipeline.stages.attributes import guess_style

    assert guess_style(lists, path) == style
    mapping = lists if style == "awt" else drop_blank_texts(lists, report)
    with Catalog(tmp_path / "s") as cat:
        add_attributes(cat, mapping, source=f"file:{path.name}", style=style)
        stored = rows_per_class(cat, style)
        in_order = cat.query("select c.name, a.text from attributes a join classes c using (class_id) "
                             "where a.style = ? order by a.attr_id", [style]).fetchall()
    assert len(stored) == len(raw)
    if style == "awt":  # AWT's cut, on every class: the first 50 of the file's list
        names = np.array([cls for cls, _ in in_order])
        keep = first_per_class(np.unique(names, return_inverse=True)[1], 50)
        cut: dict[str, list[str]] = {}
        for (cls, text), k in zip(in_order, keep):
            if k:
                cut.setdefault(cls, []).append(text)
        assert cut == {cls: texts[:50] for cls, texts in stored.items()}
    by_norm = {k.replace("_", " ").lower(): v for k, v in raw.items()}
    for cls, texts in stored.items():
        # blanks collapsed, as the tokenizer collapses them (the encoded tokens are the same)
        assert texts == [" ".join(t.split()) for t in by_norm[cls.lower()]], cls
    repeats = sum(len(v) - len(set(v)) for v in raw.values())
    assert report.repeated_texts >= repeats  # >=: "a." and "a. " are one text once stripped
    if name == "cupl/cupl_cub.json":
        assert (repeats, sum(len(v) > len(set(v)) for v in raw.values())) == (596, 183)
    if name == "cupl/cupl_eurosat.json":
        assert sum(len(v) for v in stored.values()) == 398
    if name == "awt/awt_cub.json":
        assert repeats == 50


def _subset_file(tmp_path, name: str, n_classes: int):
    """The file's first classes, their lists unchanged, under the file's own name."""
    raw = json.loads((DESCRIPTORS / name).read_text())
    sub = dict(list(raw.items())[:n_classes])
    out = tmp_path / name.split("/")[-1]
    out.write_text(json.dumps(sub))
    return out, sub


@needs_shared
@pytest.mark.parametrize("name", ["cupl/cupl_eurosat.json", "cupl/cupl_cub.json"])
def test_cupl_class_text_means_equal_a_plain_loop(tmp_path, toy_clip, name):
    """The mean of a class's stored sentence embeddings (toy-clip, through the store) equals the
    mean over the file's list encoded in a plain loop: what CuPL and WCA average."""
    path, raw = _subset_file(tmp_path, name, 10)  # eurosat: all 10 classes; cub: the first 10
    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, toy_clip, path, progress=False)
        means = class_means(tables.attribute_matrix(cat, cat.model, "sentences"))
        ids = tables.class_ids_by_norm(cat)
    assert len(means) == len(raw)
    for key, sentences in raw.items():
        want = np.mean([toy_clip.encode_texts([s])[0] for s in sentences], axis=0)
        np.testing.assert_allclose(means[ids[key.lower()]], want, atol=2e-6, err_msg=key)


@needs_shared
def test_awt_class_text_means_equal_a_plain_loop(tmp_path, toy_clip):
    """AWT's texts through the store (awt_cub.json, toy-clip) against AWT's own loop: the
    class prompt 'a photo of the {c}.' and 'a photo of the {c}. {d}' for its first 50 descriptions."""
    path, raw = _subset_file(tmp_path, "awt/awt_cub.json", 6)
    with Catalog(tmp_path / "s") as cat:
        import_attribute_file(cat, toy_clip, path, progress=False)
        spec = get_method("awt")
        texts = spec.texts(cat, spec.make_config(MethodConfig()), toy_clip, "awt")
        ids = tables.class_ids_by_norm(cat)
        n_per_class = np.bincount(texts.attrs.class_ids)
        assert set(n_per_class[n_per_class > 0]) == {50}
        means = class_means(tables.TextMatrix(np.concatenate([texts.photo.ids, texts.attrs.ids]),
                                              np.concatenate([texts.photo.class_ids, texts.attrs.class_ids]),
                                              np.concatenate([texts.photo.embeddings, texts.attrs.embeddings])))
    for key, descriptions in raw.items():
        prompt = "a photo of the {}".format(key.replace("_", " "))
        loop = [prompt + "."] + [prompt + ". " + d for d in descriptions[:50]]
        want = np.mean([toy_clip.encode_texts([s])[0] for s in loop], axis=0)
        np.testing.assert_allclose(means[ids[key.replace("_", " ").lower()]], want, atol=2e-6, err_msg=key)


def test_build_attributes_awt_template_option(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    f = tmp_path / "descriptions.json"
    f.write_text(json.dumps({"snow_leopard": ["It has thick fur.", ""]}))
    store = ["--store", str(tmp_path / "s"), "--model", "zsl-tiny", "--pretrained", "random:0"]
    bad = CliRunner().invoke(cli, ["build-attributes", "--from-json", str(f), "--style", "awt", "--awt-template", "x",
                                   *store])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1 and "{}" in bad.output
    res = CliRunner().invoke(cli, ["build-attributes", "--from-json", str(f), "--style", "awt", "--awt-template",
                                   "a sketch of a {}", *store])
    assert res.exit_code == 0, res.output
    assert 'AWT prompts: "a sketch of a {}. {description}"' in res.output
    with Catalog(tmp_path / "s", read_only=True) as cat:
        assert [p for _, p in tables.attributes_by_class(cat, "awt")["snow leopard"]] == [
            "a sketch of a snow leopard. It has thick fur.", "a sketch of a snow leopard. "]
        assert awt_class_prompts_of(cat) == {"snow leopard": ("a sketch of a {}", "a sketch of a snow leopard.")}


def awt_class_prompts_of(cat):
    from pipeline.stages.attributes import awt_class_prompts

    names = tables.class_names(cat)
    return {names[cid]: items[0] for cid, items in awt_class_prompts(cat).items()}
