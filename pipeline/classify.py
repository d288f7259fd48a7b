"""Stage 3: score indexed images with a method; write runs, predictions and alignments.

The math lives in ``queries/`` (pure functions on arrays); this module only reads region and
attribute embeddings from the store, calls it, and writes the results back. No image is
decoded here: changing θ or ε re-runs only this stage.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from queries import scoring
from queries.shortlist import shortlist_candidates
from stores.catalog import Catalog, StoreError, dumps, now_utc
from stores.faiss_index import index_vectors, read_index
from stores.parquet import embeddings_to_numpy, read_tables

from .attributes import InputError, add_attributes, encode_attributes, load_attribute_matrix

METHODS = ("clip", "clip-e", "dclip", "cupl", "wca", "lazsl")
CLIP_TEMPLATE = "a photo of a {}."


@dataclass
class MethodParams:
    """Every knob of the query stage; all of it lands in ``runs.params``."""

    top_k: int = 50  # shortlist size (0 = all classes)
    theta: float = 0.8  # LaZSL: weight of local similarity in the fused cost
    eps: float = 0.1  # LaZSL: entropic regularisation (hard-coded 0.1 upstream)
    gamma: float = 0.0  # LaZSL: crop kept when cos(crop, full) >= mean + gamma
    max_iter: int = 100
    tol: float = 1e-2
    preset: str | None = None
    wca_score: str = "code"  # code | paper (methods-reference §3)
    wca_patch_n: int = 60
    wca_runs: int = 20
    wca_image_scale: float = math.exp(4.0)
    wca_text_scale: float = math.exp(2.0)
    seed: int = 0
    templates: str = "openai"  # clip-e: open_clip's OPENAI_IMAGENET_TEMPLATES, or a file
    alignments_top: int = 0  # store OT plans for the top-N ranked classes (0 = every candidate)


@dataclass
class ClassifyReport:
    run_id: int
    method: str
    images: int = 0
    seconds: float = 0.0
    params: dict = field(default_factory=dict)


# ---- reading the store ------------------------------------------------------------------
def iter_region_batches(cat: Catalog, image_ids: list[int] | None = None):
    """Yield (image_ids [B], region_ids [B, R], embeddings [B, R, D]) per shard and region count.

    Row 0 of every image is its full view; the rest are its crops/patches.
    """
    files = cat.shard_files("regions")
    if not files:
        raise StoreError(f"No indexed images in {cat.root}; run `pipeline index-images PATH` first.")
    wanted = set(image_ids) if image_ids is not None else None
    for f in files:
        t = read_tables([f], columns=["region_id", "image_id", "kind", "embedding"])
        img = t["image_id"].to_numpy()
        if wanted is not None:
            keep = np.isin(img, list(wanted))
            if not keep.any():
                continue
            t = t.filter(pa.array(keep))
            img = t["image_id"].to_numpy()
        emb = embeddings_to_numpy(t["embedding"])
        rid = t["region_id"].to_numpy()
        is_full = np.array([k == "full" for k in t["kind"].to_pylist()])
        starts = np.flatnonzero(is_full)  # each image's rows are contiguous, full first
        ends = np.append(starts[1:], len(img))
        sizes = ends - starts
        for r in np.unique(sizes):
            sel = np.flatnonzero(sizes == r)
            rows = (starts[sel, None] + np.arange(r)[None, :])
            yield img[starts[sel]], rid[rows], emb[rows]


def class_names(cat: Catalog) -> dict[int, str]:
    return dict(cat.query("SELECT class_id, name FROM classes").fetchall())


def ensure_template_texts(cat: Catalog, model, templates: list[str], tag: str) -> None:
    """Encode class-name prompts (CLIP templates) as attributes of style 'template:<tag>'."""
    names = class_names(cat)
    mapping = {n: [t.format(n) for t in templates] for n in names.values()}
    add_attributes(cat, mapping, source=f"template:{tag}", style="sentences", prompt_version=f"template:{tag}")
    encode_attributes(cat, model, progress=False)


def _attr_table(cat: Catalog, model: str, style: str | None, source_prefix: str | None = None, exclude_prefix: str | None = None):
    sql = (
        "SELECT a.attr_id, a.class_id, e.embedding FROM attributes a JOIN attribute_embeddings e USING (attr_id) "
        "WHERE e.model = ?"
    )
    args: list = [model]
    if style:
        sql += " AND a.style = ?"
        args.append(style)
    if source_prefix:
        sql += " AND starts_with(a.source, ?)"
        args.append(source_prefix)
    if exclude_prefix:
        sql += " AND NOT starts_with(a.source, ?)"
        args.append(exclude_prefix)
    rows = cat.query(sql + " ORDER BY a.attr_id", args).fetchall()
    if not rows:
        return None
    return (
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float32),
    )


# ---- the stage --------------------------------------------------------------------------
def classify(
    cat: Catalog,
    method: str,
    params: MethodParams = MethodParams(),
    *,
    model=None,
    image_ids: list[int] | None = None,
    progress: bool = True,
) -> ClassifyReport:
    """Score every indexed image (or ``image_ids``) with ``method`` and store one run."""
    from tqdm import tqdm

    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
    fp = cat.model
    if fp is None:
        raise StoreError(f"Store {cat.root} is empty; run build-attributes and index-images first.")
    t0 = time.perf_counter()
    names = class_names(cat)
    if not names:
        raise StoreError("No classes in the store; run `pipeline build-attributes` first.")

    texts = _texts_for_method(cat, method, params, model, fp)
    t_ids, t_cls, t_emb = texts["attrs"]
    classes = np.unique(t_cls)  # column order of every score matrix
    cls_index = np.searchsorted(classes, t_cls)
    proto_index, _ = read_index(cat.root / "faiss" / "class_prototypes.index", model=fp)
    proto_ids, proto_vecs = index_vectors(proto_index)
    proto_pos = np.searchsorted(classes, proto_ids)
    if not np.array_equal(classes[np.clip(proto_pos, 0, len(classes) - 1)], proto_ids):
        raise StoreError("Class prototypes are out of date; re-run `pipeline build-attributes` to rebuild the indexes.")
    prototypes = np.zeros((len(classes), proto_vecs.shape[1]), np.float32)
    prototypes[proto_pos] = proto_vecs
    k = params.top_k if 0 < params.top_k < len(classes) else len(classes)

    run_params = {"method": method, **vars(params), "model": fp, "attribute_source": texts["describe"], "n_classes": len(classes)}
    index_params = cat.query("SELECT params FROM index_runs ORDER BY index_run_id").fetchall()
    run_params["index_runs"] = [p[0] for p in index_params]
    run_id = cat.next_id("runs", "run_id")
    report = ClassifyReport(run_id=run_id, method=method, params=run_params)
    n_total = cat.query("SELECT count(*) FROM images").fetchone()[0] if image_ids is None else len(image_ids)
    bar = tqdm(total=n_total, desc=f"classify {method}", unit="img", disable=not progress)
    with cat.transaction():
        cat.query("INSERT INTO runs VALUES (?, ?, ?, ?, ?)", [run_id, method, dumps(run_params), fp, now_utc()])
        for img_ids, region_ids, emb in iter_region_batches(cat, image_ids):
            full, crops = emb[:, 0], emb[:, 1:]
            if method == "lazsl":
                if crops.shape[1] == 0:
                    raise StoreError("LaZSL needs crops; index images with --regions crops|grid|patches.")
                cand = shortlist_candidates(full, prototypes, k)
                res = scoring.lazsl_scores(
                    full, crops, t_emb, cls_index, cand,
                    theta=params.theta, eps=params.eps, gamma=params.gamma, max_iter=params.max_iter, tol=params.tol,
                )
                _write_predictions(cat, run_id, img_ids, classes[cand], res.scores, res.global_scores, res.local_scores)
                _write_alignments(cat, run_id, img_ids, classes[cand], region_ids[:, 1:], res, t_ids, full, crops, t_emb, params)
            else:
                scores = _baseline_scores(method, full, crops, texts, cls_index, len(classes), params)
                order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                _write_predictions(cat, run_id, img_ids, classes[order], np.take_along_axis(scores, order, 1))
            report.images += len(img_ids)
            bar.update(len(img_ids))
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _texts_for_method(cat: Catalog, method: str, params: MethodParams, model, fp: str) -> dict:
    """Which stored texts a method scores against (and encode template prompts on demand)."""

    def need_model():
        if model is None:
            raise StoreError(f"--method {method} needs the text encoder; pass --model/--pretrained of this store ({fp}).")
        return model

    if method in ("dclip", "lazsl"):
        attrs = _attr_table(cat, fp, "descriptors")
        describe = "descriptors"
        if attrs is None:  # a store with only CuPL sentences: use them, and say so in params
            attrs, describe = _attr_table(cat, fp, "sentences", exclude_prefix="template:"), "sentences"
        if attrs is None:
            raise StoreError("No attributes in the store; run `pipeline build-attributes` first.")
        return {"attrs": attrs, "describe": describe}
    if method in ("cupl", "wca"):
        attrs, describe = _attr_table(cat, fp, "sentences", exclude_prefix="template:"), "sentences"
        if attrs is None:
            attrs, describe = _attr_table(cat, fp, "descriptors"), "descriptors (no CuPL sentences in store)"
        out = {"attrs": attrs, "describe": describe}
        if method == "wca":
            photo = _template_attrs(cat, need_model, [CLIP_TEMPLATE], "clip")
            out["photo"] = photo
        return out
    if method == "clip":
        return {"attrs": _template_attrs(cat, need_model, [CLIP_TEMPLATE], "clip"), "describe": CLIP_TEMPLATE}
    if method == "clip-e":
        templates = load_templates(params.templates)
        return {"attrs": _template_attrs(cat, need_model, templates, f"ensemble-{params.templates}"), "describe": f"{len(templates)} templates"}
    raise InputError(method)


def _template_attrs(cat, need_model, templates: list[str], tag: str):
    attrs = _attr_table(cat, cat.model, "sentences", source_prefix=f"template:{tag}")
    n_classes = cat.query("SELECT count(*) FROM classes").fetchone()[0]
    if attrs is None or len(np.unique(attrs[1])) < n_classes or len(attrs[0]) < n_classes * len(templates):
        ensure_template_texts(cat, need_model(), templates, tag)
        attrs = _attr_table(cat, cat.model, "sentences", source_prefix=f"template:{tag}")
    return attrs


def load_templates(spec: str) -> list[str]:
    """'openai' -> open_clip's 80 ImageNet templates; 'simple' -> its 7; else a file, one per line with {}."""
    import open_clip

    if spec in ("openai", "simple"):
        fns = open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES if spec == "openai" else open_clip.zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES
        return [f("{}") for f in fns]
    from pathlib import Path

    p = Path(spec)
    if not p.is_file():
        raise InputError(f"--templates {spec!r}: use openai, simple, or a text file with one template per line containing {{}}.")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines or not all("{}" in ln or "{c}" in ln for ln in lines):
        raise InputError(f"{p}: every template line needs a {{}} (or {{c}}) where the class name goes.")
    return [ln.replace("{c}", "{}") for ln in lines]


def _baseline_scores(method, full, crops, texts, cls_index, n_classes, params: MethodParams) -> np.ndarray:
    _, _, t_emb = texts["attrs"]
    if method in ("clip", "clip-e"):
        # a template ensemble is normalize(mean_t normalize(emb)) per class: the same segment mean as CuPL
        return scoring.clip_scores(full, scoring.cupl_class_text(t_emb, cls_index, n_classes))
    if method == "dclip":
        return scoring.dclip_scores(full, t_emb, cls_index, n_classes)
    if method == "cupl":
        return scoring.cupl_scores(full, t_emb, cls_index, n_classes)
    if method == "wca":
        p_ids, p_cls, p_emb = texts["photo"]
        classes = np.unique(texts["attrs"][1])
        photo = np.zeros((n_classes, t_emb.shape[1]), np.float32)
        pos = np.searchsorted(classes, p_cls)
        photo[pos] = p_emb
        res = scoring.wca_scores(
            full, crops, t_emb, cls_index, photo,
            image_scale=params.wca_image_scale, text_scale=params.wca_text_scale,
            patch_n=params.wca_patch_n, n_runs=params.wca_runs, seed=params.seed, score=params.wca_score,
        )
        return res.scores
    raise InputError(method)


def _write_predictions(cat, run_id, img_ids, class_ids, scores, global_scores=None, local_scores=None) -> None:
    b, k = class_ids.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    cols = {
        "run_id": np.full(b * k, run_id, np.int64),
        "image_id": np.repeat(img_ids, k).astype(np.int64),
        "class_id": np.take_along_axis(class_ids, order, 1).reshape(-1).astype(np.int64),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b),
        "score": np.take_along_axis(scores, order, 1).reshape(-1).astype(np.float64),
        "global_score": (np.take_along_axis(global_scores, order, 1).reshape(-1).astype(np.float64) if global_scores is not None else pa.nulls(b * k, pa.float64())),
        "local_score": (np.take_along_axis(local_scores, order, 1).reshape(-1).astype(np.float64) if local_scores is not None else pa.nulls(b * k, pa.float64())),
    }
    tbl = pa.table(cols)  # noqa: F841  (read by DuckDB below by name)
    cat.con.execute("INSERT INTO predictions SELECT * FROM tbl")


def _write_alignments(cat, run_id, img_ids, class_ids, crop_region_ids, res, t_ids, full, crops, t_emb, params) -> None:
    """Store the non-zero OT plan entries with the fused similarity they were paid for."""
    plan = res.plan  # [B, K, M, N]
    if params.alignments_top > 0:
        rank = np.argsort(np.argsort(-res.scores, axis=1, kind="stable"), axis=1)
        plan = plan * (rank < params.alignments_top)[:, :, None, None]
    b, k, m, n = np.nonzero(plan > 0)
    if len(b) == 0:
        return
    attr_rows = res.attr_index[b, k, n]
    sim_local = np.einsum("id,id->i", crops[b, m], t_emb[attr_rows])
    sim_global = np.einsum("id,id->i", full[b], t_emb[attr_rows])
    tbl = pa.table(  # noqa: F841
        {
            "run_id": np.full(len(b), run_id, np.int64),
            "image_id": img_ids[b].astype(np.int64),
            "class_id": class_ids[b, k].astype(np.int64),
            "region_id": crop_region_ids[b, m].astype(np.int64),
            "attr_id": t_ids[attr_rows].astype(np.int64),
            "mass": plan[b, k, m, n].astype(np.float64),
            "similarity": ((1 - params.theta) * sim_global + params.theta * sim_local).astype(np.float64),
        }
    )
    cat.con.execute("INSERT INTO alignments SELECT * FROM tbl")


def top_attributes(cat: Catalog, run_id: int, n_classes: int = 3, n_attrs: int = 3) -> list[dict]:
    """Each image's top classes with their strongest attributes (by Σ mass·similarity)."""
    rows = cat.query(
        """
        SELECT i.path, p.image_id, p.rank, c.name, p.score,
               list(ta.attribute ORDER BY ta.attr_rank) FILTER (WHERE ta.attribute IS NOT NULL) AS attrs, i.label
        FROM predictions p JOIN classes c USING (class_id) JOIN images i USING (image_id)
        LEFT JOIN top_attributes ta
               ON ta.run_id = p.run_id AND ta.image_id = p.image_id AND ta.class_id = p.class_id AND ta.attr_rank <= ?
        WHERE p.run_id = ? AND p.rank <= ?
        GROUP BY ALL ORDER BY i.path, p.rank
        """,
        [n_attrs, run_id, n_classes],
    ).fetchall()
    return [dict(path=r[0], image_id=r[1], rank=r[2], name=r[3], score=r[4], attributes=r[5] or [], label=r[6]) for r in rows]
