"""classify with awt, object-bound, waffle and dclip-nameless on a tiny store: the stored runs,
predictions, alignments and object bindings equal the pure functions on the stored embeddings
(the parity of those functions with plain loops is in tests/queries/)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import MethodConfig, RegionConfig
from pipeline.explain.explain import explain_image
from pipeline.stages.attributes import dclip_sentence, import_attribute_file
from pipeline.stages.classify import classify, classify_runs
from pipeline.stages.control_prompts import load_random_words, waffle_prompts
from pipeline.stages.evaluate import evaluate_run, format_table, latest_runs, table_rows
from pipeline.stages.index_images import index_images
from queries.awt import awt_scores
from queries.baselines import dclip_scores
from queries.binding import object_bound_scores
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError
from tests.helpers.reference import lazsl_pair

REGIONS = RegionConfig(n_crops=8, crop_min=0.4, n_parts=6, n_views=5)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    from tests.helpers import write_image

    root = tmp_path_factory.mktemp("methods")
    for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(3):
            write_image(root / "imgs" / c / f"{i}.png", size=(96 + 8 * i, 80), color=color, seed=i + 10 * (c == "dog"))
    (root / "attrs.json").write_text('{"cat": ["pointy ears", "a long tail", "whiskers"], '
                                     '"dog": ["floppy ears", "has a wet nose"]}')
    cat = Catalog(root / "s")
    import_attribute_file(cat, tiny_model, root / "attrs.json", progress=False)
    index_images(cat, tiny_model, [str(root / "imgs")], REGIONS, progress=False, dtype="float32")
    yield cat
    cat.close()


def regions_of(cat, image_id, kinds):
    """(region_ids, embeddings, boxes) of an image's regions of some kinds, full view first."""
    rows = cat.query(
        "select region_id, kind, x0, y0, x1, y1, embedding from regions where image_id = ? and list_contains(?, kind) "
        "order by kind <> 'full', region_id", [image_id, list(kinds)]).fetchall()
    return (np.array([r[0] for r in rows]), np.array([r[6] for r in rows], np.float64),
            np.array([r[2:6] for r in rows], np.float64))


def descriptors(cat):
    """(attr_ids, class index 0/1, embeddings) of the stored descriptors; class ids in order."""
    m = tables.attribute_matrix(cat, cat.model, "descriptors")
    classes = np.unique(m.class_ids)
    return m.ids, np.searchsorted(classes, m.class_ids), m.embeddings.astype(np.float64), classes


def stored(cat, run_id):
    return {(i, c): (s, g, loc) for i, c, s, g, loc in cat.query(
        "select image_id, class_id, score, global_score, local_score from predictions where run_id = ?", [run_id]).fetchall()}


def alignment_sums(cat, run_id):
    return {(i, c): (s, n) for i, c, s, n in cat.query(
        "select image_id, class_id, sum(mass * similarity), count(*) from alignments where run_id = ? group by all",
        [run_id]).fetchall()}


def image_ids(cat):
    return [r[0] for r in cat.query("select image_id from images order by image_id").fetchall()]


def test_index_stores_part_and_view_kinds(store):
    kinds = dict(store.query("select kind, count(*) from regions group by kind").fetchall())
    assert kinds["full"] == 6 and kinds["crop"] == 6 * 8 and kinds["part"] == 6 * 6
    assert kinds.get("view", 0) + kinds.get("view-flip", 0) == 6 * 5
    params = tables.index_run_params(store)[0]["regions"]
    assert (params["n_parts"], params["part_min"], params["part_max"], params["n_views"]) == (6, 0.3, 0.5, 5)


def test_lazsl_reads_the_crops_only(store):
    """Parts and views in the index do not change LaZSL: it transports the crops alone."""
    run = classify(store, "lazsl", MethodConfig(top_k=0), progress=False)
    _, cls, attr, classes = descriptors(store)
    got = stored(store, run.run_id)
    for iid in image_ids(store):
        _, emb, _ = regions_of(store, iid, ["full", "crop"])
        for c, cid in enumerate(classes):
            assert abs(got[(iid, cid)][0] - lazsl_pair(emb[0], emb[1:], attr[cls == c])["score"]) < 1e-5


def test_awt_matches_the_pure_function(store, tiny_model):
    run = classify(store, "awt", MethodConfig(top_k=0), model=tiny_model, progress=False)
    ids, cls, attr, classes = descriptors(store)
    prompts = tables.class_prompt_matrix(store, store.model, "clip")
    prompt_emb = prompts.embeddings[np.argsort(prompts.class_ids)].astype(np.float64)
    scale = float(tiny_model.model.logit_scale.detach().exp())
    assert math.isclose(run.params["awt_logit_scale"], scale, rel_tol=1e-6)
    got, sums = stored(store, run.run_id), alignment_sums(store, run.run_id)
    for iid in image_ids(store):
        rid, views, _ = regions_of(store, iid, ["full", "view", "view-flip"])
        res = awt_scores(views[None], attr, cls, prompt_emb, logit_scale=scale)
        for c, cid in enumerate(classes):
            score, prompt_part, desc_part = got[(iid, cid)]
            assert abs(score - res.scores[0, c]) < 1e-5
            assert abs(prompt_part - res.prompt_scores[0, c]) < 1e-5 and abs(prompt_part + desc_part - score) < 1e-6
            # alignments: every view (the full view included) x every descriptor; the class
            # prompt's column is not an attribute, so the rows sum to the descriptors' part
            total, n = sums[(iid, cid)]
            assert n == len(rid) * int((cls == c).sum()) and abs(total - desc_part) < 1e-5
    regions = {r[0] for r in store.query("select distinct region_id from alignments where run_id = ?", [run.run_id]).fetchall()}
    view_ids = {r[0] for r in store.query("select region_id from regions where kind in ('full', 'view', 'view-flip')").fetchall()}
    assert regions == view_ids


def test_awt_stores_the_top_k_classes(store, tiny_model):
    """AWT scores every class (its weights are entropies over them) and stores the top-k."""
    run = classify(store, "awt", MethodConfig(top_k=1, awt_texts="descriptors"), model=tiny_model, progress=False)
    _, cls, attr, classes = descriptors(store)
    scale = float(tiny_model.model.logit_scale.detach().exp())
    rows = store.query("select image_id, class_id, score, global_score from predictions where run_id = ?", [run.run_id]).fetchall()
    assert len(rows) == len(image_ids(store))
    for iid, cid, score, prompt_part in rows:
        _, views, _ = regions_of(store, iid, ["full", "view", "view-flip"])
        res = awt_scores(views[None], attr, cls, logit_scale=scale)
        assert cid == classes[int(np.argmax(res.scores[0]))] and abs(score - res.scores[0].max()) < 1e-5
        assert prompt_part == 0.0  # no class prompt among the texts
    aligned = store.query("select distinct image_id, class_id from alignments where run_id = ?", [run.run_id]).fetchall()
    assert sorted(aligned) == sorted((i, c) for i, c, _, _ in rows)


def test_awt_without_views_is_a_clear_error(tmp_path, tiny_model, image_folder, attr_file):
    cat = Catalog(tmp_path / "s")
    import_attribute_file(cat, tiny_model, attr_file, progress=False)
    index_images(cat, tiny_model, [str(image_folder)], RegionConfig(n_crops=3), progress=False)
    with pytest.raises(StoreError, match="--n-views"):
        classify(cat, "awt", MethodConfig(), model=tiny_model, progress=False)
    cat.close()


def test_object_bound_matches_the_pure_function_and_stores_the_object(store):
    cfg = MethodConfig(top_k=0)
    run = classify(store, "object-bound", cfg, progress=False)
    _, cls, attr, classes = descriptors(store)
    got, sums = stored(store, run.run_id), alignment_sums(store, run.run_id)
    objects = {(i, c): (r, n, s) for i, c, r, n, s in store.query(
        "select image_id, class_id, region_id, n_parts, score from object_bindings where run_id = ?", [run.run_id]).fetchall()}
    for iid in image_ids(store):
        rid, emb, boxes = regions_of(store, iid, ["full", "crop", "part"])
        res = object_bound_scores(emb[None], boxes[None], attr, cls)
        for c, cid in enumerate(classes):
            score, g, loc = got[(iid, cid)]
            assert abs(score - res.scores[0, c]) < 1e-5 and abs(0.2 * g + 0.8 * loc - score) < 1e-6
            obj, n_parts, s = objects[(iid, cid)]
            assert obj == rid[res.proposal[0, c]] and n_parts == res.n_parts[0, res.proposal[0, c]] and abs(s - score) < 1e-9
            assert abs(sums[(iid, cid)][0] - score) < 1e-5  # the winning object's plan carries the score
    # every region of a plan lies (by `contain`) inside its object's box
    rows = store.query(
        "select o.x0, o.y0, o.x1, o.y1, p.x0, p.y0, p.x1, p.y1 from alignments a "
        "join object_bindings b using (run_id, image_id, class_id) join regions o on o.region_id = b.region_id "
        "join regions p on p.region_id = a.region_id where a.run_id = ?", [run.run_id]).fetchall()
    assert rows
    for ox0, oy0, ox1, oy1, x0, y0, x1, y1 in rows:
        inter = max(0, min(ox1, x1) - max(ox0, x0)) * max(0, min(oy1, y1) - max(oy0, y0))
        assert inter >= cfg.contain * (x1 - x0) * (y1 - y0) - 1e-6


def test_explain_names_the_object_that_carried_the_class(store, tmp_path):
    run = classify(store, "object-bound", MethodConfig(top_k=0), progress=False)
    iid = image_ids(store)[0]
    res = explain_image(store, iid, run_id=run.run_id, out_dir=tmp_path / "x")
    ce = res.classes[0]
    want = store.query("select region_id, n_parts from object_bindings where run_id = ? and image_id = ? and class_id = ?",
                       [run.run_id, iid, ce.class_id]).fetchone()
    assert (ce.object["region_id"], ce.object["n_parts"]) == want
    line = next(x for x in res.summary_lines() if x.startswith("object region"))
    assert f"{ce.object['n_parts']} parts" in line and str(want[0]) in line
    assert ce.overlay.is_file()
    # θ splits the score as for LaZSL
    assert ce.parts is not None and abs(sum(ce.parts) - ce.score) < 1e-6


def test_waffle_prompts_and_scores(store, tiny_model):
    run = classify(store, "waffle", MethodConfig(top_k=0, seed=3), model=tiny_model, progress=False)
    names = tables.class_names(store)
    w = waffle_prompts(list(names.values()), load_random_words(), count=15, seed=3, template="{name}, {sentence}")
    kind = run.params["texts"]["kind"]
    assert kind.startswith("class prompts waffle:3:")
    stored_prompts = tables.class_prompt_texts(store, kind[len("class prompts "):])
    assert stored_prompts == {n: [f"{n}, {dclip_sentence(d)}" for d in w.descriptors] for n in names.values()}
    assert run.params["texts"]["waffle"]["descriptors"] == w.descriptors
    emb = tiny_model.encode_texts(w.prompts)
    got = stored(store, run.run_id)
    for iid in image_ids(store):
        _, full, _ = regions_of(store, iid, ["full"])
        want = dclip_scores(full[:1], emb, w.prompt_class, len(names))[0]
        for c, cid in enumerate(sorted(names)):
            assert abs(got[(iid, cid)][0] - want[c]) < 1e-5
    assert tables.run_has_alignments(store, run.run_id) is False


def test_waffle_seeds_are_runs_reported_as_mean_and_std(store, tiny_model):
    reports = classify_runs(store, "waffle", MethodConfig(top_k=0, seed=10, waffle_seeds=3), model=tiny_model, progress=False)
    assert [r.params["config"]["seed"] for r in reports] == [10, 11, 12]
    ids = [r.run_id for r in reports]
    assert latest_runs(store, ["waffle"]) == ids
    evals = [evaluate_run(store, r) for r in ids]
    acc = np.array([e.metrics["acc1"] for e in evals])
    rows = table_rows(evals)
    assert [r["seed"] for r in rows] == [10, 11, 12]
    assert math.isclose(rows[0]["acc1_seeds_mean"], acc.mean()) and math.isclose(rows[0]["acc1_seeds_std"], acc.std())
    assert f"over 3 seeds" in format_table(evals)
    # the three seeds wrote three different prompt sets
    assert len({r.params["texts"]["kind"] for r in reports}) == 3


@pytest.mark.parametrize("mode", ["photo", "none"])
def test_nameless_prompts_and_scores(store, tiny_model, mode):
    run = classify(store, "dclip-nameless", replace(MethodConfig(top_k=0), nameless=mode), model=tiny_model, progress=False)
    texts = {"cat": ["pointy ears", "a long tail", "whiskers"], "dog": ["floppy ears", "has a wet nose"]}
    if mode == "photo":
        texts = {n: t + [f"a photo of a {n}."] for n, t in texts.items()}
    names = tables.class_names(store)
    got = stored(store, run.run_id)
    for iid in image_ids(store):
        _, full, _ = regions_of(store, iid, ["full"])
        for cid, name in names.items():
            want = float(np.mean(tiny_model.encode_texts(texts[name]).astype(np.float64) @ full[0]))
            assert abs(got[(iid, cid)][0] - want) < 1e-5
    from pipeline.stages.evaluate import run_prompts

    assert {k: sorted(v) for k, v in run_prompts(store, run.params).items()} == {k: sorted(v) for k, v in texts.items()}


def _dclip_loop(region, emb, cls):
    """mean over a class's descriptors of cos(region, d): one class index at a time."""
    return [float(np.mean([region @ emb[i] / np.linalg.norm(region) / np.linalg.norm(emb[i])
                           for i in range(len(emb)) if cls[i] == c])) for c in range(cls.max() + 1)]


@pytest.mark.parametrize("method,parts", [("best-region", False), ("best-region", True), ("crop-dclip", False),
                                          ("crop-dclip", True)])
def test_region_controls_match_a_loop_over_the_stored_regions(store, method, parts):
    """best-region: max over crops of DCLIP's mean cosine; crop-dclip: the mean over crops;
    --control-parts adds the part crops. Every stored score equals the loop's."""
    run = classify(store, method, MethodConfig(top_k=0, control_parts=parts), progress=False)
    _, cls, emb, classes = descriptors(store)
    got = stored(store, run.run_id)
    kinds = ("crop", "part") if parts else ("crop",)
    assert len(got) == 6 * 2
    for image_id in image_ids(store):
        _, regions, _ = regions_of(store, image_id, kinds)
        per_region = np.array([_dclip_loop(r, emb, cls) for r in regions])
        want = per_region.max(0) if method == "best-region" else per_region.mean(0)
        for c, w in zip(classes, want):
            score, g, loc = got[(image_id, int(c))]
            assert score == pytest.approx(w, abs=1e-5) and g is None and loc is None
    assert store.query("select count(*) from alignments where run_id = ?", [run.run_id]).fetchone()[0] == 0
    assert store.query("select params->>'$.method' from runs where run_id = ?", [run.run_id]).fetchone()[0] == method
