"""Compositional zero-shot classification: (state, object) pairs through the stages.

Storage (migration ``m011_compositional``): a pair is an ordinary row of ``classes`` named
``"state object"`` (so images in ``sliced_apple/`` are labelled with it, and every reader of
classes, predictions and alignments works on it unchanged); ``czsl_pairs`` says which state
and object it joins and whether it is *seen* (a training pair) or *open-world-only*;
``czsl_vocab`` holds the states and objects, ``czsl_texts`` their prompts (the name prompt
``"a photo of something {state}."`` / ``"a photo of a {object}."`` and DCLIP-rule descriptors),
``attribute_roles`` what part of its pair each pair attribute describes. A store without pairs
keeps these tables empty and behaves exactly as before.

* :func:`build_compositional` (``build-attributes --states/--objects/--pairs/--seen``): the
  vocabularies, the pairs and every text the czsl-* methods score against, encoded.
* :func:`classify_compositional` (``classify --method czsl-clip|czsl-dclip|czsl-local``):
  :func:`queries.compositional.compositional_scores` on the stored embeddings; predictions of
  every candidate pair (the CZSL metrics sweep a bias over all of them), each pair's branch
  scores (``pair_scores``), for ``czsl-local`` the pair branch's transport plan
  (``alignments``) and which regions carried the predicted pair's state and object
  (``pair_regions``); in the open world, the feasibility filter (``pair_feasibility``).
* :func:`czsl_evaluation` (``evaluate``): best seen / unseen / HM and the seen-unseen AUC,
  closed and open world, for any run on a store whose pairs are marked seen/unseen.

The methods (each branch combined as MSCI does, ``docs/compositional.md``):

============== ======================================= ===========================================
method         pair branch                             state / object branches
============== ======================================= ===========================================
``czsl-clip``  cos(image, "a photo of a {s} {o}.")     cos(image, name prompt)
``czsl-dclip`` DCLIP mean over the pair's descriptors  DCLIP mean over the state's / object's
``czsl-local`` LaZSL between crops and pair descriptors LaZSL between crops and their descriptors
============== ======================================= ===========================================
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from queries.compositional import compositional_scores, czsl_metrics, feasibility
from stores import tables
from stores.catalog import Catalog
from stores.errors import StoreError
from stores.results import ResultRows, text_ids, write_results

from ..config import MethodConfig
from ..errors import InputError
from ..inputs import DEFAULT_MAX_FILE_BYTES, read_text_bounded
from ..names import clean_class_name, norm_class_name
from .attributes import (PHOTO_PROMPTS, add_attributes, add_class_prompts, claim_model, encode_attributes,
                         encode_class_prompts,
                         read_attribute_json, render_prompt)

PAIR_TEMPLATE = "a photo of a {}."  # the clip method's template: czsl-clip's pair branch shares its prompts
STATE_TEMPLATE = "a photo of something {}."
OBJECT_TEMPLATE = "a photo of a {}."
ROLE_CODES = {"state": 0, "object": 1, "pair": 2}


# ---- vocabularies ---------------------------------------------------------------------------
@dataclass
class Vocabulary:
    """States, objects and pairs as read from the user's files (display names, file order)."""

    states: list[str]
    objects: list[str]
    pairs: list[tuple[str, str]]  # the closed world: the dataset's pairs (every S x O when no pairs file)
    seen: set[tuple[str, str]] | None = None  # the training pairs (None: not given)
    open_only: list[tuple[str, str]] = field(default_factory=list)  # S x O minus pairs, when asked for

    def pair_name(self, pair: tuple[str, str]) -> str:
        return f"{pair[0]} {pair[1]}"


def _name_lines(path: str | Path, what: str, max_bytes: int) -> list[tuple[str, str]]:
    """(where, line) of every non-blank line (a trailing blank line is not an entry)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; give the {what} one a line.")
    out = []
    for i, line in enumerate(read_text_bounded(p, max_bytes, what=what).splitlines(), 1):
        if line.strip():
            out.append((f"{p}: line {i}", line))
    if not out:
        raise InputError(f"{p}: no {what} in the file.")
    return out


def read_names(path: str | Path, what: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[str]:
    """A list of states or objects: one a line, cleaned as class names are, duplicates merged."""
    names: dict[str, str] = {}
    for where, line in _name_lines(path, what, max_bytes):
        name = clean_class_name(line, where=where)
        names.setdefault(name.lower(), name)
    return list(names.values())


def _split_pair(line: str, where: str, states: dict[str, str] | None, objects: dict[str, str] | None) -> tuple[str, str]:
    """One pair line: ``state<TAB>object``, ``state,object`` or ``state object``; with known
    vocabularies the split is the one that names a known state and a known object."""
    for sep in ("\t", ","):
        if sep in line:
            s, _, o = line.partition(sep)
            return clean_class_name(s, where=where), clean_class_name(o, where=where)
    text = clean_class_name(line, where=where)
    if states is not None and objects is not None:
        words = text.split(" ")
        for k in range(1, len(words)):
            s, o = " ".join(words[:k]), " ".join(words[k:])
            if s.lower() in states and o.lower() in objects:
                return states[s.lower()], objects[o.lower()]
        raise InputError(f"{where}: {text!r} is not a known state followed by a known object.")
    s, _, o = text.partition(" ")
    if not o:
        raise InputError(f"{where}: {text!r} is not a pair; write 'state object' (or state<TAB>object).")
    return s, o


def read_pairs(path: str | Path, states: list[str] | None = None, objects: list[str] | None = None,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[tuple[str, str]]:
    """Pairs one a line (the CZSL ``*_pairs.txt`` format: ``state object``), duplicates merged."""
    smap = {s.lower(): s for s in states} if states else None
    omap = {o.lower(): o for o in objects} if objects else None
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for where, line in _name_lines(path, "pairs", max_bytes):
        s, o = _split_pair(line, where, smap, omap)
        if not s or not o:
            raise InputError(f"{where}: an empty state or object.")
        out.setdefault((s.lower(), o.lower()), (s, o))
    return list(out.values())


def read_vocabulary(states: str | Path | None = None, objects: str | Path | None = None, pairs: str | Path | None = None,
                    seen: str | Path | None = None, open_world: bool = False,
                    max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Vocabulary:
    """The vocabulary of ``build-attributes --states S --objects O [--pairs P] [--seen F] [--open-world]``.

    Without ``pairs`` every state x object pair is a pair of the closed world; with it, those
    pairs are, and ``open_world`` also stores the rest of S x O as open-world-only pairs
    (states and objects come from ``pairs`` when their files are not given). ``seen`` lists
    the training pairs; every one must be a pair."""
    if (states is None) != (objects is None):
        raise InputError("Give --states and --objects together (or --pairs alone).")
    if states is None and pairs is None:
        raise InputError("Give --states FILE --objects FILE, or --pairs FILE.")
    s_list = read_names(states, "states", max_bytes) if states is not None else None
    o_list = read_names(objects, "objects", max_bytes) if objects is not None else None
    if pairs is not None:
        pair_list = read_pairs(pairs, s_list, o_list, max_bytes)
        if s_list is None:
            s_list = list(dict.fromkeys(s for s, _ in pair_list))
            o_list = list(dict.fromkeys(o for _, o in pair_list))
    else:
        pair_list = [(s, o) for s in s_list for o in o_list]
    closed = {(s.lower(), o.lower()) for s, o in pair_list}
    open_only = [(s, o) for s in s_list for o in o_list if (s.lower(), o.lower()) not in closed] if open_world else []
    seen_set = None
    if seen is not None:
        smap, omap = {s.lower(): s for s in s_list}, {o.lower(): o for o in o_list}
        given = read_pairs(seen, s_list, o_list, max_bytes)
        unknown = [f"{s} {o}" for s, o in given if (s.lower(), o.lower()) not in closed]
        if unknown:
            raise InputError(f"{seen}: {len(unknown)} seen pair(s) are not pairs of the closed world: {', '.join(unknown[:5])}.")
        seen_set = {(smap[s.lower()], omap[o.lower()]) for s, o in given}
    return Vocabulary(s_list, o_list, pair_list, seen_set, open_only)


# ---- build-attributes -------------------------------------------------------------------------
@dataclass
class CompositionalReport:
    states: int = 0
    objects: int = 0
    pairs: int = 0
    seen: int | None = None
    unseen: int | None = None
    open_only: int = 0
    pair_attributes: int = 0
    texts: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        split = "" if self.seen is None else f" ({self.seen} seen, {self.unseen} unseen)"
        out = [f"{self.states} states, {self.objects} objects, {self.pairs} pairs{split}, "
               f"{self.open_only} open-world-only pairs",
               f"{self.pair_attributes} pair attributes and {self.texts} state/object texts stored"]
        return out + self.notes


def _descriptor_map(path, names: list[str], what: str, max_bytes: int, report: CompositionalReport) -> dict[str, list[str]]:
    """{name: descriptors} of a DCLIP JSON, keyed by our display names; unknown keys reported."""
    if path is None:
        return {}
    mapping, _ = read_attribute_json(path, max_bytes)
    by_norm = {n.lower(): n for n in names}
    out, unknown = {}, []
    for key, texts in mapping.items():
        name = by_norm.get(key.lower())
        if name is None:
            unknown.append(key)
            continue
        out[name] = [t for t in texts if t]
    if unknown:
        report.notes.append(f"{path}: {len(unknown)} {what} not in the vocabulary (ignored): {', '.join(unknown[:5])}")
    missing = [n for n in names if not out.get(n)]
    if missing:
        report.notes.append(f"{path}: {len(missing)} {what} without descriptors (encoded by name): {', '.join(missing[:5])}")
    return out


def build_compositional(cat: Catalog, model, vocab: Vocabulary, *, attributes_states=None, attributes_objects=None,
                        attributes_pairs=None, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                        progress: bool = True) -> CompositionalReport:
    """Store and encode a pair vocabulary: states, objects, pairs (as classes), their flags,
    the pair descriptors (with their roles), the state and object texts, the pair name prompts.

    A pair's descriptors are ``attributes_pairs[pair]`` when given, else its state's then its
    object's (``attributes_states`` / ``attributes_objects``, DCLIP JSON files); each is
    stored with the role ``state``, ``object`` or ``pair`` (a text of the state's list is a
    state descriptor, and so on). Running it again adds what is new and updates the flags."""
    report = CompositionalReport(states=len(vocab.states), objects=len(vocab.objects), pairs=len(vocab.pairs),
                                 open_only=len(vocab.open_only))
    s_desc = _descriptor_map(attributes_states, vocab.states, "states", max_bytes, report)
    o_desc = _descriptor_map(attributes_objects, vocab.objects, "objects", max_bytes, report)
    all_pairs = list(vocab.pairs) + list(vocab.open_only)
    p_desc = _descriptor_map(attributes_pairs, [vocab.pair_name(p) for p in all_pairs], "pairs", max_bytes, report)
    claim_model(cat, model)
    mapping, roles = {}, {}
    for s, o in all_pairs:
        name = vocab.pair_name((s, o))
        texts = p_desc.get(name) or (s_desc.get(s, []) + o_desc.get(o, []))
        texts = list(dict.fromkeys(texts)) or [""]
        mapping[name] = texts
        for t in texts:
            roles[(name.lower(), t)] = ("state" if t in s_desc.get(s, []) else "object" if t in o_desc.get(o, [])
                                        else "pair")
    with cat.transaction():
        vocab_ids = tables.czsl_vocab_ids(cat)
        next_id = tables.next_vocab_id(cat)
        new = []
        for kind, names in (("state", vocab.states), ("object", vocab.objects)):
            for n in names:
                key = (kind, norm_class_name(n))
                if key not in vocab_ids:
                    vocab_ids[key] = next_id
                    new.append(dict(vocab_id=next_id, kind=kind, name=n, norm_name=key[1]))
                    next_id += 1
        tables.insert_czsl_vocab(cat, new)
        have = tables.czsl_text_keys(cat)
        text_id = tables.next_czsl_text_id(cat)
        rows = []
        for kind, names, desc, template in (("state", vocab.states, s_desc, STATE_TEMPLATE),
                                            ("object", vocab.objects, o_desc, OBJECT_TEMPLATE)):
            for n in names:
                vid = vocab_ids[(kind, norm_class_name(n))]
                wanted = [(PHOTO_PROMPTS, "", template.replace("{}", n))]
                wanted += [("descriptors", t, render_prompt(n, t, "descriptors")) for t in (desc.get(n) or [""])]
                for style, text, prompt in wanted:
                    if (vid, style, text) in have:
                        continue
                    have.add((vid, style, text))
                    from_file = attributes_states if kind == "state" else attributes_objects
                    rows.append(dict(text_id=text_id, vocab_id=vid, style=style, text=text, prompt=prompt,
                                     source=f"file:{Path(from_file).name}" if text else "name"))
                    text_id += 1
        tables.insert_czsl_texts(cat, rows)
        report.texts = len(rows)
    source = f"file:{Path(attributes_pairs).name}" if attributes_pairs else "compositional"
    report.pair_attributes = add_attributes(cat, mapping, source=source, style="descriptors", prompt_version="file")
    with cat.transaction():
        class_ids = tables.class_ids_by_norm(cat)
        seen = {(s.lower(), o.lower()) for s, o in vocab.seen} if vocab.seen is not None else None
        pair_rows = []
        for open_only, group in ((False, vocab.pairs), (True, vocab.open_only)):
            for s, o in group:
                pair_rows.append(dict(
                    class_id=class_ids[norm_class_name(vocab.pair_name((s, o)))],
                    state_id=vocab_ids[("state", norm_class_name(s))], object_id=vocab_ids[("object", norm_class_name(o))],
                    seen=None if seen is None else (s.lower(), o.lower()) in seen, open_only=open_only))
        tables.upsert_czsl_pairs(cat, pair_rows)
        ids, rl = [], []
        names = tables.class_names(cat)
        for aid, cid, text in tables.class_attributes(cat, [r["class_id"] for r in pair_rows]):
            role = roles.get((names[cid].lower(), text))
            if role is not None:
                ids.append(aid)
                rl.append(role)
        tables.insert_attribute_roles(cat, ids, rl)
    if seen is not None:
        report.seen = len(vocab.seen)
        report.unseen = len(vocab.pairs) - len(vocab.seen)
    encode_attributes(cat, model, progress=progress)
    add_class_prompts(cat, [PAIR_TEMPLATE], PHOTO_PROMPTS)
    encode_class_prompts(cat, model)
    encode_czsl_texts(cat, model)
    return report


def encode_czsl_texts(cat: Catalog, model, batch_size: int = 256) -> int:
    """Embed the state and object texts that have no embedding for ``model`` yet."""
    claim_model(cat, model)
    todo = tables.czsl_texts_without_embedding(cat, model.fingerprint)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i: i + batch_size]
        emb = model.encode_texts([p for _, p in chunk], batch_size=batch_size)
        with cat.transaction():
            tables.insert_czsl_text_embeddings(cat, [t for t, _ in chunk], model.fingerprint, emb)
    return len(todo)


# ---- classify -------------------------------------------------------------------------------
@dataclass
class PairTexts:
    """What a czsl-* run scores against, indexed for :func:`compositional_scores`."""

    class_ids: np.ndarray  # (P,) the candidate pairs
    pair_state: np.ndarray  # (P,) index into states
    pair_object: np.ndarray
    seen: np.ndarray  # (P,) bool (False where unknown)
    pair: tables.TextMatrix
    pair_index: np.ndarray  # (A,) pair index of each pair text
    pair_role: np.ndarray | None  # (A,) 0 state, 1 object, 2 pair
    state: tables.TextMatrix
    state_index: np.ndarray
    object: tables.TextMatrix
    object_index: np.ndarray
    describe: dict = field(default_factory=dict)


def _vocab_index(matrix: tables.TextMatrix, vocab: list[tuple[int, str]], what: str) -> np.ndarray:
    ids = np.array([v for v, _ in vocab], np.int64)
    idx = np.searchsorted(ids, matrix.class_ids)
    missing = sorted(set(range(len(ids))) - set(idx.tolist()))
    if missing:
        raise StoreError(f"{len(missing)} {what} have no encoded text (first: {vocab[missing[0]][1]!r}); "
                         "run `pipeline build-attributes --states ... --objects ...` with this store's model.")
    return idx


def pair_texts(cat: Catalog, pair_style: str, pairs: list[dict]) -> PairTexts:
    """The texts of the candidate ``pairs`` (from :func:`tables.czsl_pair_rows`): ``pair_style``
    ``prompts`` (the "a photo of a {c}." class prompts and prompt-style state/object texts) or
    ``descriptors``."""
    fp = cat.model
    states, objects = tables.czsl_vocab(cat, "state"), tables.czsl_vocab(cat, "object")
    s_pos = {v: i for i, (v, _) in enumerate(states)}
    o_pos = {v: i for i, (v, _) in enumerate(objects)}
    class_ids = np.array([p["class_id"] for p in pairs], np.int64)
    desc = {}
    if pair_style == "prompts":
        pm, role = tables.class_prompt_matrix(cat, fp, PHOTO_PROMPTS), None
        keep = np.isin(pm.class_ids, class_ids)
        pm = tables.TextMatrix(pm.ids[keep], pm.class_ids[keep], pm.embeddings[keep])
        style = PHOTO_PROMPTS
        desc["pair"] = f"class prompts {PHOTO_PROMPTS} ({PAIR_TEMPLATE})"
    else:
        am = tables.attribute_matrix(cat, fp, "descriptors")
        keep = np.isin(am.class_ids, class_ids)
        pm = tables.TextMatrix(am.ids[keep], am.class_ids[keep], am.embeddings[keep])
        roles = tables.attribute_roles(cat)
        role = np.array([ROLE_CODES[roles.get(int(a), "pair")] for a in pm.ids], np.int64)
        style = "descriptors"
        desc["pair"] = "descriptors"
    missing = np.setdiff1d(class_ids, pm.class_ids)
    if len(missing):
        raise StoreError(f"{len(missing)} pairs have no encoded {desc['pair']}; run `pipeline build-attributes "
                         "--states ... --objects ...` (or `pipeline classify --method clip` once) with this store's model.")
    sm = tables.czsl_text_matrix(cat, fp, "state", style)
    om = tables.czsl_text_matrix(cat, fp, "object", style)
    desc["state"], desc["object"] = f"state {style}", f"object {style}"
    return PairTexts(
        class_ids=class_ids,
        pair_state=np.array([s_pos[p["state_id"]] for p in pairs], np.int64),
        pair_object=np.array([o_pos[p["object_id"]] for p in pairs], np.int64),
        seen=np.array([bool(p["seen"]) for p in pairs]),
        pair=pm, pair_index=np.searchsorted(class_ids, pm.class_ids), pair_role=role,
        state=sm, state_index=_vocab_index(sm, states, "states"),
        object=om, object_index=_vocab_index(om, objects, "objects"),
        describe={"kind": f"compositional {style}", "n_texts": len(pm) + len(sm) + len(om), **desc,
                  "n_states": len(states), "n_objects": len(objects)},
    )


def model_logit_scale(model) -> float | None:
    """exp(logit_scale) of a loaded open_clip model (100 for OpenAI CLIP), or None."""
    try:
        return float(model.model.logit_scale.detach().exp())
    except AttributeError:
        return None


def classify_compositional(cat: Catalog, method: str, config: MethodConfig = MethodConfig(), *, pair_style: str,
                           local: bool, model=None, image_ids: list[int] | None = None,
                           provenance: dict | None = None, progress: bool = True):
    """Score every indexed image against the store's pairs with a czsl-* method; store one run.

    Candidates: the closed-world pairs, or every stored pair with ``config.open_world``, minus
    the pairs the feasibility filter removes (``config.feasibility_threshold`` > -1, open
    world only; the seen pairs are always kept). Every candidate is stored in ``predictions``
    (ranked by the combined score), with its branch scores in ``pair_scores``. ``pair_style``:
    the style of :func:`pair_texts`; ``local``: the pair branch is LaZSL over the crops (its
    plans go to ``alignments``, the regions that carried state and object to ``pair_regions``)."""
    from tqdm import tqdm

    from .classify import ClassifyReport

    fp = cat.model
    if fp is None:
        raise StoreError(f"Store {cat.root} is empty; run build-attributes and index-images first.")
    t0 = time.perf_counter()
    pairs = tables.czsl_pair_rows(cat)
    if not pairs:
        raise StoreError(f"--method {method} needs (state, object) pairs; store them with "
                         "`pipeline build-attributes --states FILE --objects FILE` (or --pairs FILE).")
    notes = []
    cand = [p for p in pairs if config.open_world or not p["open_only"]]
    if config.open_world and len(cand) == sum(not p["open_only"] for p in pairs):
        notes.append("open world = closed world here: the store has no open-world-only pairs "
                     "(build-attributes --open-world stores the rest of states x objects)")
    texts = pair_texts(cat, pair_style, cand)
    scale = config.logit_scale or model_logit_scale(model)
    if not scale:
        scale = 100.0
        notes.append("logit scale 100 (the model was not loaded; pass --logit-scale to set it)")
    run_id = tables.next_run_id(cat)
    feas = None
    if config.open_world and config.feasibility_threshold > -1.0:
        feas = _feasibility(cat, cand, config.feasibility_threshold)
        keep = np.asarray(feas.feasible)
        cand = [p for p, k in zip(cand, keep) if k]
        texts = pair_texts(cat, pair_style, cand)
    params = {"method": method, "config": config.to_dict(), **(provenance or {}), "model": fp,
              "texts": texts.describe, "n_classes": len(cand), "logit_scale": scale,
              "world": "open" if config.open_world else "closed", "index_runs": tables.index_run_params(cat),
              "weight_source": "pair_plan" if local else None, "notes": notes}
    if feas is not None:
        params["feasibility"] = {"threshold": config.feasibility_threshold, "removed": int(len(feas.removed))}
    report = ClassifyReport(run_id=run_id, method=method, params=params, notes=notes)
    n_total = tables.image_count(cat) if image_ids is None else len(image_ids)
    bar = tqdm(total=n_total, desc=f"classify {method}", unit="img", disable=not progress)
    with cat.transaction():
        tables.insert_run(cat, tables.RunRecord(run_id, method, params, fp))
        if feas is not None:
            tables.insert_pair_feasibility(cat, {
                "run_id": np.full(len(feas.score), run_id, np.int64),
                "class_id": np.array([p["class_id"] for p in feas.pairs], np.int64),
                "score": np.asarray(feas.score, np.float64), "state_sim": np.asarray(feas.state_sim, np.float64),
                "object_sim": np.asarray(feas.object_sim, np.float64), "removed": ~np.asarray(feas.feasible),
            })
        for batch in tables.iter_region_batches(cat, image_ids):
            if local and batch.regions.shape[1] == 0:
                raise StoreError(f"{method} needs regions besides the full view; index images with --regions crops|grid|patches.")
            res = compositional_scores(
                batch.full, batch.regions, texts.pair.embeddings, texts.pair_index, texts.state.embeddings,
                texts.state_index, texts.object.embeddings, texts.object_index, texts.pair_state, texts.pair_object,
                pair_attr_role=texts.pair_role if local else None, local=local, logit_scale=scale,
                pair_weight=config.pair_weight, state_weight=config.state_weight, object_weight=config.object_weight,
                theta=config.theta, eps=config.eps, gamma=config.gamma, max_iter=config.max_iter, tol=config.tol,
            )
            rows = ResultRows()  # predictions and alignments through the typed writers
            _write_batch(cat, rows, run_id, batch, texts, res, scale, config, local)
            write_results(cat, rows)
            report.images += len(batch.image_ids)
            bar.update(len(batch.image_ids))
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _softmax(x: np.ndarray, scale: float) -> np.ndarray:
    z = scale * x
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _write_batch(cat, rows: ResultRows, run_id, batch, texts: PairTexts, res, scale, config, local):
    b, p = res.scores.shape
    class_ids = np.broadcast_to(texts.class_ids, (b, p))
    rows.predictions(run_id, batch.image_ids, class_ids, res.scores)
    ps, po = texts.pair_state, texts.pair_object
    tables.insert_pair_scores(cat, {
        "run_id": np.full(b * p, run_id, np.int64), "image_id": np.repeat(batch.image_ids, p).astype(np.int64),
        "class_id": np.tile(texts.class_ids, b),
        "pair_score": res.pair_scores.reshape(-1).astype(np.float64),
        "state_score": res.state_scores[:, ps].reshape(-1).astype(np.float64),
        "object_score": res.object_scores[:, po].reshape(-1).astype(np.float64),
        "state_prob": _softmax(res.state_scores, scale)[:, ps].reshape(-1).astype(np.float64),
        "object_prob": _softmax(res.object_scores, scale)[:, po].reshape(-1).astype(np.float64),
    })
    if not local:
        return
    lz = res.pair_lazsl
    rows.alignments(run_id, batch.image_ids, class_ids, batch.region_ids[:, 1:], lz.plan, lz.fused,
                    text_ids(texts.pair.ids, lz.attr_index), res.scores, config.alignments_top)
    ws, wo = np.asarray(res.state_region_weight), np.asarray(res.object_region_weight)
    bi, mi = np.nonzero((ws > 0) | (wo > 0))
    tables.insert_pair_regions(cat, {
        "run_id": np.full(len(bi), run_id, np.int64), "image_id": batch.image_ids[bi].astype(np.int64),
        "class_id": texts.class_ids[np.asarray(res.explained)[bi]].astype(np.int64),
        "region_id": batch.region_ids[:, 1:][bi, mi].astype(np.int64),
        "state_weight": ws[bi, mi].astype(np.float64), "object_weight": wo[bi, mi].astype(np.float64),
    })


def _feasibility(cat: Catalog, pairs: list[dict], threshold: float):
    """queries.compositional.feasibility on the name prompts of the pairs, states and objects
    (one each); ``.pairs`` is set to ``pairs``."""
    t = pair_texts(cat, "prompts", pairs)

    def one_each(matrix, index, n):
        emb = np.zeros((n, matrix.embeddings.shape[1]), np.float32)
        emb[index] = matrix.embeddings
        return emb

    f = feasibility(one_each(t.pair, t.pair_index, len(pairs)), one_each(t.state, t.state_index, t.describe["n_states"]),
                    one_each(t.object, t.object_index, t.describe["n_objects"]), t.pair_state, t.pair_object,
                    threshold=threshold, keep=t.seen)
    f.pairs = pairs
    return f


# ---- evaluate -------------------------------------------------------------------------------
def czsl_evaluation(cat: Catalog, run_id: int) -> dict | None:
    """CZSL metrics of a run on a store whose pairs are marked seen/unseen, else None.

    The score matrix is images x every stored pair, from the run's stored scores; a pair the
    run did not score for an image (not a candidate: open-world-only in a closed-world run,
    removed by the feasibility filter, cut by a shortlist) counts as never predicted (-1e10,
    as upstream masks pairs). ``complete`` is False when some image lacks a pair that other
    images have (a shortlist). Closed world: the pairs that are not open-world-only; open world:
    every pair, reported when the run scored open-world-only pairs. Only images labelled with
    a closed-world pair count. Metrics: :func:`queries.compositional.czsl_metrics` (top-1,
    image-averaged)."""
    pairs = tables.czsl_pair_rows(cat)
    if not pairs or all(p["seen"] is None for p in pairs):
        return None
    image_ids, labels, run_classes, run_scores = tables.score_matrix(cat, run_id)
    pair_ids = np.array([p["class_id"] for p in pairs], np.int64)
    in_run = np.isin(pair_ids, run_classes)
    if not in_run.any():
        return None
    scores = np.full((len(image_ids), len(pair_ids)), np.nan)
    have = np.isin(run_classes, pair_ids)
    scores[:, np.searchsorted(pair_ids, run_classes[have])] = run_scores[:, have]
    col = {p["norm_name"]: i for i, p in enumerate(pairs) if not p["open_only"]}
    rows, y, skipped = [], [], 0
    for i, label in enumerate(labels):
        j = col.get(norm_class_name(label)) if label else None
        if j is None:
            skipped += label is not None
            continue
        rows.append(i)
        y.append(j)
    if not rows:
        return None
    s = scores[rows]
    complete = not np.isnan(s[:, in_run]).any()
    s = np.where(np.isnan(s), -1e10, s)
    y = np.array(y)
    seen = np.array([bool(p["seen"]) for p in pairs])
    open_only = np.array([bool(p["open_only"]) for p in pairs])
    states = {n: i for i, n in enumerate(dict.fromkeys(p["state"] for p in pairs))}
    objects = {n: i for i, n in enumerate(dict.fromkeys(p["object"] for p in pairs))}
    ps = np.array([states[p["state"]] for p in pairs])
    po = np.array([objects[p["object"]] for p in pairs])
    closed = czsl_metrics(s, y, seen, closed_mask=~open_only, pair_state=ps, pair_object=po)
    scored_open = (open_only & in_run).any()
    return {"closed": closed, "open": czsl_metrics(s, y, seen, pair_state=ps, pair_object=po) if scored_open else None,
            "complete": complete, "skipped_images": skipped,
            "n_seen_pairs": int((seen & ~open_only).sum()), "n_unseen_pairs": int((~seen & ~open_only).sum()),
            "n_open_only_pairs": int(open_only.sum())}


CZSL_COLUMNS = ("closed_seen", "closed_unseen", "closed_hm", "closed_auc", "open_seen", "open_unseen", "open_hm",
                "open_auc", "closed_hm_bias", "state_acc", "object_acc", "seen_images", "unseen_images", "czsl_complete")


def czsl_columns(ev: dict | None) -> dict:
    """The flat figures ``evaluate`` prints and writes (accuracies in [0, 1])."""
    if ev is None:
        return {}
    c, o = ev["closed"], ev["open"]
    nan = float("nan")
    return {
        "closed_seen": c.best_seen, "closed_unseen": c.best_unseen, "closed_hm": c.best_hm, "closed_auc": c.auc,
        "open_seen": o.best_seen if o else nan, "open_unseen": o.best_unseen if o else nan,
        "open_hm": o.best_hm if o else nan, "open_auc": o.auc if o else nan,
        "closed_hm_bias": c.hm_bias, "state_acc": c.state_acc, "object_acc": c.object_acc,
        "seen_images": c.n_seen_images, "unseen_images": c.n_unseen_images, "czsl_complete": ev["complete"],
    }


def format_czsl_table(evals) -> list[str]:
    """The CZSL block under evaluate's table (only runs with CZSL figures)."""
    rows = [(ev, ev.metrics) for ev in evals if "closed_hm" in ev.metrics]
    if not rows:
        return []
    m0 = rows[0][1]
    pct = lambda v: "     -" if v is None or v != v else f"{100 * v:6.2f}"  # noqa: E731
    head = (f"{'method':12s} {'run':>4s} | {'closed:':7s} {'seen':>6s} {'unseen':>6s} {'HM':>6s} {'AUC':>6s} | "
            f"{'open:':5s} {'seen':>6s} {'unseen':>6s} {'HM':>6s} {'AUC':>6s} | {'state':>6s} {'object':>6s}")
    lines = ["", f"CZSL ({m0['seen_images']} seen and {m0['unseen_images']} unseen images; best accuracy over the "
             "calibration-bias sweep, area under the seen-unseen curve; % ; docs/compositional.md)", head, "-" * len(head)]
    notes = []
    for ev, m in rows:
        lines.append(f"{ev.method:12s} {ev.run_id:>4d} | {'':7s} {pct(m['closed_seen'])} {pct(m['closed_unseen'])} "
                     f"{pct(m['closed_hm'])} {pct(m['closed_auc'])} | {'':5s} {pct(m['open_seen'])} "
                     f"{pct(m['open_unseen'])} {pct(m['open_hm'])} {pct(m['open_auc'])} | {pct(m['state_acc'])} "
                     f"{pct(m['object_acc'])}")
        if not m["czsl_complete"]:
            notes.append(f"{ev.method} (run {ev.run_id}): not every pair was scored for every image (a shortlist?); "
                         "unscored pairs count as never predicted (--top-k 0 scores all)")
    return lines + notes


# ---- explain --------------------------------------------------------------------------------
def pair_explanation(cat: Catalog, run: tables.RunRecord, image_id: int, class_id: int) -> dict | None:
    """What ``explain`` shows for a pair: its state and object, the branch split of its score,
    and (czsl-local) which regions carried its state and its object."""
    pair = tables.czsl_pair(cat, class_id)
    if pair is None:
        return None
    out = dict(pair, branches=None, region_ids=np.zeros(0, np.int64), state_weight=np.zeros(0),
               object_weight=np.zeros(0))
    sc = tables.pair_score(cat, run.run_id, image_id, class_id)  # only compositional runs store pair scores
    if sc is not None:
        cfg = run.params.get("config", {})
        out["branches"] = dict(sc, logit_scale=run.params.get("logit_scale"), pair_weight=cfg.get("pair_weight", 1.0),
                               state_weight=cfg.get("state_weight", 1.0), object_weight=cfg.get("object_weight", 1.0))
    explained, rid, ws, wo = tables.pair_region_weights(cat, run.run_id, image_id)
    if explained == class_id:
        out.update(region_ids=rid, state_weight=ws, object_weight=wo)
    return out
