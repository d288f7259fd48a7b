"""The compositional and mutual-knowledge commands end to end, as a user types them."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from stores.catalog import Catalog


def run(args, ok=True):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-czsl")
    w, s = root / "w", ["--store", root / "s"]
    out = run(["make-composeworld", "-o", w, "--n-per-pair", "1", "--seed", "3"]).output
    assert "24 seen + 12 unseen pairs x 1 images" in out
    out = run(["build-attributes", "--states", w / "states.txt", "--objects", w / "objects.txt", "--pairs", w / "pairs.txt",
               "--seen", w / "seen_pairs.txt", "--open-world", "--attributes-states", w / "attributes_states.json",
               "--attributes-objects", w / "attributes_objects.json", "--pretrained", "toy-compose", *s]).output
    assert "8 states, 6 objects, 36 pairs (24 seen, 12 unseen), 12 open-world-only pairs" in out
    run(["index-images", w / "images", "--n-crops", "4", "--crop-min", "0.4", "--workers", "0", *s])
    return root, w, s


def test_classify_evaluate_explain_pairs(flow):
    root, w, s = flow
    out = run(["classify", "--method", "czsl-local", "--open-world", "--feasibility-threshold", "0.6", "--limit", "0", *s]).output
    assert "feasibility left out" in out and "of 48 pairs" in out
    with Catalog(root / "s", read_only=True) as cat:
        removed = cat.query("SELECT count(*) FROM pair_feasibility WHERE removed").fetchone()[0]
    assert f"left out {removed} of 48 pairs" in out
    rows = json.loads(run(["evaluate", "--method", "clip,czsl-local", "--format", "json", *s]).stdout)
    assert [r["method"] for r in rows] == ["clip", "czsl-local"]
    assert all(0 <= r["closed_hm"] <= 1 and r["seen_images"] == 24 and r["unseen_images"] == 12 for r in rows)
    table = run(["evaluate", *s]).output
    assert "CZSL (24 seen and 12 unseen images" in table
    out = run(["explain", w / "images" / "striped_cup" / "0000.png", "--run", rows[1]["run_id"], "-o", root / "maps", *s]).output
    assert "state carried most by region" in " ".join(out.split()) and "object carried most by region" in " ".join(out.split())


def test_mutual_knowledge_explain_concepts_and_compare(flow):
    root, w, s = flow
    run(["classify", "--method", "clip", "--limit", "0", *s])
    (row,) = json.loads(run(["mutual-knowledge", "--max-images", "3", "--bank", w / "concepts.txt", "--format", "json", *s]).stdout)
    assert row["method"] == "clip" and row["images"] == 3 and row["bank"] == 36
    img = w / "images" / "striped_cup" / "0000.png"
    concepts = json.loads(run(["explain-concepts", img, "--format", "json", *s]).stdout)
    assert {c["side"] for c in concepts} == {"vision", "language"} and len([c for c in concepts if c["side"] == "language"]) == 4
    text = run(["explain-concepts", img, *s]).output
    assert "vision only" in text and "language only" in text and "MI" in text
    (cmp,) = json.loads(run(["compare", root / "s", "--no-compute", "--format", "json"]).stdout)
    assert cmp["method"] == "clip" and cmp["images"] >= 3 and cmp["mi"] == pytest.approx(cmp["mi"])


def test_pair_vocabulary_errors_are_one_line(flow, tmp_path):
    root, w, s = flow
    bad = tmp_path / "seen.txt"
    bad.write_text("striped teapot\n")
    for args in (["build-attributes", "--states", w / "states.txt", *s],
                 ["build-attributes", "--pairs", w / "pairs.txt", "--seen", bad, *s],
                 ["build-attributes", "--pairs", w / "pairs.txt", "--from-json", w / "attributes_pairs.json", *s],
                 ["classify", "--method", "czsl-local", "--store", tmp_path / "plain"],
                 ["compare", tmp_path]):
        res = run(args, ok=False)
        assert res.exit_code in (1, 2) and len(res.output.strip().splitlines()) == 1, (args, res.output)
        assert "Traceback" not in res.output
