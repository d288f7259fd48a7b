"""Contrastive reasons on the demo's toy world, through the stages: do they name the wing pattern?

    PYTHONPATH=$PWD python benchmarks/bench_contrasts.py --seeds 1,3

Per world seed: make-toyworld (parts setting, 20 images per class, the demo's held-out
classes), build-attributes, index-images and classify --method lazsl with the ``toy-demo``
preset (exactly what ``pipeline demo`` runs; seed 1 *is* the demo's world), in a fresh store
under a temporary folder. Then, from the ``contrasts`` view classify wrote:

* ``acc1``: the LaZSL run's top-1 accuracy (``pipeline evaluate``);
* over every wrong prediction with a contrast against its true class: the share whose
  ``reason_rank`` 1 term favours the prediction (``top_term_favours_prediction``: 1.0 by
  construction, every term of the gap is ranked and they sum to a positive gap) and the share
  whose rank-1 term is the class-name prompt (``top_term_is_class_prompt``);
* over wrong predictions between siblings (classes whose descriptors differ only in the wing
  pattern): the share whose rank 1 is the wing-pattern pair, the share whose strongest
  evidence for the true class (most negative term) is the wing pair, and the share where the
  wing term favours the *predicted* class;
* ``old_tipped_by_is_wing_pattern``: the same share for the attribute the report named before
  ("tipped by", ``queries.attribution.tipping_attribute``);
* ``max_sum_error``: the largest |Σ terms − (score_A − score_B)| over every stored contrast,
  with the scores from ``predictions`` (not from the terms' own ``gap`` column).

The contrast parameters (same-text pairing, cosine ≥ 0.5) were set by the research branch on
world seed 2; nothing here was tuned (issue 20's figures: seed 11, never used before). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def measure(seed: int, n_per_class: int, model) -> dict:
    from pipeline.config import get_preset
    from pipeline.stages.methods import resolve_method_config
    from pipeline.demo import DEMO_PRESET
    from pipeline.stages.attributes import import_attribute_file
    from pipeline.stages.classify import classify
    from pipeline.stages.evaluate import evaluate_run
    from pipeline.stages.index_images import index_images
    from pipeline.toy.world import make_toyworld
    from stores.catalog import Catalog

    with tempfile.TemporaryDirectory() as tmp:
        world_dir = Path(tmp) / "world"
        make_toyworld(world_dir, n_per_class=n_per_class, seed=seed, setting="parts")
        preset = get_preset(DEMO_PRESET)
        t0 = time.perf_counter()
        with Catalog(Path(tmp) / "store") as cat:
            import_attribute_file(cat, model, world_dir / "attributes.json", progress=False)
            index_images(cat, model, [str(world_dir / "images")], preset.region_config(), preset=DEMO_PRESET, progress=False)
            t1 = time.perf_counter()
            run = classify(cat, "lazsl", resolve_method_config({}, DEMO_PRESET).config, model=model, progress=False)
            t2 = time.perf_counter()
            acc = evaluate_run(cat, run.run_id)
            # descriptors of each class, to tell siblings (differ only in "... wings")
            desc: dict[int, set] = {}
            for cid, text in cat.query("SELECT class_id, text FROM attributes").fetchall():
                desc.setdefault(cid, set()).add(text)
            wrong = cat.query(
                "SELECT image_id, class_id, other_class_id, attribute, other_attribute, term FROM contrasts "
                "WHERE run_id = ? AND true_class AND reason_rank = 1", [run.run_id]).fetchall()
            wing_rows = {(i, b): t for i, b, t in cat.query(
                "SELECT image_id, other_class_id, term FROM contrasts WHERE run_id = ? AND true_class AND NOT shared "
                "AND attribute LIKE '%wings' AND other_attribute LIKE '%wings'", [run.run_id]).fetchall()}
            against = {(i, b): (a, o) for i, b, a, o in cat.query(
                "SELECT image_id, other_class_id, attribute, other_attribute FROM contrasts WHERE run_id = ? AND true_class "
                "AND reason_rank IS NOT NULL AND term < 0 QUALIFY row_number() OVER (PARTITION BY image_id, other_class_id "
                "ORDER BY term) = 1", [run.run_id]).fetchall()}
            prompt = dict(((i, b), t) for i, b, t in cat.query(
                "SELECT image_id, other_class_id, term FROM contrast_terms WHERE run_id = ? AND true_class AND "
                "attr_id IS NULL AND other_attr_id IS NULL", [run.run_id]).fetchall())
            n_wrong = cat.query("SELECT count(*) FROM predictions p JOIN images i USING (image_id) JOIN classes c "
                                "USING (class_id) WHERE p.run_id = ? AND p.rank = 1 AND c.norm_name <> "
                                "lower(replace(i.label, '_', ' '))", [run.run_id]).fetchone()[0]
            # the shipped "tipped by" before this change, on the same wrong predictions
            from pipeline.explain.explain import load_alignment
            from queries.attribution import tipping_attribute

            texts = dict(cat.query("SELECT attr_id, text FROM attributes").fetchall())
            tipped = {}
            for image_id, a, b, *_ in wrong:
                tip = tipping_attribute(load_alignment(cat, run.run_id, image_id, a),
                                        load_alignment(cat, run.run_id, image_id, b))
                tipped[image_id] = None if tip is None else texts[tip[0]]
            t3 = time.perf_counter()
            from pipeline.stages.contrasts import compute_contrasts

            n_contrasts = len(compute_contrasts(cat, run.run_id))
            t4 = time.perf_counter()
            err = cat.query(
                "SELECT max(abs(s.total - (pa.score - pb.score))), count(*) FROM (SELECT run_id, image_id, class_id, "
                "other_class_id, sum(term) AS total FROM contrast_terms WHERE run_id = ? GROUP BY ALL) s "
                "JOIN predictions pa ON pa.run_id = s.run_id AND pa.image_id = s.image_id AND pa.class_id = s.class_id "
                "JOIN predictions pb ON pb.run_id = s.run_id AND pb.image_id = s.image_id AND pb.class_id = s.other_class_id",
                [run.run_id]).fetchone()

    def no_wings(cid):
        return {t for t in desc[cid] if not t.endswith("wings")}

    sib = [r for r in wrong if no_wings(r[1]) == no_wings(r[2])]
    is_prompt = lambda r: r[3] == "(class prompt)" and r[4] is None  # noqa: E731
    is_wing = lambda a, o: (a or "").endswith("wings") and (o or "").endswith("wings")  # noqa: E731
    share = lambda xs, of: round(len(xs) / len(of), 4) if of else None  # noqa: E731
    sib_wing = [r for r in sib if (r[0], r[2]) in wing_rows]
    return {
        "seed": seed, "images": acc.n_images, "acc1": round(acc.metrics["acc1"], 4),
        "wrong_predictions": int(n_wrong), "wrong_with_true_class_contrast": len(wrong), "between_siblings": len(sib),
        "top_term_favours_prediction": share([r for r in wrong if r[5] > 0], wrong),
        "top_term_is_class_prompt": share([r for r in wrong if is_prompt(r)], wrong),
        "top_term_is_wing_pattern_siblings": share([r for r in sib if is_wing(r[3], r[4])], sib),
        "strongest_for_true_class_is_wing_pattern_siblings": share(
            [r for r in sib if is_wing(*against.get((r[0], r[2]), (None, None)))], sib),
        "wing_term_favours_predicted_siblings": share([r for r in sib_wing if wing_rows[(r[0], r[2])] > 0], sib_wing),
        "old_tipped_by_is_wing_pattern_siblings": share([r for r in sib if (tipped[r[0]] or "").endswith("wings")], sib),
        "mean_prompt_term_siblings": round(sum(prompt[(r[0], r[2])] for r in sib) / len(sib), 5) if sib else None,
        "mean_wing_term_siblings": round(sum(wing_rows[(r[0], r[2])] for r in sib_wing) / len(sib_wing), 5)
        if sib_wing else None,
        "contrasts": int(err[1]), "max_sum_error": float(err[0]) if err[0] is not None else None,
        "seconds": {"index": round(t1 - t0, 1), "classify_with_contrasts": round(t2 - t1, 1),
                    "contrasts_alone": round(t4 - t3, 3), "per_contrast_ms": round(1000 * (t4 - t3) / max(1, n_contrasts), 3)},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,3", help="world seeds, comma-separated (research tuned on 2)")
    ap.add_argument("--n-per-class", type=int, default=20)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from pipeline.models import load_model

    model = load_model(None, "toy-clip", device="cpu")
    out = {"command": "benchmarks/bench_contrasts.py " + " ".join(sys.argv[1:]),
           "seeds": [measure(int(s), args.n_per_class, model) for s in args.seeds.split(",")]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
