"""Mutual-knowledge explanations of a run's predictions, and the comparison across models.

After Sammani & Deligiannis, NeurIPS 2024 (``docs/compositional.md``; the math is
:mod:`queries.mutual_knowledge`). For each image of a run, its prediction (rank 1) gets:

* **vision concepts**: the image's patch tokens (one forward pass of the store's model,
  :func:`pipeline.stages.index_images.encode_patch_tokens`), their foreground, clustered into
  parts without labels; each part's box, as a square crop of at least ``min_part_side`` of the
  image's short side, encoded and described by its ``part_topk`` nearest entries of the
  **concept bank**; the union ordered by relevance to the whole image;
* **language concepts**: the ``language_topk`` bank entries nearest the predicted class's text
  embedding (``class_text="name"``: its ``"a photo of a {c}."`` prompt, as the paper;
  ``"run"``: the normalised mean of the texts the run scored against);
* their overlap, the mutual-information score and the concept-deletion curve.

The concept bank is every distinct attribute text of the store (descriptors, else sentences;
the states' and objects' descriptors of a store with pairs), plus ``bank_file`` lines, minus
every text that contains a class name: concepts, not labels. Rows go to ``mutual_knowledge``
(one per explained prediction) and ``concepts`` (its vision and language concepts);
running again replaces the rows of the same images.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from queries.mutual_knowledge import cluster_parts, foreground_mask, mutual_knowledge, part_boxes
from stores import tables
from stores.catalog import Catalog, now_utc
from stores.errors import StoreError

from ..errors import InputError
from ..imaging import open_image, read_image_file
from ..inputs import DEFAULT_MAX_FILE_BYTES, read_text_bounded
from ..models import load_model
from ..names import CLIP_TEMPLATE, PHOTO_PROMPTS, check_text, norm_class_name
from .attributes import add_class_prompts, encode_class_prompts
from .index_images import encode_patch_tokens, patch_grid_size

CLASS_TEXTS = ("name", "run")
CLUSTERINGS = ("ward", "kmeans")


@dataclass(frozen=True)
class ConceptConfig:
    """Settings of a mutual-knowledge run (stored with every row)."""

    n_parts: int = 4
    part_topk: int = 2
    language_topk: int = 4
    clustering: str = "ward"
    foreground: bool = True
    min_part_side: float = 0.375  # of the image's short side (48 px of the toy worlds' 128)
    class_text: str = "name"
    use_ot: bool = False  # upstream's Sinkhorn-Knopp over the parts' shared top entries

    def __post_init__(self):
        if self.clustering not in CLUSTERINGS:
            raise InputError(f"--clustering must be one of {', '.join(CLUSTERINGS)}.")
        if self.class_text not in CLASS_TEXTS:
            raise InputError(f"--class-text must be one of {', '.join(CLASS_TEXTS)}.")


@dataclass
class ConceptReport:
    run_id: int
    method: str
    images: int = 0
    bank: int = 0
    dropped: int = 0  # bank texts left out because they name a class
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        s = self.summary
        out = [f"run {self.run_id} ({self.method}): {self.images} predictions explained in {self.seconds:.1f} s "
               f"(concept bank {self.bank} texts" + (f", {self.dropped} naming a class left out" if self.dropped else "") + ")"]
        out += summary_lines(s)
        out += [f"  failed: {p}: {r}" for p, r in self.failed[:10]]
        return out


def summary_lines(s: dict) -> list[str]:
    if not s:
        return []
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    out = [f"mean MI {f(s['mi'])}, mean deletion AUC {f(s['deletion_auc'])}; "
           f"{100 * s['shared_share']:.1f}% share a concept, {100 * s['curve_falls']:.1f}% of deletion curves fall"]
    if s.get("n_labelled"):
        out.append(f"accuracy {100 * s['acc1']:.1f}% of {s['n_labelled']} labelled; correct: MI {f(s['mi_correct'])}, "
                   f"deletion AUC {f(s['deletion_auc_correct'])} (n {s['n_correct']}); wrong: MI {f(s['mi_wrong'])}, "
                   f"deletion AUC {f(s['deletion_auc_wrong'])} (n {s['n_wrong']})")
    return out


# ---- the concept bank and the class texts ---------------------------------------------------------
def concept_bank(cat: Catalog, bank_file: str | Path | None = None,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[str], int]:
    """(bank texts, how many were dropped because they contain a class name)."""
    texts = tables.distinct_attribute_texts(cat, "descriptors") or tables.distinct_attribute_texts(cat, "sentences")
    if bank_file is not None:
        p = Path(bank_file)
        if not p.is_file():
            raise InputError(f"--bank {p}: no such file; give concepts one a line.")
        for i, line in enumerate(read_text_bounded(p, max_bytes, what="--bank").splitlines(), 1):
            if line.strip():
                texts.append(check_text(line.strip(), f"{p}: line {i}", "concept"))
    texts = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    names = sorted({norm_class_name(n) for n in tables.class_names(cat).values()}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b") if names else None
    kept = [t for t in texts if pattern is None or not pattern.search(norm_class_name(t))]
    if not kept:
        raise StoreError("The concept bank is empty: the store has no attribute texts without a class name; "
                         "give concepts with --bank FILE (one a line).")
    return kept, len(texts) - len(kept)


def class_text_embeddings(cat: Catalog, model, run: tables.RunRecord, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(class_ids, L2-normalised text embedding (C, D)) of every class, as ``how`` says."""
    fp = cat.model
    if how == "name":
        m = tables.class_prompt_matrix(cat, fp, PHOTO_PROMPTS)
        if len(m) < tables.class_count(cat):
            add_class_prompts(cat, [CLIP_TEMPLATE], PHOTO_PROMPTS)
            encode_class_prompts(cat, model)
            m = tables.class_prompt_matrix(cat, fp, PHOTO_PROMPTS)
    else:
        kind = str(run.params.get("texts", {}).get("kind", ""))
        if kind.startswith("class prompts "):
            m = tables.class_prompt_matrix(cat, fp, kind[len("class prompts "):])
        elif kind == "compositional clip":
            m = tables.class_prompt_matrix(cat, fp, PHOTO_PROMPTS)
        else:
            m = tables.attribute_matrix(cat, fp, "sentences" if kind.startswith("sentences") else "descriptors")
    if len(m) == 0:
        raise StoreError(f"No encoded class texts ({how}) for run {run.run_id}.")
    classes, idx = np.unique(m.class_ids, return_inverse=True)
    acc = np.zeros((len(classes), m.embeddings.shape[1]))
    np.add.at(acc, idx, m.embeddings)
    return classes, acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)


# ---- the vision side ------------------------------------------------------------------------------
def _square(box, min_side: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A square crop around ``box`` of side >= ``min_side`` px, inside the image."""
    x0, y0, x1, y1 = box
    side = min(max(min_side, x1 - x0, y1 - y0), width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    nx = min(max(cx - side / 2, 0), width - side)
    ny = min(max(cy - side / 2, 0), height - side)
    return int(round(nx)), int(round(ny)), int(round(nx + side)), int(round(ny + side))


def image_parts(model, images: list, cfg: ConceptConfig):
    """Per image: (full embedding (D,), part labels of the patch grid, part boxes in image pixels
    (K, 4), part embeddings (K, D)). The grid covers the centre square of the image (open_clip's
    resize-shortest-side + centre crop)."""
    grid = patch_grid_size(model)
    if not grid:
        raise InputError(f"Mutual knowledge needs patch tokens; {model.name} is not a ViT.")
    pixels = torch.stack([model.preprocess(im) for im in images])
    full, tokens = encode_patch_tokens(model, pixels)
    tokens = tokens[:, -grid * grid:]  # the patch tokens (a class token, if returned, comes first)
    out, crops, owner = [], [], []
    for b, im in enumerate(images):
        w, h = im.size
        side = min(w, h)
        tok = tokens[b].numpy()
        fg = foreground_mask(tok, (grid, grid)) if cfg.foreground else None
        labels = cluster_parts(tok, n_parts=cfg.n_parts, mask=fg, method=cfg.clustering)
        boxes = part_boxes(labels, (grid, grid), (side, side)) + np.array([(w - side) / 2, (h - side) / 2] * 2)
        for bx in boxes:
            crops.append(model.preprocess(im.crop(_square(bx, cfg.min_part_side * side, w, h))))
            owner.append(b)
        out.append([full[b].numpy(), labels, boxes])
    emb = model.encode_images(torch.stack(crops)).numpy() if crops else np.zeros((0, model.embed_dim), np.float32)
    owner = np.array(owner, np.int64)
    for b, rec in enumerate(out):
        rec.append(emb[owner == b])
    return [tuple(r) for r in out]


# ---- the stage ------------------------------------------------------------------------------------
def resolve_run(cat: Catalog, run_id: int | None) -> tables.RunRecord:
    run = tables.get_run(cat, run_id) if run_id is not None else tables.latest_run(cat)
    if run is None:
        if run_id is not None:
            raise InputError(f"No run {run_id}; `pipeline sql \"select run_id, method from runs\"` lists them.")
        raise StoreError("No runs in the store; run `pipeline classify` first.")
    return run


def explain_concepts(cat: Catalog, model, run_id: int | None = None, *, config: ConceptConfig = ConceptConfig(),
                     image_ids: list[int] | None = None, limit: int | None = None, bank_file=None,
                     batch_size: int = 32, progress: bool = True) -> ConceptReport:
    """Mutual-knowledge explanations of a run's predictions (every image, or ``image_ids``, or
    the first ``limit`` by path) into ``mutual_knowledge`` and ``concepts``."""
    # heavy: imported on use
    from tqdm import tqdm

    t0 = time.perf_counter()
    run = resolve_run(cat, run_id)
    cat.check_model(model.fingerprint)
    bank, dropped = concept_bank(cat, bank_file)
    bank_emb = model.encode_texts(bank)
    classes, class_emb = class_text_embeddings(cat, model, run, config.class_text)
    todo = tables.top1_images(cat, run.run_id)
    if image_ids is not None:
        wanted = set(int(i) for i in image_ids)
        todo = [r for r in todo if int(r["image_id"]) in wanted]
    todo = todo[:limit] if limit else todo
    if not todo:
        raise StoreError(f"Run {run.run_id} has no predictions to explain.")
    report = ConceptReport(run.run_id, run.method, bank=len(bank), dropped=dropped)
    bar = tqdm(total=len(todo), desc="mutual knowledge", unit="img", disable=not progress)
    for i in range(0, len(todo), batch_size):
        chunk, images = [], []
        for r in todo[i: i + batch_size]:
            try:
                images.append(open_image(read_image_file(r["path"])))
                chunk.append(r)
            except (ValueError, OSError) as exc:
                report.failed.append((r["path"], str(exc) if isinstance(exc, ValueError) else "unreadable"))
        mk_rows, concept_rows = [], []
        for r, (full, labels, boxes, parts) in zip(chunk, image_parts(model, images, config) if images else []):
            ci = int(np.searchsorted(classes, r["class_id"]))
            if ci >= len(classes) or classes[ci] != r["class_id"]:
                raise StoreError(f"Class {r['class_id']} has no text embedding ({config.class_text}).")
            mk = mutual_knowledge(parts, full, class_emb[ci], bank_emb, part_topk=config.part_topk,
                                  language_topk=config.language_topk, use_ot=config.use_ot, labels=labels)
            m, c = rows_of(run.run_id, r, mk, boxes, bank, bank_emb, class_emb[ci], config, model.fingerprint)
            mk_rows.append(m)
            concept_rows += c
        tables.replace_mutual_knowledge(cat, mk_rows, concept_rows)
        report.images += len(mk_rows)
        bar.update(len(todo[i: i + batch_size]))
    bar.close()
    report.seconds = time.perf_counter() - t0
    report.summary = summarize(cat, run.run_id)
    return report


def rows_of(run_id: int, r: dict, mk, boxes: np.ndarray, bank: list[str], bank_emb: np.ndarray, class_emb: np.ndarray,
            config: ConceptConfig, model: str) -> tuple[dict, list[dict]]:
    """The ``mutual_knowledge`` row and the ``concepts`` rows of one explanation."""
    key = dict(run_id=run_id, image_id=int(r["image_id"]), class_id=int(r["class_id"]))
    shared = set(mk.shared.tolist())
    first_part = {}
    for k, row in enumerate(mk.part_concepts):
        for a in row:
            first_part.setdefault(a, k)
    rows = []
    for rank, (a, rel) in enumerate(zip(mk.vision.tolist(), mk.relevance.tolist()), 1):
        k = first_part.get(a)
        box = boxes[k].tolist() if k is not None else [None] * 4
        rows.append(dict(key, side="vision", concept=bank[a], rank=rank, score=float(rel), shared=a in shared, part=k,
                         x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
    sims = bank_emb[mk.language] @ class_emb
    for rank, (a, sim) in enumerate(zip(mk.language.tolist(), sims.tolist()), 1):
        rows.append(dict(key, side="language", concept=bank[a], rank=rank, score=float(sim), shared=a in shared,
                         part=None, x0=None, y0=None, x1=None, y1=None))
    n_parts = int(mk.labels.max()) + 1 if mk.labels.size and mk.labels.max() >= 0 else 0
    row = dict(key, n_vision=len(mk.vision), n_language=len(mk.language), n_shared=len(shared), mi=float(mk.mi),
               deletion_auc=float(mk.deletion_auc), deletion_curve=[float(v) for v in mk.deletion], n_parts=n_parts,
               part_topk=config.part_topk, language_topk=config.language_topk, clustering=config.clustering,
               foreground=config.foreground, part_embedding="crop", class_text=config.class_text, model=model,
               created_at=now_utc())
    return row, rows


# ---- summaries and the comparison across models ----------------------------------------------------
def summarize(cat: Catalog, run_id: int) -> dict:
    """Means over a run's explained predictions, and over its correct and wrong ones (labelled images)."""
    rows = tables.mutual_knowledge_images(cat, run_id)
    if not rows:
        return {}
    known = set(tables.class_ids_by_norm(cat))
    mi = np.array([r["mi"] for r in rows])
    auc = np.array([r["deletion_auc"] for r in rows])
    labelled = np.array([bool(r["label"]) and norm_class_name(r["label"]) in known for r in rows])
    correct = np.array([bool(r["label"]) and norm_class_name(r["label"]) == r["predicted_norm"] for r in rows])
    mean = lambda v, m: float(v[m].mean()) if m.any() else None  # noqa: E731
    return {
        "images": len(rows), "mi": float(mi.mean()), "deletion_auc": float(auc.mean()),
        "shared_share": float(np.mean([r["n_shared"] > 0 for r in rows])),
        "curve_falls": float(np.mean([r["deletion_curve"][-1] < r["deletion_curve"][0] for r in rows])),
        "n_labelled": int(labelled.sum()), "acc1": mean(correct.astype(float), labelled),
        "n_correct": int((correct & labelled).sum()), "n_wrong": int((~correct & labelled).sum()),
        "mi_correct": mean(mi, correct & labelled), "mi_wrong": mean(mi, ~correct & labelled),
        "deletion_auc_correct": mean(auc, correct & labelled), "deletion_auc_wrong": mean(auc, ~correct & labelled),
    }


COMPARE_COLUMNS = ("store", "model", "method", "run_id", "images", "acc1", "mi", "deletion_auc", "mi_correct",
                   "mi_wrong", "deletion_auc_correct", "deletion_auc_wrong", "shared_share")


def compare_stores(stores: list[str], *, method: str | None = None, compute: bool = True,
                   config: ConceptConfig = ConceptConfig(), bank_file=None, limit: int | None = None,
                   device: str | None = None, progress: bool = False) -> list[dict]:
    """One row per store (one model each): accuracy beside the mean mutual-knowledge score and
    concept-deletion AUC of one run (the latest of ``method``, else the latest explained run,
    else the latest run). A run not explained yet is explained first with the store's model
    (``compute``), else refused."""
    out = []
    for path in stores:
        root = Path(path)
        if not (root / "catalog.duckdb").is_file():
            raise InputError(f"{path} is not a store (no catalog.duckdb).")
        with Catalog(root, read_only=True) as cat:
            run = _compare_run(cat, method, path)
            done = bool(tables.mutual_knowledge_images(cat, run.run_id))
        if not done:
            if not compute:
                raise StoreError(f"{path}: run {run.run_id} ({run.method}) has no mutual-knowledge rows; "
                                 f"run `pipeline mutual-knowledge --run {run.run_id} --store {path}` first.")
            with Catalog(root) as cat:
                rec = cat.model_record()
                model = load_model(rec["name"], rec["pretrained"], device=device)
                explain_concepts(cat, model, run.run_id, config=config, bank_file=bank_file, limit=limit,
                                 progress=progress)
        with Catalog(root, read_only=True) as cat:
            s = summarize(cat, run.run_id)
            out.append({"store": str(path), "model": cat.model, "method": run.method, "run_id": run.run_id,
                        **{k: s.get(k) for k in COMPARE_COLUMNS[4:]}})
    return out


def _compare_run(cat: Catalog, method: str | None, path) -> tables.RunRecord:
    if method is not None:
        rid = tables.latest_runs_by_method(cat).get(method)
        if rid is None:
            raise StoreError(f"{path}: no run of {method}; run `pipeline classify --method {method} --store {path}` first.")
        return tables.get_run(cat, rid)
    run = tables.latest_run_with_mutual_knowledge(cat) or tables.latest_run(cat)
    if run is None:
        raise StoreError(f"{path}: no runs; run `pipeline classify` first.")
    return run
