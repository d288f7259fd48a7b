import json

import numpy as np
import pytest

from pipeline.stages.attributes import (
    InputError,
    dclip_sentence,
    import_attribute_file,
    read_attribute_json,
    render_prompt,
)
from stores.catalog import Catalog
from stores.faiss_index import index_vectors, read_index


@pytest.mark.parametrize(
    "desc,sentence",
    [
        ("a red crest", "which is a red crest"),
        ("antlers", "which is antlers"),  # DCLIP's plain prefix test, kept on purpose
        ("has four legs", "which has four legs"),
        ("often found in water", "which often found in water"),
        ("used for cutting", "which is used for cutting"),
        ("black stripes", "which has black stripes"),
    ],
)
def test_dclip_sentence_rule(desc, sentence):
    assert dclip_sentence(desc) == sentence


def test_render_prompt():
    assert render_prompt("tabby cat", "pointy ears", "descriptors") == "tabby cat, which has pointy ears"
    assert render_prompt("tabby cat", "pointy ears", "descriptors", after_text=".") == "tabby cat, which has pointy ears."
    assert render_prompt("donuts", "", "descriptors") == "donuts"
    assert render_prompt("x", "A photo of a cat.", "sentences") == "A photo of a cat."


def test_read_json_merges_duplicates_and_reports_empty(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"Great_White shark": ["fin"], "great white  shark": ["fin", "teeth"], "donuts": []}')
    mapping, report = read_attribute_json(p)
    assert mapping == {"Great White shark": ["fin", "teeth"], "donuts": [""]}
    assert report.duplicates == ["great white shark"]
    assert report.empty == ["donuts"]


@pytest.mark.parametrize(
    "content,match",
    [(b"\xff\xfe\x00bad", "UTF-8"), (b"{not json", "not valid JSON"), (b'{"a": [1, 2]}', "list of strings"), (b'{"  ": ["x"]}', "empty class name")],
)
def test_bad_json_is_a_clear_error(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_attribute_json(p)


def test_import_stores_rows_embeddings_and_indexes(tmp_path, tiny_model, attr_file):
    with Catalog(tmp_path / "s") as cat:
        rep = import_attribute_file(cat, tiny_model, attr_file, progress=False)
        assert rep.attributes == 5 and rep.style == "descriptors"
        rows = cat.query("select c.name, a.text, a.prompt from attributes a join classes c using (class_id) order by attr_id").fetchall()
        assert rows[0] == ("cat", "pointy ears", "cat, which has pointy ears")
        assert rows[4] == ("dog", "has a wet nose", "dog, which has a wet nose")
        emb = np.array([r[0] for r in cat.query("select embedding from attribute_embeddings order by attr_id").fetchall()], np.float32)
        assert emb.shape == (5, tiny_model.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        # the stored embedding is the encoding of the stored prompt
        np.testing.assert_allclose(emb, tiny_model.encode_texts([r[2] for r in rows]), atol=1e-5)
        # Faiss: attribute ids and one prototype per class = normalised mean
        ids, vecs = index_vectors(read_index(cat.root / "faiss" / "attributes.index", model=tiny_model.fingerprint)[0])
        assert sorted(ids.tolist()) == [1, 2, 3, 4, 5]
        pids, pvecs = index_vectors(read_index(cat.root / "faiss" / "class_prototypes.index")[0])
        cat_proto = emb[:3].mean(0)
        np.testing.assert_allclose(pvecs[list(pids).index(1)], cat_proto / np.linalg.norm(cat_proto), atol=1e-5)
        # importing again adds nothing
        assert import_attribute_file(cat, tiny_model, attr_file, progress=False).attributes == 0
        assert cat.query("select count(*) from attribute_embeddings").fetchone()[0] == 5


@pytest.mark.parametrize("folder", ["dclip", "cupl"])
def test_shared_descriptor_files_import(tmp_path, folder):
    from tests.helpers import SHARED

    files = sorted((SHARED / "data" / "descriptors" / folder).glob("*.json"))
    if not files:
        pytest.skip("../shared/data/descriptors not present")
    for f in files:
        mapping, report = read_attribute_json(f)
        assert report.classes == len(mapping) > 0
        raw = json.loads(f.read_text())
        assert len(mapping) + len(report.duplicates) == len({k.replace("_", " ").strip().lower() for k in raw}) + len(report.duplicates)
        if f.name == "descriptors_food101.json":
            assert len(report.empty) == 5
