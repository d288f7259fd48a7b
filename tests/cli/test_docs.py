"""Every ```sql block of README.md and docs/explanations.md runs on a store with a run."""
import json
import re
from pathlib import Path

import pytest
from tests.helpers.stores import build_truth_store

from pipeline.explain.faithfulness import faithfulness
from pipeline.sql import run_sql
from stores.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]  # the repository
DOCS = [ROOT / "README.md", ROOT / "docs" / "explanations.md"]


def sql_blocks():
    out = []
    for doc in DOCS:
        for i, m in enumerate(re.finditer(r"```sql\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)):
            out.append(pytest.param(m.group(1), id=f"{doc.name}-{i}"))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("docsql")
    ts = build_truth_store(root, tiny_model, per_class=2, n_crops=12, crop_min=0.5)
    boxes = root / "boxes.jsonl"
    boxes.write_text("\n".join(json.dumps({"image": im.path, "class": im.label, "attribute": im.label.split()[0] + " colour",
                                           "x0": im.bbox[0], "y0": im.bbox[1], "x1": im.bbox[2], "y1": im.bbox[3]})
                               for im in ts.images))
    with Catalog(ts.root) as cat:
        faithfulness(cat, None, steps=2, boxes_file=boxes, progress=False,
                     scorer=lambda b, t: b.reshape(len(b), -1).mean(1) / 255.0)
        from pipeline.explain.compare import compare_maps

        compare_maps(cat, tiny_model, kinds=["crop-boxes"], steps=2, boxes_file=boxes, progress=False, scorer="dclip")
    return ts.root


def test_docs_have_sql_examples():
    names = {p.id.split("-")[0] for p in sql_blocks()}
    assert names == {"README.md", "explanations.md"}
    text = " ".join(p.values[0] for p in sql_blocks())
    for view in ("contributions", "top_attributes", "class_confusions", "attribute_usage", "contrasts"):
        assert view in text


@pytest.mark.parametrize("query", sql_blocks())
def test_doc_query_runs_read_only_and_returns_rows(store, query):
    with Catalog(store, read_only=True) as cat:
        cols, rows = run_sql(cat, query)
    assert cols and rows, query  # each example is written to show something on a store with a run
