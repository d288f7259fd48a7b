"""stores.results: the typed writers build the rows the old column dicts did (ranks, nulls,
the plan filter, contrasts' prompt rows), and rows survive the Arrow IPC trip a Ray actor uses."""
from __future__ import annotations

import numpy as np

from stores.results import ResultRows, text_ids


def test_predictions_are_ranked_per_image_with_null_parts():
    rows = ResultRows()
    rows.predictions(7, np.array([10, 11]), np.array([[1, 2, 3], [3, 2, 1]]), np.array([[0.1, 0.3, 0.2], [0.5, 0.5, 0.9]]))
    t = rows.tables()["predictions"].to_pydict()
    assert t["class_id"] == [2, 3, 1, 1, 3, 2]  # ties keep their order (stable)
    assert t["rank"] == [1, 2, 3, 1, 2, 3] and t["image_id"] == [10, 10, 10, 11, 11, 11] and set(t["run_id"]) == {7}
    assert t["score"] == [0.3, 0.2, 0.1, 0.9, 0.5, 0.5] and t["global_score"] == [None] * 6


def test_alignments_keep_positive_mass_on_stored_texts_of_the_top_classes():
    plan = np.zeros((1, 2, 2, 3))
    plan[0, 0, 0, 0], plan[0, 0, 1, 2], plan[0, 1, 1, 1], plan[0, 0, 1, 1] = 0.5, 0.25, 0.4, 0.1
    similarity = plan + 1.0
    attr = text_ids(np.array([100, 101, 102]), np.array([[[0, 1, -1], [0, 1, 2]]]))  # class 0's third column: padding
    assert attr.tolist() == [[[100, 101, -1], [100, 101, 102]]]
    rows = ResultRows()
    rows.alignments(1, np.array([5]), np.array([[8, 9]]), np.array([[50, 51]]), plan, similarity, attr,
                    np.array([[0.9, 0.1]]), top=0)
    t = rows.tables()["alignments"].to_pydict()
    assert list(zip(t["class_id"], t["region_id"], t["attr_id"], t["mass"])) == [
        (8, 50, 100, 0.5), (8, 51, 101, 0.1), (9, 51, 101, 0.4)]  # (0, 1, 2) is padding: not stored
    assert t["similarity"] == [1.5, 1.1, 1.4]
    top = ResultRows()
    top.alignments(1, np.array([5]), np.array([[8, 9]]), np.array([[50, 51]]), plan, similarity, attr,
                   np.array([[0.1, 0.9]]), top=1)  # class 9 ranks first: only its plan is kept
    assert top.tables()["alignments"].to_pydict()["class_id"] == [9]


def test_contrasts_store_a_prompt_row_then_the_terms_and_rows_round_trip():
    rows = ResultRows(images=2)
    rows.contrast_terms(3, [(5, 8, 9, True, False, 0.25, 0.05, 2, [(100, None, False, 0.2, 1), (101, 201, True, 0.0, None)])])
    rows.sample_predictions(3, np.array([5, 6]), np.array([[8, 9], [9, 9]]))
    t = rows.tables()["contrast_terms"].to_pydict()
    assert t["attr_id"] == [None, 100, 101] and t["other_attr_id"] == [None, None, 201]
    assert t["reason_rank"] == [2, 1, None] and t["term"] == [0.05, 0.2, 0.0] and t["gap"] == [0.25] * 3
    back = ResultRows.from_bytes(rows.to_bytes())
    assert back.images == 2 and {k: v.to_pydict() for k, v in back.tables().items()} == {
        k: v.to_pydict() for k, v in rows.tables().items()}
    assert back.tables()["sample_predictions"].to_pydict()["class_id"] == [8, 9, 9, 9]
    empty = ResultRows(images=4)
    assert ResultRows.from_bytes(empty.to_bytes()).images == 4 and empty.tables() == {}
