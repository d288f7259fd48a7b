"""Zero-shot class scores of the baselines: CLIP, CLIP-E, DCLIP, CuPL and WCA (pure array functions).

All inputs are L2-normalised embeddings (numpy or torch; float32 is used for the
arithmetic); outputs are the same kind as the inputs. Each function follows the
reference code path summarised in ``shared/spec/methods-reference.md``:

* :func:`clip_scores`: cosine to one text embedding per class (template ensembles are
  built beforehand with :func:`class_text_from_templates`).
* :func:`dclip_scores`: DCLIP, the **mean of cosines** over a class's descriptors
  (``main.py:56-59``), not the cosine to the mean descriptor.
* :func:`cupl_scores`: CuPL, cosine to ``normalize(mean_j normalize(sentence_j))``.
* :func:`wca_scores`: WCA (``main.py:151-164``, ``helper.py:337-349``).

Attribute/sentence sets are passed flat: ``attr (A, D)`` with ``attr_class (A,)`` giving
each row's class index in ``[0, C)``. LaZSL lives in :mod:`queries.lazsl`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from queries._arrays import any_torch, as_float, as_index, check_dims, class_counts, l2_normalize, out, pick_device, segment_mean
from queries.result import ScoreResult

__all__ = [
    "WcaResult",
    "class_text_from_templates",
    "clip_scores",
    "cupl_class_text",
    "cupl_scores",
    "dclip_scores",
    "wca_class_text",
    "wca_scores",
]


# --------------------------------------------------------------------------- CLIP


def clip_scores(image, class_text):
    """Cosine scores ``image @ class_text.T``: (B, D), (C, D) -> (B, C)."""
    as_torch = any_torch(image, class_text)
    dev = pick_device(image, class_text)
    x = as_float(image, dev, torch.float32)
    t = as_float(class_text, dev, torch.float32)
    check_dims(image=x, class_text=t)
    return out(x @ t.T, as_torch)


def class_text_from_templates(emb, n_templates: int | None = None):
    """Template ensemble: ``normalize(mean_t normalize(emb[c, t]))`` per class.

    ``emb`` is (C, T, D), or (C*T, D) class-major (row ``c*T + t``) with ``n_templates=T``.
    Returns (C, D).
    """
    as_torch = any_torch(emb)
    e = as_float(emb, pick_device(emb), torch.float32)
    if e.ndim == 2:
        if not n_templates or e.shape[0] % n_templates:
            raise ValueError("a 2-D emb needs n_templates dividing its number of rows")
        e = e.reshape(e.shape[0] // n_templates, n_templates, e.shape[1])
    elif e.ndim != 3:
        raise ValueError(f"emb must be (C, T, D) or (C*T, D), got shape {tuple(e.shape)}")
    return out(l2_normalize(l2_normalize(e).mean(1)), as_torch)


# --------------------------------------------------------------------------- DCLIP / CuPL


def dclip_scores(image, attr, attr_class, n_classes: int):
    """DCLIP: ``score[b, c] = mean_{a in class c} cos(image_b, attr_a)``.

    image (B, D), attr (A, D), attr_class (A,) ints in [0, n_classes). Every class needs
    at least one descriptor (ValueError otherwise). Returns (B, n_classes).
    """
    as_torch = any_torch(image, attr, attr_class)
    dev = pick_device(image, attr, attr_class)
    x = as_float(image, dev, torch.float32)
    t = as_float(attr, dev, torch.float32)
    cls = as_index(attr_class, dev)
    check_dims(image=x, attr=t)
    counts = class_counts(cls, n_classes, "descriptors")
    return out(segment_mean(x @ t.T, cls, counts), as_torch)


def cupl_class_text(sent, sent_class, n_classes: int):
    """CuPL class weights ``normalize(mean_j normalize(sent_j))``: -> (n_classes, D)."""
    as_torch = any_torch(sent, sent_class)
    dev = pick_device(sent, sent_class)
    y = l2_normalize(as_float(sent, dev, torch.float32))
    cls = as_index(sent_class, dev)
    counts = class_counts(cls, n_classes, "sentences")
    mean = segment_mean(y.T, cls, counts).T  # (C, D)
    return out(l2_normalize(mean), as_torch)


def cupl_scores(image, sent, sent_class, n_classes: int):
    """CuPL: cosine of each image to each class's mean sentence embedding -> (B, C)."""
    as_torch = any_torch(image, sent, sent_class)
    dev = pick_device(image, sent, sent_class)
    x = as_float(image, dev, torch.float32)
    w = cupl_class_text(as_float(sent, dev, torch.float32), as_index(sent_class, dev), n_classes)
    check_dims(image=x, sent=w)
    return out(x @ w.T, as_torch)


# --------------------------------------------------------------------------- WCA


@dataclass
class WcaResult(ScoreResult):
    """WCA scores (:class:`queries.result.ScoreResult`): ``scores`` (B, C) mean over the
    ``n_runs`` crop samples, ``std`` (B, C)
    their population standard deviation (ddof=0, like the reference's ``np.std``), and
    ``run_top1`` (B, n_runs) the best class index of each sample on its own: upstream reports
    the mean ± std of the per-run accuracies, which these give (the mean score's accuracy is
    an ensemble's, a different number)."""

    std: Any = None
    run_top1: Any = None


def wca_class_text(sent, sent_class, photo_text, *, text_scale: float = math.e**2, normalize: bool = True):
    """WCA text side: ``sum_j v_j y_j`` with ``v = softmax_j(text_scale * cos(y_j, p_c))``.

    sent (A, D) CuPL sentence embeddings, sent_class (A,), photo_text (C, D) embeddings of
    ``"a photo of a {c}."``. The softmax runs over each class's own sentences. Returns
    (C, D), L2-normalised (``t_c`` of the code) unless ``normalize=False`` (``s_c`` of the
    paper's formula).
    """
    as_torch = any_torch(sent, sent_class, photo_text)
    dev = pick_device(sent, sent_class, photo_text)
    y = as_float(sent, dev, torch.float32)
    p = as_float(photo_text, dev, torch.float32)
    cls = as_index(sent_class, dev)
    C = p.shape[0]
    class_counts(cls, C, "sentences")
    logit = text_scale * (y * p[cls]).sum(1)  # (A,)
    cmax = torch.full((C,), float("-inf"), device=dev).scatter_reduce(0, cls, logit, "amax")
    e = torch.exp(logit - cmax[cls])
    v = e / torch.zeros(C, device=dev).index_add_(0, cls, e)[cls]
    s = torch.zeros_like(p).index_add_(0, cls, v.unsqueeze(1) * y)
    return out(l2_normalize(s) if normalize else s, as_torch)


def wca_scores(
    full,
    crops,
    sent,
    sent_class,
    photo_text,
    *,
    image_scale: float = math.e**4,
    text_scale: float = math.e**2,
    patch_n: int = 60,
    n_runs: int = 20,
    seed: int = 0,
    score: str = "code",
) -> WcaResult:
    """WCA (Li et al., ICML 2024), scored as the released code does.

    Per run, ``patch_n`` crop indices are drawn **with replacement** from the M crops (one
    draw shared by every image, as ``torch.randint`` in ``main.py``; the full image is not
    a candidate, it only sets the weights). Crop weights are
    ``w = softmax_i(image_scale * cos(x_i, full))`` over the drawn crops (a crop drawn twice
    counts twice); text weights are those of :func:`wca_class_text`.

    * ``score="code"``: ``cos(normalize(sum_i w_i x_i), normalize(sum_j v_j y_j))``.
    * ``score="paper"``: ``sum_ij w_i v_j cos(x_i, y_j)``, which is the code's score times
      ``||sum_i w_i x_i|| * ||sum_j v_j y_j||``; the class-dependent norm can change the
      ranking.

    Parameters: full (B, D), crops (B, M, D), sent (A, D), sent_class (A,), photo_text
    (C, D). The draw uses ``numpy.random.default_rng(seed)``: same seed, same result, and
    an image's scores do not depend on the other images in the batch.

    Returns :class:`WcaResult` with ``scores`` and ``std`` over runs, both (B, C).
    """
    if score not in ("code", "paper"):
        raise ValueError(f"score must be 'code' or 'paper', got {score!r}")
    as_torch = any_torch(full, crops, sent, sent_class, photo_text)
    dev = pick_device(full, crops, sent, sent_class, photo_text)
    f = as_float(full, dev, torch.float32)
    x = as_float(crops, dev, torch.float32)
    B, M, D = x.shape
    check_dims(full=f, crops=x, sent=as_float(sent, dev), photo_text=as_float(photo_text, dev))
    t = wca_class_text(
        as_float(sent, dev, torch.float32),
        as_index(sent_class, dev),
        as_float(photo_text, dev, torch.float32),
        text_scale=text_scale,
        normalize=(score == "code"),
    )
    idx = np.random.default_rng(seed).integers(0, M, size=(n_runs, patch_n))
    idx_t = torch.as_tensor(idx, device=dev)
    w_raw = torch.einsum("bmd,bd->bm", x, f)  # (B, M) cos(crop, full)
    w = torch.softmax(image_scale * w_raw[:, idx_t], dim=-1)  # (B, R, patch_n)
    # sum_i w_i x_{idx_i} = sum_m (sum_{i: idx_i = m} w_i) x_m: accumulate the weights
    # per crop, then one (R, M) x (M, D) product per image.
    W = torch.zeros((B, n_runs, M), device=dev).scatter_add_(2, idx_t.expand(B, -1, -1), w)
    u = torch.bmm(W, x)  # (B, R, D)
    if score == "code":
        u = l2_normalize(u)
    s = u @ t.T  # (B, R, C)
    std, mean = torch.std_mean(s, dim=1, correction=0)
    return WcaResult(scores=out(mean, as_torch), std=out(std, as_torch), run_top1=out(s.argmax(2), as_torch))
