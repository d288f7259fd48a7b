"""Classes, attributes and their embeddings, CLIP-template class prompts, and the next free ids."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from ..parquet import embedding_array
from .common import insert_arrow, insert_columns

if TYPE_CHECKING:
    from ..catalog import Catalog


def class_names(cat: Catalog) -> dict[int, str]:
    """class_id -> display name."""
    return dict(cat.con.execute("SELECT class_id, name FROM classes ORDER BY class_id").fetchall())


def class_ids_by_norm(cat: Catalog) -> dict[str, int]:
    """Normalised name (the identity of a class) -> class_id."""
    return dict(cat.con.execute("SELECT norm_name, class_id FROM classes").fetchall())


def class_count(cat: Catalog) -> int:
    return int(cat.con.execute("SELECT count(*) FROM classes").fetchone()[0])


def insert_classes(cat: Catalog, class_ids: Sequence[int], names: Sequence[str], norm_names: Sequence[str]) -> int:
    return insert_columns(cat, "classes", {
        "class_id": pa.array(class_ids, pa.int64()), "name": pa.array(names, pa.string()),
        "norm_name": pa.array(norm_names, pa.string()),
    })


@dataclass(frozen=True)
class TextMatrix:
    """Encoded texts of one kind: ``ids`` (attr_id or prompt_id), their ``class_ids`` and
    ``embeddings`` (N, D), ordered by id."""

    ids: np.ndarray
    class_ids: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def text_matrix_of(rows: list[tuple]) -> TextMatrix:
    if not rows:
        return TextMatrix(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    return TextMatrix(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                      np.array([r[2] for r in rows], np.float32))


def attribute_keys(cat: Catalog, style: str) -> set[tuple[int, str]]:
    """(class_id, text) of the stored attributes of a style (to skip what is already there)."""
    return set(cat.con.execute("SELECT class_id, text FROM attributes WHERE style = ?", [style]).fetchall())


def attribute_key_counts(cat: Catalog, style: str) -> Counter:
    """(class_id, text) -> how many rows of a style hold it (a text repeated in its class's list
    is one row per occurrence)."""
    return Counter({(c, t): n for c, t, n in cat.con.execute(
        "SELECT class_id, text, count(*) FROM attributes WHERE style = ? GROUP BY ALL", [style]).fetchall()})


def insert_attributes(cat: Catalog, rows: list[dict]) -> int:
    """rows: attr_id, class_id, text, prompt, source, style, prompt_version."""
    if not rows:
        return 0
    return insert_arrow(cat, "attributes", pa.Table.from_pylist(rows, schema=pa.schema([
        ("attr_id", pa.int64()), ("class_id", pa.int64()), ("text", pa.string()), ("prompt", pa.string()),
        ("source", pa.string()), ("style", pa.string()), ("prompt_version", pa.string()),
    ])))


def attributes_without_embedding(cat: Catalog, model: str) -> list[tuple[int, str]]:
    """(attr_id, prompt) of every attribute not yet encoded by ``model``."""
    return cat.con.execute(
        "SELECT a.attr_id, a.prompt FROM attributes a LEFT JOIN attribute_embeddings e "
        "ON a.attr_id = e.attr_id AND e.model = ? WHERE e.attr_id IS NULL ORDER BY a.attr_id",
        [model],
    ).fetchall()


def insert_attribute_embeddings(cat: Catalog, attr_ids: Sequence[int], model: str, embeddings: np.ndarray) -> int:
    return insert_columns(cat, "attribute_embeddings", {
        "attr_id": pa.array(attr_ids, pa.int64()), "model": pa.array([model] * len(attr_ids), pa.string()),
        "embedding": embedding_array(embeddings, "float32"),
    })


def attribute_matrix(cat: Catalog, model: str, style: str | None = None) -> TextMatrix:
    """Encoded attributes (of one style, or all) for ``model``, ordered by attr_id."""
    sql = ("SELECT a.attr_id, a.class_id, e.embedding FROM attributes a JOIN attribute_embeddings e USING (attr_id) "
           "WHERE e.model = ?" + (" AND a.style = ?" if style else "") + " ORDER BY a.attr_id")
    return text_matrix_of(cat.con.execute(sql, [model, style] if style else [model]).fetchall())


def attribute_styles(cat: Catalog) -> list[str]:
    return [r[0] for r in cat.con.execute("SELECT DISTINCT style FROM attributes ORDER BY style").fetchall()]


def attribute_texts(cat: Catalog, attr_ids) -> dict[int, str]:
    ids = [int(a) for a in attr_ids]
    if not ids:
        return {}
    return dict(cat.con.execute("SELECT attr_id, text FROM attributes WHERE list_contains(?, attr_id)", [ids]).fetchall())


def attributes_by_class(cat: Catalog, style: str) -> dict[str, list[tuple[str, str]]]:
    """Class name -> [(text, prompt)] of one style, classes and attributes in id order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, text, prompt in cat.con.execute(
        "SELECT c.name, a.text, a.prompt FROM attributes a JOIN classes c USING (class_id) WHERE a.style = ? "
        "ORDER BY c.class_id, a.attr_id", [style]
    ).fetchall():
        out.setdefault(name, []).append((text, prompt))
    return out


def find_attribute(cat: Catalog, class_id: int, text: str) -> int | None:
    """attr_id of a class's attribute by its text (case and surrounding blanks ignored)."""
    row = cat.con.execute(
        "SELECT attr_id FROM attributes WHERE class_id = ? AND lower(trim(text)) = ? ORDER BY attr_id LIMIT 1",
        [class_id, text.strip().lower()],
    ).fetchone()
    return int(row[0]) if row else None


def attribute_count(cat: Catalog) -> int:
    return int(cat.con.execute("SELECT count(*) FROM attributes").fetchone()[0])


def attribute_embedding_counts(cat: Catalog, model: str) -> tuple[int, int]:
    """(attributes, attributes encoded by ``model``)."""
    row = cat.con.execute(
        "SELECT count(*), count(e.attr_id) FROM attributes a LEFT JOIN attribute_embeddings e "
        "ON a.attr_id = e.attr_id AND e.model = ?", [model]
    ).fetchone()
    return int(row[0]), int(row[1])


def class_prompt_keys(cat: Catalog, template_set: str) -> set[tuple[int, str]]:
    return set(cat.con.execute(
        "SELECT class_id, prompt FROM class_prompts WHERE template_set = ?", [template_set]).fetchall())


def insert_class_prompts(cat: Catalog, rows: list[dict]) -> int:
    """rows: prompt_id, class_id, template_set, template, prompt."""
    if not rows:
        return 0
    return insert_arrow(cat, "class_prompts", pa.Table.from_pylist(rows, schema=pa.schema([
        ("prompt_id", pa.int64()), ("class_id", pa.int64()), ("template_set", pa.string()),
        ("template", pa.string()), ("prompt", pa.string()),
    ])))


def class_prompts_without_embedding(cat: Catalog, model: str) -> list[tuple[int, str]]:
    return cat.con.execute(
        "SELECT p.prompt_id, p.prompt FROM class_prompts p LEFT JOIN class_prompt_embeddings e "
        "ON p.prompt_id = e.prompt_id AND e.model = ? WHERE e.prompt_id IS NULL ORDER BY p.prompt_id",
        [model],
    ).fetchall()


def insert_class_prompt_embeddings(cat: Catalog, prompt_ids: Sequence[int], model: str, embeddings: np.ndarray) -> int:
    return insert_columns(cat, "class_prompt_embeddings", {
        "prompt_id": pa.array(prompt_ids, pa.int64()), "model": pa.array([model] * len(prompt_ids), pa.string()),
        "embedding": embedding_array(embeddings, "float32"),
    })


def class_prompt_matrix(cat: Catalog, model: str, template_set: str) -> TextMatrix:
    return text_matrix_of(cat.con.execute(
        "SELECT p.prompt_id, p.class_id, e.embedding FROM class_prompts p JOIN class_prompt_embeddings e "
        "USING (prompt_id) WHERE e.model = ? AND p.template_set = ? ORDER BY p.prompt_id",
        [model, template_set],
    ).fetchall())


def class_prompt_texts(cat: Catalog, template_set: str) -> dict[str, list[str]]:
    """Class name -> the prompts of one template set (the exact strings encoded)."""
    out: dict[str, list[str]] = {}
    for name, prompt in cat.con.execute(
        "SELECT c.name, p.prompt FROM class_prompts p JOIN classes c USING (class_id) WHERE p.template_set = ? "
        "ORDER BY c.class_id, p.prompt_id", [template_set]
    ).fetchall():
        out.setdefault(name, []).append(prompt)
    return out


def texts_by_ids(cat: Catalog, attr_ids: Sequence[int]) -> dict[str, list[str]]:
    """Class name -> encoded prompts of the given attributes (what a run scored against)."""
    out: dict[str, list[str]] = {}
    ids = [int(a) for a in attr_ids]
    for name, prompt in cat.con.execute(
        "SELECT c.name, a.prompt FROM attributes a JOIN classes c USING (class_id) WHERE list_contains(?, a.attr_id) "
        "ORDER BY c.class_id, a.attr_id", [ids]
    ).fetchall():
        out.setdefault(name, []).append(prompt)
    return out


def next_class_id(cat: Catalog) -> int:
    return cat.next_id("classes", "class_id")


def next_attr_id(cat: Catalog) -> int:
    return cat.next_id("attributes", "attr_id")


def next_prompt_id(cat: Catalog) -> int:
    return cat.next_id("class_prompts", "prompt_id")
