"""Stage 1: class attributes -> rows in the catalog, embeddings, Faiss indexes.

Attributes come from a DCLIP-style ``{class: [descriptor, ...]}`` file, a CuPL-style
``{class: [sentence, ...]}`` file, or an LLM (``pipeline.llm_attributes``). Whatever the
source, ``add_attributes`` stores them and ``encode_attributes`` embeds what is missing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from stores.catalog import Catalog, StoreError
from stores.faiss_index import build_flat_ip, write_index
from stores.parquet import embedding_array

STYLES = ("descriptors", "sentences")


class InputError(ValueError):
    """Bad user input; the message says what to fix."""


# ---- names and prompts ------------------------------------------------------------------
def clean_class_name(name: str) -> str:
    """DCLIP's wordify ('_' -> space) plus whitespace collapsing; case is kept for display."""
    return re.sub(r"\s+", " ", str(name).replace("_", " ")).strip()


def norm_class_name(name: str) -> str:
    """The identity of a class: duplicates after this normalisation are the same class."""
    return clean_class_name(name).lower()


def dclip_sentence(descriptor: str) -> str:
    """DCLIP's descriptor rule (loading_helpers.py): a plain prefix test, kept as-is so prompts
    match the published ones ("antlers" -> "which is antlers" is their behaviour too)."""
    d = descriptor.strip()
    if d.startswith("a"):
        return f"which is {d}"
    if d.startswith(("has", "often", "typically", "may", "can")):
        return f"which {d}"
    if d.startswith("used"):
        return f"which is {d}"
    return f"which has {d}"


def render_prompt(class_name: str, text: str, style: str, after_text: str = "") -> str:
    """The exact string that is encoded for one attribute."""
    if style == "descriptors":
        if not text.strip():
            # DCLIP turns an empty list into [''] and encodes "donuts, which has " (a dangling
            # clause); we encode the bare class name instead, which is what that row meant.
            return f"{class_name}{after_text}"
        return f"{class_name}, {dclip_sentence(text)}{after_text}"
    if style == "sentences":
        return text.strip()
    raise InputError(f"Unknown style {style!r}; use one of {', '.join(STYLES)}.")


# ---- reading input files ----------------------------------------------------------------
@dataclass
class ImportReport:
    classes: int = 0
    attributes: int = 0
    empty: list[str] = field(default_factory=list)  # classes that came with no descriptor
    duplicates: list[str] = field(default_factory=list)  # names merged after normalisation
    style: str = "descriptors"

    def lines(self) -> list[str]:
        out = [f"{self.classes} classes, {self.attributes} attributes ({self.style})"]
        if self.empty:
            out.append(f"{len(self.empty)} classes with an empty list (encoded by name only): {', '.join(self.empty[:10])}")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicate class names merged: {', '.join(self.duplicates[:10])}")
        return out


def guess_style(mapping: dict[str, list[str]]) -> str:
    """CuPL files hold full sentences (long, ending in '.'); DCLIP files hold short phrases."""
    texts = [t for v in mapping.values() for t in v if t.strip()]
    if not texts:
        return "descriptors"
    words = np.mean([len(t.split()) for t in texts])
    periods = np.mean([t.rstrip().endswith(".") for t in texts])
    return "sentences" if words >= 7 or periods > 0.5 else "descriptors"


def read_attribute_json(path: str | Path) -> tuple[dict[str, list[str]], ImportReport]:
    """Read a DCLIP/CuPL JSON; merge names equal after normalisation and report them."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass a JSON file of {{class: [descriptor, ...]}}.")
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=list)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8.") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    if not isinstance(pairs, list) or not all(isinstance(p, tuple) or isinstance(p, list) for p in pairs):
        raise InputError(f"{path}: expected a JSON object mapping class names to lists of strings.")
    report = ImportReport()
    merged: dict[str, list[str]] = {}
    display: dict[str, str] = {}
    for key, value in pairs:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{path}: the value of {key!r} must be a list of strings.")
        name = clean_class_name(key)
        if not name:
            raise InputError(f"{path}: an empty class name; every key must name a class.")
        norm = name.lower()
        if norm in merged:
            report.duplicates.append(name)
        else:
            merged[norm], display[norm] = [], name
        for v in value:
            v = v.strip()
            if v not in merged[norm]:
                merged[norm].append(v)
    out = {}
    for norm, texts in merged.items():
        nonempty = [t for t in texts if t]
        if not nonempty:
            report.empty.append(display[norm])
        out[display[norm]] = nonempty or [""]
    report.classes = len(out)
    report.attributes = sum(len(v) for v in out.values())
    return out, report


# ---- writing to the store ---------------------------------------------------------------
def upsert_classes(cat: Catalog, names: list[str]) -> dict[str, int]:
    """Class name -> class_id, creating the classes that are new (matched after normalisation)."""
    existing = dict(cat.query("SELECT norm_name, class_id FROM classes").fetchall())
    next_id = cat.next_id("classes", "class_id")
    ids: dict[str, int] = {}
    new_rows = []
    for name in names:
        norm = norm_class_name(name)
        if norm not in existing:
            existing[norm] = next_id
            new_rows.append((next_id, clean_class_name(name), norm))
            next_id += 1
        ids[name] = existing[norm]
    if new_rows:
        cat.con.executemany("INSERT INTO classes VALUES (?, ?, ?)", new_rows)
    return ids


def add_attributes(
    cat: Catalog,
    mapping: dict[str, list[str]],
    *,
    source: str,
    style: str,
    prompt_version: str | None = None,
    after_text: str = "",
) -> int:
    """Insert the attributes not already stored (same class, text, style). Returns how many."""
    if style not in STYLES:
        raise InputError(f"Unknown style {style!r}; use one of {', '.join(STYLES)}.")
    with cat.transaction():
        class_ids = upsert_classes(cat, list(mapping))
        names = dict(cat.query("SELECT class_id, name FROM classes").fetchall())
        have = {
            (c, t) for c, t in cat.query("SELECT class_id, text FROM attributes WHERE style = ?", [style]).fetchall()
        }
        next_id = cat.next_id("attributes", "attr_id")
        rows = []
        for cls, texts in mapping.items():
            cid = class_ids[cls]
            for text in texts:
                if (cid, text) in have:
                    continue
                have.add((cid, text))
                rows.append((next_id, cid, text, render_prompt(names[cid], text, style, after_text), source, style, prompt_version))
                next_id += 1
        if rows:
            cols = list(zip(*rows))
            new_attrs = pa.table(  # noqa: F841  (DuckDB reads it by name; executemany is ~0.5 ms a row)
                {
                    "attr_id": pa.array(cols[0], pa.int64()),
                    "class_id": pa.array(cols[1], pa.int64()),
                    "text": pa.array(cols[2], pa.string()),
                    "prompt": pa.array(cols[3], pa.string()),
                    "source": pa.array(cols[4], pa.string()),
                    "style": pa.array(cols[5], pa.string()),
                    "prompt_version": pa.array(cols[6], pa.string()),
                }
            )
            cat.con.execute("INSERT INTO attributes SELECT * FROM new_attrs")
    return len(rows)


def encode_attributes(cat: Catalog, model, batch_size: int = 256, progress: bool = True) -> int:
    """Embed every attribute prompt that has no embedding for ``model`` yet; rebuild the indexes."""
    from tqdm import tqdm

    cat.check_model(model.fingerprint)
    todo = cat.query(
        "SELECT a.attr_id, a.prompt FROM attributes a LEFT JOIN attribute_embeddings e "
        "ON a.attr_id = e.attr_id AND e.model = ? WHERE e.attr_id IS NULL ORDER BY a.attr_id",
        [model.fingerprint],
    ).fetchall()
    bar = tqdm(total=len(todo), desc="encode attributes", unit="attr", disable=not progress or not todo)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        emb = model.encode_texts([p for _, p in chunk], batch_size=batch_size)
        new_emb = pa.table(  # noqa: F841  (read by DuckDB below)
            {
                "attr_id": pa.array([aid for aid, _ in chunk], pa.int64()),
                "model": pa.array([model.fingerprint] * len(chunk), pa.string()),
                "embedding": embedding_array(emb, "float32"),
            }
        )
        with cat.transaction():
            cat.con.execute("INSERT INTO attribute_embeddings SELECT * FROM new_emb")
        bar.update(len(chunk))
    bar.close()
    rebuild_attribute_indexes(cat, model.fingerprint)
    return len(todo)


def load_attribute_matrix(cat: Catalog, model: str, style: str | None = None):
    """(attr_ids, class_ids, embeddings [A, D]) for one model, ordered by attr_id."""
    sql = (
        "SELECT a.attr_id, a.class_id, e.embedding FROM attributes a JOIN attribute_embeddings e "
        "USING (attr_id) WHERE e.model = ?" + (" AND a.style = ?" if style else "") + " ORDER BY a.attr_id"
    )
    rows = cat.query(sql, [model, style] if style else [model]).fetchall()
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    cls = np.array([r[1] for r in rows], dtype=np.int64)
    emb = np.array([r[2] for r in rows], dtype=np.float32)
    return ids, cls, emb


def class_prototypes(attr_class: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One vector per class: the normalised mean of its attribute embeddings (for shortlisting)."""
    classes = np.unique(attr_class)
    proto = np.zeros((len(classes), emb.shape[1]), dtype=np.float32)
    pos = np.searchsorted(classes, attr_class)
    np.add.at(proto, pos, emb)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True).clip(1e-12)
    return classes, proto


def rebuild_attribute_indexes(cat: Catalog, model: str) -> None:
    ids, cls, emb = load_attribute_matrix(cat, model, style="descriptors")
    if len(ids) == 0:  # a store of sentences only: shortlist on those
        ids, cls, emb = load_attribute_matrix(cat, model)
    if len(ids) == 0:
        raise StoreError("No attribute embeddings to index; import or generate attributes first.")
    prov = {"model": model, "metric": "inner_product", "normalised": True}
    write_index(build_flat_ip(emb, ids), cat.root / "faiss" / "attributes.index", {**prov, "ids": "attr_id"})
    classes, proto = class_prototypes(cls, emb)
    write_index(build_flat_ip(proto, classes), cat.root / "faiss" / "class_prototypes.index", {**prov, "ids": "class_id"})


def import_attribute_file(
    cat: Catalog, model, path: str | Path, *, style: str | None = None, after_text: str = "", progress: bool = True
) -> ImportReport:
    """``build-attributes --from-json``: read, store and encode a DCLIP/CuPL file."""
    mapping, report = read_attribute_json(path)
    report.style = style or guess_style(mapping)
    cat.check_model(model.fingerprint)
    report.attributes = add_attributes(
        cat, mapping, source=f"file:{Path(path).name}", style=report.style, prompt_version="file", after_text=after_text
    )
    encode_attributes(cat, model, progress=progress)
    return report
