"""Mutual-knowledge explanations through the stages, on the compositional toy world with
toy-compose: stored rows against queries.mutual_knowledge recomputed here, the paper's MI from the
stored counts, shared concepts and falling deletion curves on correct predictions, SQL, explain,
report and the comparison across stores."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.stages.methods import MethodConfig
from pipeline.imaging import open_image, read_image_file
from pipeline.stages.classify import classify
from pipeline.stages.evaluate import evaluate_run
from pipeline.stages.mutual_knowledge import ConceptConfig, compare_stores, concept_bank, explain_concepts, image_parts
from pipeline.sql import run_sql
from queries.mutual_knowledge import mutual_knowledge
from stores import tables
from stores.catalog import Catalog
from tests.helpers.compose_store import build_compose_store, toy_compose

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mk(tmp_path_factory):
    torch.set_num_threads(2)
    cs = build_compose_store(tmp_path_factory.mktemp("mk"), n_crops=2, open_world=False)
    with Catalog(cs.store) as cat:
        run_id = classify(cat, "clip", MethodConfig(), model=toy_compose(), progress=False).run_id
        rep = explain_concepts(cat, toy_compose(), run_id, bank_file=cs.world / "concepts.txt", progress=False)
    return cs, run_id, rep


def test_stored_explanations_are_the_pure_function(mk):
    cs, run_id, _ = mk
    model = toy_compose()
    cfg = ConceptConfig()
    with Catalog(cs.store, read_only=True) as cat:
        bank, dropped = concept_bank(cat, cs.world / "concepts.txt")
        prompts = dict(cat.query(
            "SELECT p.class_id, e.embedding FROM class_prompts p JOIN class_prompt_embeddings e USING (prompt_id) "
            "WHERE p.template_set = 'clip'").fetchall())
        top = tables.top1_images(cat, run_id)[:6]
        stored = {r["image_id"]: (tables.mutual_knowledge_row(cat, run_id, r["image_id"]),
                                  tables.concept_rows(cat, run_id, r["image_id"])) for r in top}
    # the bank: the world's descriptors and clutter texts; no pair name is a concept
    assert sorted(bank) == sorted(Path(cs.world / "concepts.txt").read_text().splitlines()) and dropped == 0
    bank_emb = model.encode_texts(bank)
    images = [open_image(read_image_file(r["path"])) for r in top]
    for r, (full, labels, boxes, parts) in zip(top, image_parts(model, images, cfg)):
        want = mutual_knowledge(parts, full, np.asarray(prompts[r["class_id"]]), bank_emb, part_topk=cfg.part_topk,
                                language_topk=cfg.language_topk)
        row, concepts = stored[r["image_id"]]
        assert row["class_id"] == r["class_id"] and row["n_parts"] == int(labels.max()) + 1
        assert row["mi"] == pytest.approx(want.mi, abs=1e-9)
        assert row["deletion_curve"] == pytest.approx(want.deletion.tolist(), abs=1e-9)
        assert [c["concept"] for c in concepts if c["side"] == "vision"] == [bank[a] for a in want.vision]
        assert [c["concept"] for c in concepts if c["side"] == "language"] == [bank[a] for a in want.language]
        for c in concepts:
            if c["side"] == "vision":  # the box of the part it describes, inside the 128 px image
                assert c["part"] is not None and 0 <= c["x0"] < c["x1"] <= 128 and 0 <= c["y0"] < c["y1"] <= 128
                assert (c["x0"], c["y0"], c["x1"], c["y1"]) == pytest.approx(tuple(boxes[c["part"]]))


def test_mi_is_the_papers_formula_of_the_stored_sets(mk):
    """k distinct shared concepts among N vision and M language concepts: MI = log N + log M + log k."""
    cs, run_id, _ = mk
    with Catalog(cs.store, read_only=True) as cat:
        rows = cat.query("SELECT m.n_vision, m.n_language, m.n_shared, m.mi, m.deletion_auc, m.deletion_curve, "
                         "(SELECT count(*) FROM concepts c WHERE c.run_id = m.run_id AND c.image_id = m.image_id "
                         " AND c.side = 'vision' AND c.shared) FROM mutual_knowledge m WHERE m.run_id = ?",
                         [run_id]).fetchall()
    assert len(rows) == 36
    for n, m, k, mi, auc, curve, k_rows in rows:
        assert k == k_rows and len(curve) == n + 1
        assert mi == pytest.approx(math.log(n) + math.log(m) + math.log(k) if k else 0.0, abs=1e-6)
        assert auc == pytest.approx(float(np.mean(curve)))
        assert all(b <= a + 1e-12 for a, b in zip(curve, curve[1:]))  # deleting never adds mutual knowledge


def test_correct_predictions_share_a_concept_and_their_deletion_curves_fall(mk):
    cs, run_id, rep = mk
    with Catalog(cs.store, read_only=True) as cat:
        rows = tables.mutual_knowledge_images(cat, run_id)
        ev = evaluate_run(cat, run_id)
    correct = [r for r in rows if r["label"].replace("_", " ") == r["predicted_norm"]]
    assert len(correct) == round(ev.metrics["acc1"] * 36) and len(correct) >= 10
    for r in correct:
        assert r["n_shared"] >= 1, r
        assert r["deletion_curve"][-1] < r["deletion_curve"][0]
    s = rep.summary
    assert s["acc1"] == pytest.approx(ev.metrics["acc1"])
    assert s["mi_correct"] == pytest.approx(np.mean([r["mi"] for r in correct]))


def test_concepts_in_sql_explain_and_report(mk, tmp_path):
    from pipeline.explain.explain import explain_image
    from pipeline.explain.report import build_report

    cs, run_id, _ = mk
    with Catalog(cs.store) as cat:
        image_id, = cat.query("SELECT image_id FROM mutual_knowledge WHERE run_id = ? AND n_shared > 0 "
                              "ORDER BY image_id LIMIT 1", [run_id]).fetchone()
        (vision, shared, language), = cat.query(
            "SELECT vision, shared, language FROM concept_sets WHERE run_id = ? AND image_id = ?", [run_id, image_id]).fetchall()
        classify(cat, "czsl-local", MethodConfig(), model=toy_compose(), progress=False)
        lazsl = tables.latest_run(cat).run_id
        explain_concepts(cat, toy_compose(), lazsl, image_ids=[image_id], progress=False)
        res = explain_image(cat, image_id, run_id=lazsl, out_dir=tmp_path / "maps")
        build_report(cat, run_id, tmp_path / "r.html", limit=None)
    assert shared and set(shared) <= set(vision) and set(shared) <= set(language)
    text = "\n".join(res.summary_lines())
    assert "mutual knowledge (run" in text and "shared" in text
    html = (tmp_path / "r.html").read_text()
    assert html.count("Mutual knowledge</b>") == 36
    assert f"<b>{'; '.join(shared)}</b>" in html


def test_docs_sql_examples_run_on_a_pair_store_with_explanations(mk):
    cs, _, _ = mk
    blocks = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "compositional.md").read_text(), re.S)
    assert len(blocks) >= 4
    with Catalog(cs.store) as cat:
        if "czsl-local" not in tables.latest_runs_by_method(cat):  # pair_regions to query
            classify(cat, "czsl-local", MethodConfig(), model=toy_compose(), progress=False)
    with Catalog(cs.store, read_only=True) as cat:
        for q in blocks:
            cols, rows = run_sql(cat, q)
            assert cols and rows, q


def test_compare_prints_accuracy_beside_mi_per_store(mk, tmp_path):
    cs, run_id, _ = mk
    rows = compare_stores([str(cs.store)], method="clip", compute=False)
    (row,) = rows
    with Catalog(cs.store, read_only=True) as cat:
        ev = evaluate_run(cat, row["run_id"])
        mi, auc = cat.query("SELECT avg(mi), avg(deletion_auc) FROM mutual_knowledge WHERE run_id = ?",
                            [row["run_id"]]).fetchone()
    assert row["run_id"] == run_id and row["acc1"] == pytest.approx(ev.metrics["acc1"])
    assert row["mi"] == pytest.approx(mi) and row["deletion_auc"] == pytest.approx(auc)
    assert row["model"].startswith("zsl-compose/") and json.dumps(row)


def test_concept_bank_leaves_out_texts_that_name_a_class(tmp_path):
    from pipeline.stages.attributes import add_attributes

    bank_file = tmp_path / "more.txt"
    bank_file.write_text("a grey stone\n\na Dog bowl\nfloppy ears\n")
    with Catalog(tmp_path / "s") as cat:
        add_attributes(cat, {"cat": ["pointy ears", "a cat face", "catalogue print"], "dog": ["floppy ears"]},
                       source="t", style="descriptors")
        bank, dropped = concept_bank(cat, bank_file)
    # whole-word class names only: "catalogue print" stays, "a cat face" and "a Dog bowl" go
    assert bank == ["pointy ears", "catalogue print", "floppy ears", "a grey stone"] and dropped == 2
