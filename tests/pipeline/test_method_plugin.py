"""Adding a method is one record: a method registered here, in the test, with no other edit,
runs through `pipeline classify`, `pipeline evaluate` and `pipeline sql`, and its stored
scores equal a plain loop over the stored regions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from dataclasses import dataclass

from pipeline.settings import setting
from pipeline.stages.methods import Method, register, unregister
from pipeline.stages.methods.fields import RankedConfig
from pipeline.stages.methods.texts import descriptors
from stores import tables
from stores.catalog import Catalog
from tests.helpers.small_store import build_small_store

NAME = "mean-top2"


@dataclass(frozen=True)
class TopCropsConfig(RankedConfig):
    """The method's own config: the shared top_k, plus a field of its own."""

    n_best: int = setting(2, "mean-top2: crops averaged.", lo=1, hi=1000)


def mean_top2(ctx, batch, rows) -> None:
    """Score of class c: the mean of the n_best (2) best crops' DCLIP scores (mean cosine to c's texts)."""
    cols = ctx.spec.region_columns(batch)
    regions = batch.embeddings[:, cols]  # (B, R, D)
    n = len(ctx.classes)
    mean_text = np.stack([ctx.texts.attrs.embeddings[ctx.cls_index == c].mean(0) for c in range(n)])
    per_region = regions @ mean_text.T  # (B, R, C)
    top2 = -np.sort(-per_region, axis=1)[:, : ctx.config.n_best]
    ctx.add_top_k(rows, batch.image_ids, top2.mean(axis=1))


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model):
    s = build_small_store(tmp_path_factory.mktemp("plugin"), tiny_model)
    register(Method(NAME, "Mean of the two best crops' DCLIP scores.", descriptors, mean_top2, TopCropsConfig,
                    region_kinds=("crop",), region_hint="crops"))
    yield s
    unregister(NAME)


def run(*args):
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def loop_scores(cat, image_id):
    """{class_id: mean of the top-2 crops' mean cosine}, one crop and one descriptor at a time."""
    rows = cat.query("select embedding from regions where image_id = ? and kind = 'crop' order by region_id",
                     [image_id]).fetchall()
    m = tables.attribute_matrix(cat, cat.model, "descriptors")
    out = {}
    for c in np.unique(m.class_ids):
        per_crop = []
        for (emb,) in rows:
            r = np.asarray(emb, np.float64)
            cosines = [r @ d / np.linalg.norm(r) / np.linalg.norm(d) for d, k in zip(m.embeddings.astype(np.float64),
                                                                                    m.class_ids) if k == c]
            per_crop.append(sum(cosines) / len(cosines))
        out[int(c)] = sum(sorted(per_crop)[-2:]) / 2
    return out


def test_a_method_registered_in_a_test_runs_through_classify_evaluate_and_sql(small):
    store = str(small.store)
    run("classify", "--method", NAME, "--top-k", "0", "--limit", "0", "--store", store, "-q")
    with Catalog(small.store) as cat:
        run_id, method, config = cat.query("select run_id, method, params->'$.config' from runs "
                                           "order by run_id desc limit 1").fetchone()
        assert method == NAME and json.loads(config) == {"top_k": 0, "n_best": 2}  # its own config, resolved
        images = [r[0] for r in cat.query("select image_id from images order by image_id").fetchall()]
        stored = {(i, c): s for i, c, s in cat.query(
            "select image_id, class_id, score from predictions where run_id = ?", [run_id]).fetchall()}
        assert len(stored) == len(images) * 2
        for image_id in images:
            for c, want in loop_scores(cat, image_id).items():
                assert stored[(image_id, c)] == pytest.approx(want, abs=1e-5)
        truth = dict(cat.query("select i.image_id, c.class_id from images i join classes c on c.name = i.label")
                     .fetchall())
        top1 = dict(cat.query("select image_id, class_id from predictions where run_id = ? and rank = 1",
                              [run_id]).fetchall())
    want_acc1 = np.mean([top1[i] == truth[i] for i in images])

    ev = json.loads(run("evaluate", "--run", str(run_id), "--format", "json", "--store", store, "-q"))
    row = next(r for r in ev if r["run_id"] == run_id)
    assert row["method"] == NAME and row["acc1"] == pytest.approx(want_acc1)

    out = json.loads(run("sql", f"select method, count(*) as n from runs join predictions using (run_id) "
                                f"where method = '{NAME}' group by method", "--format", "json", "--store", store))
    assert out == [{"method": NAME, "n": len(images) * 2}]


def test_an_unknown_method_is_one_line_naming_the_registered_ones(small):
    res = CliRunner().invoke(cli, ["classify", "--method", "no-such", "--store", str(small.store)])
    assert res.exit_code != 0 and "no-such" in res.output and NAME in res.output and "Traceback" not in res.output


def test_a_setting_the_method_does_not_have_is_a_note_and_stays_out_of_its_config(small):
    out = run("classify", "--method", NAME, "--theta", "0.3", "--top-k", "1", "--limit", "0", "--store",
              str(small.store), "-q")
    assert f"--theta is not a setting of {NAME}; ignored" in out
    with Catalog(small.store) as cat:
        config, origins = cat.query("select params->'$.config', params->'$.origins' from runs "
                                    "order by run_id desc limit 1").fetchone()
    assert json.loads(config) == {"top_k": 1, "n_best": 2} and json.loads(origins) == {"top_k": "option",
                                                                                      "n_best": "default"}
