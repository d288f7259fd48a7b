"""Compositional (state, object) pairs: vocabulary, pairs, texts, roles and what a czsl-* run stored."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from ..parquet import embedding_array
from .common import fetch_dicts, insert_arrow, insert_columns
from .texts import TextMatrix, text_matrix_of

if TYPE_CHECKING:
    from ..catalog import Catalog


# A pair is a row of ``classes``; these tables say which state and object it joins, whether
# it is seen / open-world-only, the state and object texts, and what a czsl-* run stored.
def czsl_vocab_ids(cat: Catalog) -> dict[tuple[str, str], int]:
    """(kind, norm_name) -> vocab_id of every stored state and object."""
    return {(k, n): int(i) for i, k, n in cat.con.execute("SELECT vocab_id, kind, norm_name FROM czsl_vocab").fetchall()}


def czsl_vocab(cat: Catalog, kind: str) -> list[tuple[int, str]]:
    """(vocab_id, name) of the states or the objects, in id order."""
    return [(int(i), n) for i, n in cat.con.execute(
        "SELECT vocab_id, name FROM czsl_vocab WHERE kind = ? ORDER BY vocab_id", [kind]).fetchall()]


def insert_czsl_vocab(cat: Catalog, rows: list[dict]) -> int:
    """rows: vocab_id, kind, name, norm_name."""
    if not rows:
        return 0
    return insert_arrow(cat, "czsl_vocab", pa.Table.from_pylist(rows, schema=pa.schema([
        ("vocab_id", pa.int64()), ("kind", pa.string()), ("name", pa.string()), ("norm_name", pa.string())])))


def next_vocab_id(cat: Catalog) -> int:
    return cat.next_id("czsl_vocab", "vocab_id")


def upsert_czsl_pairs(cat: Catalog, rows: list[dict]) -> int:
    """rows: class_id, state_id, object_id, seen (bool or None), open_only; a pair stored before
    takes the new flags."""
    if not rows:
        return 0
    return insert_arrow(cat, "czsl_pairs", pa.Table.from_pylist(rows, schema=pa.schema([
        ("class_id", pa.int64()), ("state_id", pa.int64()), ("object_id", pa.int64()), ("seen", pa.bool_()),
        ("open_only", pa.bool_())])), replace=True)


def czsl_pair_rows(cat: Catalog) -> list[dict]:
    """Every stored pair: class_id, name, norm_name, state_id, object_id, state, object, seen, open_only."""
    return fetch_dicts(cat,
        "SELECT p.class_id, c.name, c.norm_name, p.state_id, p.object_id, s.name AS state, o.name AS object, p.seen, "
        "p.open_only FROM czsl_pairs p JOIN classes c USING (class_id) JOIN czsl_vocab s ON s.vocab_id = p.state_id "
        "JOIN czsl_vocab o ON o.vocab_id = p.object_id ORDER BY p.class_id")


def czsl_pair(cat: Catalog, class_id: int) -> dict | None:
    rows = fetch_dicts(cat,
        "SELECT p.class_id, s.name AS state, o.name AS object, p.seen, p.open_only FROM czsl_pairs p "
        "JOIN czsl_vocab s ON s.vocab_id = p.state_id JOIN czsl_vocab o ON o.vocab_id = p.object_id "
        "WHERE p.class_id = ?", [class_id])
    return rows[0] if rows else None


def czsl_text_keys(cat: Catalog) -> set[tuple[int, str, str]]:
    """(vocab_id, style, text) of the stored state and object texts."""
    return {(int(v), s, t) for v, s, t in cat.con.execute("SELECT vocab_id, style, text FROM czsl_texts").fetchall()}


def insert_czsl_texts(cat: Catalog, rows: list[dict]) -> int:
    """rows: text_id, vocab_id, style, text, prompt, source."""
    if not rows:
        return 0
    return insert_arrow(cat, "czsl_texts", pa.Table.from_pylist(rows, schema=pa.schema([
        ("text_id", pa.int64()), ("vocab_id", pa.int64()), ("style", pa.string()), ("text", pa.string()),
        ("prompt", pa.string()), ("source", pa.string())])))


def next_czsl_text_id(cat: Catalog) -> int:
    return cat.next_id("czsl_texts", "text_id")


def czsl_texts_without_embedding(cat: Catalog, model: str) -> list[tuple[int, str]]:
    return cat.con.execute(
        "SELECT t.text_id, t.prompt FROM czsl_texts t LEFT JOIN czsl_text_embeddings e "
        "ON t.text_id = e.text_id AND e.model = ? WHERE e.text_id IS NULL ORDER BY t.text_id", [model]).fetchall()


def insert_czsl_text_embeddings(cat: Catalog, text_ids: Sequence[int], model: str, embeddings: np.ndarray) -> int:
    return insert_columns(cat, "czsl_text_embeddings", {
        "text_id": pa.array(text_ids, pa.int64()), "model": pa.array([model] * len(text_ids), pa.string()),
        "embedding": embedding_array(embeddings, "float32"),
    })


def czsl_text_matrix(cat: Catalog, model: str, kind: str, style: str) -> TextMatrix:
    """Encoded texts of the states or objects of one style: ids = text_id, class_ids = vocab_id."""
    return text_matrix_of(cat.con.execute(
        "SELECT t.text_id, t.vocab_id, e.embedding FROM czsl_texts t JOIN czsl_vocab v USING (vocab_id) "
        "JOIN czsl_text_embeddings e USING (text_id) WHERE e.model = ? AND v.kind = ? AND t.style = ? ORDER BY t.text_id",
        [model, kind, style]).fetchall())


def insert_attribute_roles(cat: Catalog, attr_ids: Sequence[int], roles: Sequence[str]) -> int:
    """What part of its pair each attribute describes (state | object | pair)."""
    return insert_columns(cat, "attribute_roles", {
        "attr_id": pa.array(attr_ids, pa.int64()), "role": pa.array(roles, pa.string())}, replace=True)


def attribute_roles(cat: Catalog) -> dict[int, str]:
    return {int(a): r for a, r in cat.con.execute("SELECT attr_id, role FROM attribute_roles").fetchall()}


def class_attributes(cat: Catalog, class_ids: Sequence[int], style: str = "descriptors") -> list[tuple[int, int, str]]:
    """(attr_id, class_id, text) of the given classes' attributes of a style."""
    return [(int(a), int(c), t) for a, c, t in cat.con.execute(
        "SELECT attr_id, class_id, text FROM attributes WHERE style = ? AND list_contains(?, class_id) ORDER BY attr_id",
        [style, [int(c) for c in class_ids]]).fetchall()]


def insert_pair_scores(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, pair_score, state_score, object_score, state_prob, object_prob."""
    return insert_columns(cat, "pair_scores", columns)


def insert_pair_regions(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, image_id, class_id, region_id, state_weight, object_weight."""
    return insert_columns(cat, "pair_regions", columns)


def insert_pair_feasibility(cat: Catalog, columns: dict[str, Any]) -> int:
    """columns: run_id, class_id, score, state_sim, object_sim, removed."""
    return insert_columns(cat, "pair_feasibility", columns)


def pair_score(cat: Catalog, run_id: int, image_id: int, class_id: int) -> dict | None:
    rows = fetch_dicts(cat,
        "SELECT pair_score, state_score, object_score, state_prob, object_prob FROM pair_scores "
        "WHERE run_id = ? AND image_id = ? AND class_id = ?", [run_id, image_id, class_id])
    return rows[0] if rows else None


def pair_region_weights(cat: Catalog, run_id: int, image_id: int) -> tuple[int | None, np.ndarray, np.ndarray, np.ndarray]:
    """(explained class_id, region_ids, state weights, object weights) of one image in a run."""
    rows = cat.con.execute(
        "SELECT class_id, region_id, state_weight, object_weight FROM pair_regions WHERE run_id = ? AND image_id = ? "
        "ORDER BY region_id", [run_id, image_id]).fetchall()
    if not rows:
        return None, np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return (int(rows[0][0]), np.array([r[1] for r in rows], np.int64), np.array([r[2] for r in rows], np.float64),
            np.array([r[3] for r in rows], np.float64))


def pair_feasibility_rows(cat: Catalog, run_id: int) -> list[dict]:
    return fetch_dicts(cat,
        "SELECT f.class_id, c.name, f.score, f.state_sim, f.object_sim, f.removed FROM pair_feasibility f "
        "JOIN classes c USING (class_id) WHERE f.run_id = ? ORDER BY f.score, f.class_id", [run_id])


def score_matrix(cat: Catalog, run_id: int) -> tuple[np.ndarray, list, np.ndarray, np.ndarray]:
    """Every stored score of a run as a matrix: (image_ids (N,), labels, class_ids (C,), scores (N, C));
    a class not stored for an image is NaN."""
    rows = cat.con.execute(
        "SELECT p.image_id, i.label, p.class_id, p.score FROM predictions p JOIN images i USING (image_id) "
        "WHERE p.run_id = ? ORDER BY p.image_id, p.class_id", [run_id]).fetchall()
    if not rows:
        return np.zeros(0, np.int64), [], np.zeros(0, np.int64), np.zeros((0, 0))
    img = np.array([r[0] for r in rows], np.int64)
    cls = np.array([r[2] for r in rows], np.int64)
    image_ids, ri = np.unique(img, return_inverse=True)
    class_ids, ci = np.unique(cls, return_inverse=True)
    scores = np.full((len(image_ids), len(class_ids)), np.nan)
    scores[ri, ci] = [r[3] for r in rows]
    labels: list = [None] * len(image_ids)
    for k, r in zip(ri, rows):
        labels[k] = r[1]
    return image_ids, labels, class_ids, scores
