"""(state, object) pairs through the stages: what build-attributes stores, that every stored
czsl-* row is the pure function (queries.compositional) on the stored embeddings, evaluate's
CZSL figures against czsl_metrics on a score matrix read back independently, the open-world
feasibility filter, explain's state/object regions, and a plain store left as it was."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.stages.methods import MethodConfig
from pipeline.stages.classify import classify
from pipeline.stages.evaluate import evaluate_run, format_table, table_rows
from pipeline.toy import compose_world as cw
from queries.compositional import compositional_scores, czsl_metrics, feasibility
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError
from tests.helpers.compose_store import build_compose_store, toy_compose

THETA = 0.9


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    torch.set_num_threads(2)
    return build_compose_store(tmp_path_factory.mktemp("czsl"))


@pytest.fixture(scope="module")
def runs(cs):
    """One run of each method (closed world), and plain clip for comparison."""
    out = {}
    with Catalog(cs.store) as cat:
        for method, cfg in (("clip", MethodConfig()), ("czsl-clip", MethodConfig()),
                            ("czsl-clip-0", MethodConfig(state_weight=0.0, object_weight=0.0)),
                            ("czsl-local", MethodConfig(theta=THETA))):
            out[method] = classify(cat, method.removesuffix("-0"), cfg, model=toy_compose(), progress=False).run_id
    return out


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _emb(rows):
    return np.array([r[-1] for r in rows], np.float32)


def test_pairs_are_classes_with_their_flags_roles_and_texts(cs):
    split = cw.make_pair_split(0)
    with Catalog(cs.store, read_only=True) as cat:
        rows = cat.query("SELECT name, state, object, seen, open_only FROM pairs").fetchall()
        roles = cat.query("SELECT a.text, r.role FROM attributes a JOIN attribute_roles r USING (attr_id) "
                          "JOIN classes c USING (class_id) WHERE c.name = 'striped cup' ORDER BY a.attr_id").fetchall()
        texts = dict(cat.query("SELECT t.style || ':' || v.name || ':' || t.text, t.prompt FROM czsl_texts t "
                               "JOIN czsl_vocab v USING (vocab_id)").fetchall())
        n_classes = tables.class_count(cat)
    assert all(name == f"{s} {o}" for name, s, o, _, _ in rows) and n_classes == len(rows) == 48
    assert {(s, o) for _, s, o, seen, oo in rows if seen} == set(split.seen)
    assert {(s, o) for _, s, o, seen, oo in rows if not seen and not oo} == set(split.unseen)
    assert {(s, o) for _, s, o, seen, oo in rows if oo} == set(split.open_only)
    assert roles == [(d, "state") for d in cw.STATES["striped"]] + [(d, "object") for d in cw.OBJECTS["cup"]]
    assert len(texts) == 8 * 3 + 6 * 3  # a name prompt and two descriptors each
    assert texts["clip:striped:"] == "a photo of something striped."
    assert texts["descriptors:striped:thin horizontal lines"] == "striped, which has thin horizontal lines"
    assert texts["clip:boot:"] == "a photo of a boot."


def _inputs(cat, closed_only=True):
    """The czsl-local inputs read back with plain SQL (not through the stage's readers)."""
    fp = cat.model
    pairs = cat.query("SELECT class_id, state_id, object_id, seen FROM czsl_pairs WHERE NOT open_only OR NOT ? "
                      "ORDER BY class_id", [closed_only]).fetchall()
    ids = [p[0] for p in pairs]
    states = [r[0] for r in cat.query("SELECT vocab_id FROM czsl_vocab WHERE kind = 'state' ORDER BY vocab_id").fetchall()]
    objects = [r[0] for r in cat.query("SELECT vocab_id FROM czsl_vocab WHERE kind = 'object' ORDER BY vocab_id").fetchall()]
    pa = cat.query("SELECT a.attr_id, a.class_id, r.role, e.embedding FROM attributes a JOIN attribute_embeddings e "
                   "USING (attr_id) JOIN attribute_roles r USING (attr_id) WHERE e.model = ? ORDER BY a.attr_id", [fp]).fetchall()
    pa = [r for r in pa if r[1] in ids]

    def branch(kind, vocab):
        rows = cat.query("SELECT t.vocab_id, e.embedding FROM czsl_texts t JOIN czsl_vocab v USING (vocab_id) "
                         "JOIN czsl_text_embeddings e USING (text_id) WHERE v.kind = ? AND t.style = 'descriptors' "
                         "AND e.model = ? ORDER BY t.text_id", [kind, fp]).fetchall()
        return _emb(rows), np.array([vocab.index(r[0]) for r in rows])

    s_emb, s_idx = branch("state", states)
    o_emb, o_idx = branch("object", objects)
    return dict(ids=np.array(ids), attr_ids=np.array([r[0] for r in pa]), pair_attr=_emb(pa),
                pair_cls=np.array([ids.index(r[1]) for r in pa]),
                role=np.array([{"state": 0, "object": 1, "pair": 2}[r[2]] for r in pa]),
                s_emb=s_emb, s_idx=s_idx, o_emb=o_emb, o_idx=o_idx,
                ps=np.array([states.index(p[1]) for p in pairs]), po=np.array([objects.index(p[2]) for p in pairs]),
                seen=np.array([bool(p[3]) for p in pairs]))


def test_czsl_local_rows_are_the_pure_function_on_stored_embeddings(cs, runs):
    run_id = runs["czsl-local"]
    scale = float(toy_compose().model.logit_scale.detach().exp())
    with Catalog(cs.store, read_only=True) as cat:
        x = _inputs(cat)
        (batch,) = list(tables.iter_region_batches(cat))
        res = compositional_scores(batch.full, batch.regions, x["pair_attr"], x["pair_cls"], x["s_emb"], x["s_idx"],
                                   x["o_emb"], x["o_idx"], x["ps"], x["po"], pair_attr_role=x["role"], local=True,
                                   logit_scale=scale, theta=THETA)
        pred = cat.query("SELECT image_id, class_id, score, rank FROM predictions WHERE run_id = ?", [run_id]).fetchall()
        paid = dict(((i, c), v) for i, c, v in cat.query(
            "SELECT image_id, class_id, sum(mass * similarity) FROM alignments WHERE run_id = ? GROUP BY ALL",
            [run_id]).fetchall())
        branch = {(r[0], r[1]): r[2:] for r in cat.query(
            "SELECT image_id, class_id, pair_score, state_prob, object_prob FROM pair_scores WHERE run_id = ?",
            [run_id]).fetchall()}
        regions = cat.query("SELECT image_id, class_id, region_id, state_weight, object_weight FROM pair_regions "
                            "WHERE run_id = ?", [run_id]).fetchall()
        params = tables.get_run(cat, run_id).params
    assert params["logit_scale"] == pytest.approx(scale) and params["n_classes"] == 36
    row = {int(i): k for k, i in enumerate(batch.image_ids)}
    col = {int(c): k for k, c in enumerate(x["ids"])}
    assert len(pred) == len(row) * 36  # every candidate pair is stored: the CZSL bias sweep needs them all
    for image_id, class_id, score, rank in pred:
        b, p = row[image_id], col[class_id]
        assert score == pytest.approx(float(res.scores[b, p]), abs=1e-4)
        assert rank == 1 + int((res.scores[b] > res.scores[b, p]).sum())
        assert paid[(image_id, class_id)] == pytest.approx(float(res.pair_scores[b, p]), abs=1e-5)
        assert branch[(image_id, class_id)][0] == pytest.approx(float(res.pair_scores[b, p]), abs=1e-5)
        # MSCI: score = w_p t c_pair + P_state P_object, all stored
        ps_, pp, po_ = branch[(image_id, class_id)]
        assert score == pytest.approx(scale * ps_ + pp * po_, abs=1e-4)
    by_image = {}
    for image_id, class_id, region_id, ws, wo in regions:
        by_image.setdefault(image_id, []).append((class_id, region_id, ws, wo))
    assert set(by_image) == set(row)
    for image_id, rs in by_image.items():
        b = row[image_id]
        assert {r[0] for r in rs} == {int(x["ids"][int(res.explained[b])])}  # the prediction is the explained pair
        rid = batch.region_ids[b, 1:]
        for _, region_id, ws, wo in rs:
            m = int(np.flatnonzero(rid == region_id)[0])
            assert ws == pytest.approx(float(res.state_region_weight[b, m]), abs=1e-6)
            assert wo == pytest.approx(float(res.object_region_weight[b, m]), abs=1e-6)
        assert sum(r[2] for r in rs) == pytest.approx(1.0) and sum(r[3] for r in rs) == pytest.approx(1.0)


def test_czsl_clip_without_branches_is_plain_clip_scaled(cs, runs):
    """Weights (1, 0, 0): MSCI's combination reduces to t * cos(image, 'a photo of a {s} {o}.') + 1
    (a weight of 0 makes its factor 1, as upstream), the plain clip method's score of the same
    prompt, scaled and shifted: the same ranking."""
    with Catalog(cs.store, read_only=True) as cat:
        scale = tables.get_run(cat, runs["czsl-clip-0"]).params["logit_scale"]
        q = "SELECT image_id, class_id, score FROM predictions WHERE run_id = ?"
        plain = {(i, c): s for i, c, s in cat.query(q, [runs["clip"]]).fetchall()}
        czsl = {(i, c): s for i, c, s in cat.query(q, [runs["czsl-clip-0"]]).fetchall()}
        with_branches = cat.query(
            "SELECT p.score, s.pair_score, s.state_prob, s.object_prob FROM predictions p JOIN pair_scores s "
            "USING (run_id, image_id, class_id) WHERE p.run_id = ?", [runs["czsl-clip"]]).fetchall()
    assert len(plain) == 36 * 48 and len(czsl) == 36 * 36  # plain clip scores every class, czsl the closed world
    for key, s in czsl.items():
        assert s == pytest.approx(scale * plain[key] + 1.0, abs=1e-4)
    assert all(s == pytest.approx(scale * c + a * b, abs=1e-4) for s, c, a, b in with_branches)
    assert max(a * b for _, _, a, b in with_branches) > 0.1  # the branches do move scores


def _czsl_by_hand(cat, run_id):
    """CZSL metrics from the stored scores, the matrix assembled here (not by the stage)."""
    pairs = cat.query("SELECT c.class_id, c.norm_name, p.seen, p.open_only, p.state_id, p.object_id FROM czsl_pairs p "
                      "JOIN classes c USING (class_id) ORDER BY c.class_id").fetchall()
    col = {p[0]: k for k, p in enumerate(pairs)}
    labels = dict(cat.query("SELECT image_id, lower(replace(label, '_', ' ')) FROM images").fetchall())
    imgs = sorted(labels)
    s = np.full((len(imgs), len(pairs)), -1e10)
    for i, c, v in cat.query("SELECT image_id, class_id, score FROM predictions WHERE run_id = ?", [run_id]).fetchall():
        s[imgs.index(i), col[c]] = v
    norm = {p[1]: k for k, p in enumerate(pairs)}
    y = np.array([norm[labels[i]] for i in imgs])
    seen = np.array([bool(p[2]) for p in pairs])
    oo = np.array([bool(p[3]) for p in pairs])
    ps, po = np.array([p[4] for p in pairs]), np.array([p[5] for p in pairs])
    return (czsl_metrics(s, y, seen, closed_mask=~oo, pair_state=ps, pair_object=po),
            czsl_metrics(s, y, seen, pair_state=ps, pair_object=po))


def test_evaluate_prints_the_czsl_metrics_of_the_stored_scores(cs, runs):
    with Catalog(cs.store, read_only=True) as cat:
        evals = {m: evaluate_run(cat, r) for m, r in runs.items()}
        hand = {m: _czsl_by_hand(cat, r) for m, r in runs.items()}
    for m, ev in evals.items():
        closed, open_ = hand[m]
        got = ev.metrics
        assert (got["seen_images"], got["unseen_images"]) == (24, 12)
        for k, v in (("closed_seen", closed.best_seen), ("closed_unseen", closed.best_unseen),
                     ("closed_hm", closed.best_hm), ("closed_auc", closed.auc), ("state_acc", closed.state_acc),
                     ("object_acc", closed.object_acc)):
            assert got[k] == pytest.approx(v, abs=1e-12), (m, k)
        if m == "clip":  # plain clip scored the open-world-only pairs too (they are classes of the store)
            assert got["open_hm"] == pytest.approx(open_.best_hm) and got["open_auc"] == pytest.approx(open_.auc)
        else:
            assert math.isnan(got["open_hm"])
        # top-1 over the closed world at bias 0 is what acc1 counts for a closed-world run
        if m != "clip":
            assert got["acc1"] == pytest.approx((24 * closed.seen_acc + 12 * closed.unseen_acc) / 36)
    text = format_table(list(evals.values()))
    assert "CZSL (24 seen and 12 unseen images" in text and "czsl-local" in text
    rows = table_rows(list(evals.values()))
    assert all("closed_auc" in r for r in rows)


def test_open_world_feasibility_filter_is_stored_and_applied(cs):
    with Catalog(cs.store, read_only=True) as cat:
        fp = cat.model
        pairs = cat.query("SELECT class_id, state_id, object_id, seen FROM czsl_pairs ORDER BY class_id").fetchall()
        pe = dict(cat.query("SELECT p.class_id, e.embedding FROM class_prompts p JOIN class_prompt_embeddings e "
                            "USING (prompt_id) WHERE p.template_set = 'clip' AND e.model = ?", [fp]).fetchall())
        te = dict(cat.query("SELECT t.vocab_id, e.embedding FROM czsl_texts t JOIN czsl_text_embeddings e USING (text_id) "
                            "WHERE t.style = 'clip' AND e.model = ?", [fp]).fetchall())
    vocab = sorted(te)
    f = feasibility(np.array([pe[p[0]] for p in pairs]), np.array([te[v] for v in vocab]), np.array([te[v] for v in vocab]),
                    [vocab.index(p[1]) for p in pairs], [vocab.index(p[2]) for p in pairs], threshold=-1.0)
    unseen_scores = np.sort(f.score[~np.array([bool(p[3]) for p in pairs])])
    thr = float(unseen_scores[len(unseen_scores) // 2])  # about half of the non-seen pairs go
    want_removed = {p[0] for p, s in zip(pairs, f.score) if s < thr and not p[3]}
    with Catalog(cs.store) as cat:
        run_id = classify(cat, "czsl-clip", MethodConfig(open_world=True, feasibility_threshold=thr), model=toy_compose(),
                          progress=False).run_id
        rows = cat.query("SELECT class_id, score, removed FROM pair_feasibility WHERE run_id = ?", [run_id]).fetchall()
        scored = {c for (c,) in cat.query("SELECT DISTINCT class_id FROM predictions WHERE run_id = ?", [run_id]).fetchall()}
        ev = evaluate_run(cat, run_id)
    assert len(rows) == 48 and 0 < len(want_removed) < 24
    assert {c for c, _, r in rows if r} == want_removed
    assert scored == {p[0] for p in pairs} - want_removed
    by_id = {p[0]: s for p, s in zip(pairs, f.score)}
    assert all(s == pytest.approx(float(by_id[c]), abs=1e-6) for c, s, _ in rows)
    assert not math.isnan(ev.metrics["open_hm"])  # an open-world run reports the open world


def test_explain_names_the_regions_that_carried_state_and_object(cs, runs, tmp_path):
    from pipeline.explain.explain import explain_image

    with Catalog(cs.store, read_only=True) as cat:
        img = cat.query("SELECT image_id FROM images ORDER BY path LIMIT 1").fetchone()[0]
        res = explain_image(cat, img, run_id=runs["czsl-local"], out_dir=tmp_path)
        _, rid, ws, wo = tables.pair_region_weights(cat, runs["czsl-local"], img)
    pair = res.pair
    assert pair["state"] + " " + pair["object"] == res.classes[0].name
    text = "\n".join(res.summary_lines())
    assert f"state  carried most by region {int(rid[np.argmax(ws)])}" in text
    assert f"object carried most by region {int(rid[np.argmax(wo)])}" in text
    names = [p.name for p in res.files]
    assert any(f".state-{pair['state']}" in n for n in names) and any(f".object-{pair['object']}" in n for n in names)


def test_a_plain_store_is_left_as_it_was(tmp_path, tiny_model):
    from tests.helpers.small_store import build_small_store

    small = build_small_store(tmp_path, tiny_model)
    with Catalog(small.store) as cat:
        ev = evaluate_run(cat, small.run_id)
        assert set(ev.metrics) == {"acc1", "acc5", "mean_per_class_recall", "shortlist_recall"}
        assert "CZSL" not in format_table([ev]) and set(table_rows([ev])[0]) >= {"acc1"}
        assert "closed_hm" not in table_rows([ev])[0]
        with pytest.raises(StoreError, match="--states"):
            classify(cat, "czsl-local", MethodConfig(), progress=False)
        counts = {t: cat.query(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("czsl_pairs", "czsl_vocab", "attribute_roles", "pair_scores", "concepts")}
    assert set(counts.values()) == {0}
