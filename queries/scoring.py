"""Zero-shot class scores for CLIP, DCLIP, CuPL, WCA and LaZSL (pure array functions).

All inputs are L2-normalised embeddings (numpy or torch; float32 is used for the
arithmetic); outputs are the same kind as the inputs. Each function follows the
reference code path summarised in ``shared/spec/methods-reference.md``:

* :func:`clip_scores`: cosine to one text embedding per class (template ensembles are
  built beforehand with :func:`class_text_from_templates`).
* :func:`dclip_scores`: DCLIP, the **mean of cosines** over a class's descriptors
  (``main.py:56-59``), not the cosine to the mean descriptor.
* :func:`cupl_scores`: CuPL, cosine to ``normalize(mean_j normalize(sentence_j))``.
* :func:`wca_scores`: WCA (``main.py:151-164``, ``helper.py:337-349``).
* :func:`lazsl_scores`: LaZSL (``OP.py`` ``OP_d.get_OP_distence`` with
  ``is_cost_global=is_sim_global=True``), batched over every (image, candidate class)
  pair, with the per-pair Sinkhorn stopping rule of :mod:`queries.transport`.

Attribute/sentence sets are passed flat: ``attr (A, D)`` with ``attr_class (A,)`` giving
each row's class index in ``[0, C)``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from queries._arrays import any_torch, as_float, as_index, out, pick_device
from queries.transport import PLAIN_MAX_SCALE, _solve_plain, _solve_transposed

__all__ = [
    "LAZSL_PRESETS",
    "LazslResult",
    "WcaResult",
    "class_text_from_templates",
    "clip_scores",
    "cupl_class_text",
    "cupl_scores",
    "dclip_scores",
    "lazsl_scores",
    "wca_class_text",
    "wca_scores",
]

# LaZSL per-dataset hyperparameters: upstream ``get_params`` (load_OP.py @77c613c, fork
# HongyouZhou/LaZSL), spec section 4. crop_min = alpha_crop (crop side ~ U(crop_min, 0.9)
# * min(H, W)), theta = weight of the local (crop) similarity, n_crops = N crops besides
# the full image. eps = 0.1 and gamma = 0 are fixed in the reference code.
_LAZSL_TABLE = {
    # dataset: {backbone: (crop_min, theta, n_crops)}
    "imagenet": {"b32": (0.6, 0.8, 90), "b16": (0.6, 0.8, 90), "l14": (0.6, 0.8, 70)},
    "cub": {"b32": (0.5, 0.95, 80), "b16": (0.6, 0.9, 90), "l14": (0.5, 0.9, 80)},
    "pets": {"b32": (0.6, 0.9, 80), "b16": (0.6, 0.2, 80), "l14": (0.6, 0.8, 60)},
    "food101": {"b32": (0.6, 0.9, 80), "b16": (0.6, 0.8, 90), "l14": (0.6, 0.9, 70)},
    "places365": {"b32": (0.6, 0.9, 80), "b16": (0.4, 0.8, 60), "l14": (0.4, 0.9, 70)},
    "imagenet-v2": {"b16": (0.5, 0.8, 70)},
    "imagenet-r": {"b16": (0.6, 0.8, 90)},
    "imagenet-a": {"b16": (0.5, 0.95, 90)},
    "imagenet-s": {"b16": (0.6, 0.8, 80)},
}

#: ``"{dataset}-{backbone}" -> dict(crop_min, theta, n_crops)``, e.g. ``"imagenet-b32"``,
#: ``"cub-b16"``, ``"imagenet-r-b16"`` (backbones b32 = ViT-B/32, b16 = ViT-B/16,
#: l14 = ViT-L/14). Note pets-b16 has theta = 0.2 upstream (not a typo here).
LAZSL_PRESETS: dict[str, dict] = {
    f"{ds}-{bb}": dict(crop_min=v[0], theta=v[1], n_crops=v[2])
    for ds, per in _LAZSL_TABLE.items()
    for bb, v in per.items()
}


# --------------------------------------------------------------------------- helpers


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _class_counts(cls: torch.Tensor, n_classes: int, what: str) -> torch.Tensor:
    if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= n_classes):
        raise ValueError(f"{what} class indices must lie in [0, {n_classes})")
    counts = torch.bincount(cls, minlength=n_classes)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{empty.numel()} class(es) have no {what} (first: {empty[:5].tolist()}); "
            f"every scored class needs at least one (DCLIP turns an empty list into [''] "
            "upstream: do that before embedding)"
        )
    return counts


def _segment_mean(values: torch.Tensor, cls: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[..., a]`` over rows a of each class: (..., A) -> (..., C)."""
    shape = values.shape[:-1] + (counts.numel(),)
    acc = torch.zeros(shape, dtype=values.dtype, device=values.device)
    acc.index_add_(values.ndim - 1, cls, values)
    return acc / counts.to(values.dtype)


def _check_dims(**arrays: torch.Tensor) -> int:
    dims = {k: v.shape[-1] for k, v in arrays.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"embedding dimensions differ: {dims}")
    return next(iter(dims.values()))


# --------------------------------------------------------------------------- CLIP


def clip_scores(image, class_text):
    """Cosine scores ``image @ class_text.T``: (B, D), (C, D) -> (B, C)."""
    as_torch = any_torch(image, class_text)
    dev = pick_device(image, class_text)
    x = as_float(image, dev, torch.float32)
    t = as_float(class_text, dev, torch.float32)
    _check_dims(image=x, class_text=t)
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
    return out(_normalize(_normalize(e).mean(1)), as_torch)


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
    _check_dims(image=x, attr=t)
    counts = _class_counts(cls, n_classes, "descriptors")
    return out(_segment_mean(x @ t.T, cls, counts), as_torch)


def cupl_class_text(sent, sent_class, n_classes: int):
    """CuPL class weights ``normalize(mean_j normalize(sent_j))``: -> (n_classes, D)."""
    as_torch = any_torch(sent, sent_class)
    dev = pick_device(sent, sent_class)
    y = _normalize(as_float(sent, dev, torch.float32))
    cls = as_index(sent_class, dev)
    counts = _class_counts(cls, n_classes, "sentences")
    mean = _segment_mean(y.T, cls, counts).T  # (C, D)
    return out(_normalize(mean), as_torch)


def cupl_scores(image, sent, sent_class, n_classes: int):
    """CuPL: cosine of each image to each class's mean sentence embedding -> (B, C)."""
    as_torch = any_torch(image, sent, sent_class)
    dev = pick_device(image, sent, sent_class)
    x = as_float(image, dev, torch.float32)
    w = cupl_class_text(as_float(sent, dev, torch.float32), as_index(sent_class, dev), n_classes)
    _check_dims(image=x, sent=w)
    return out(x @ w.T, as_torch)


# --------------------------------------------------------------------------- WCA


@dataclass
class WcaResult:
    """WCA scores: ``scores`` (B, C) mean over the ``n_runs`` crop samples, ``std`` (B, C)
    their population standard deviation (ddof=0, like the reference's ``np.std``)."""

    scores: Any
    std: Any


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
    _class_counts(cls, C, "sentences")
    logit = text_scale * (y * p[cls]).sum(1)  # (A,)
    cmax = torch.full((C,), float("-inf"), device=dev).scatter_reduce(0, cls, logit, "amax")
    e = torch.exp(logit - cmax[cls])
    v = e / torch.zeros(C, device=dev).index_add_(0, cls, e)[cls]
    s = torch.zeros_like(p).index_add_(0, cls, v.unsqueeze(1) * y)
    return out(_normalize(s) if normalize else s, as_torch)


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
    _check_dims(full=f, crops=x, sent=as_float(sent, dev), photo_text=as_float(photo_text, dev))
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
        u = _normalize(u)
    s = u @ t.T  # (B, R, C)
    std, mean = torch.std_mean(s, dim=1, correction=0)
    return WcaResult(scores=out(mean, as_torch), std=out(std, as_torch))


# --------------------------------------------------------------------------- LaZSL


@dataclass
class LazslResult:
    """LaZSL scores for each (image, candidate class) pair.

    Attributes
    ----------
    scores : (B, K) float32
        ``sum_mn T_mn F_mn`` with ``F = (1-theta) g + theta S``: the LaZSL class score.
    global_scores : (B, K)
        ``mean_n g_n``, the DCLIP score of the full image (``g_n = cos(full, attr_n)``).
    local_scores : (B, K)
        ``sum_mn T_mn S_mn`` (``S_mn = cos(crop_m, attr_n)``). Because the last Sinkhorn
        step makes the column sums exactly ``1/N_c``,
        ``scores = (1-theta) * global_scores + theta * local_scores``.
    plan : (B, K, M, n_max) float32 or None
        Transport plans, crops x the class's attributes (padded columns are 0).
    attr_index : (B, K, n_max) int64
        Row of ``attr`` for each plan column, -1 for padding.
    crop_mass : (B, M) float32
        Crop marginal: 0 for crops less similar to the full image than the mean (+gamma),
        uniform over the rest.
    n_iter : (B, K) int64
        Sinkhorn iterations per pair.
    """

    scores: Any
    global_scores: Any
    local_scores: Any
    plan: Any
    attr_index: Any
    crop_mass: Any
    n_iter: Any


def lazsl_scores(
    full,
    crops,
    attr,
    attr_class,
    candidates=None,
    *,
    theta: float = 0.8,
    eps: float = 0.1,
    gamma: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-2,
    return_plan: bool = True,
    chunk_elements: int = 1 << 22,
) -> LazslResult:
    """LaZSL (Chen et al., ICCV 2025) scores of each image against candidate classes.

    For image b and class c with descriptors d_1..d_N:

    * ``S[m, n] = cos(crop_m, d_n)``, ``g[n] = cos(full, d_n)``,
      ``F = (1 - theta) g + theta S``, cost ``1 - F``, kernel ``exp(-(1 - F) / eps)``;
    * crop marginal: crops with ``cos(crop, full) < mean_m cos(crop_m, full) + gamma`` get
      mass 0, the others ``1 / K_kept``; descriptor marginal ``1 / N``;
    * Sinkhorn as in :func:`queries.transport.sinkhorn_batch` (per-pair stopping);
    * ``score = sum_mn T_mn F_mn``.

    Parameters
    ----------
    full : (B, D)
        Full-image embeddings.
    crops : (B, M, D)
        Crop embeddings (the full image excluded).
    attr : (A, D)
        Descriptor embeddings; attr_class (A,) their class indices.
    candidates : (B, K) int, optional
        Classes to score per image (e.g. from :func:`queries.shortlist.shortlist_candidates`);
        ``None`` scores every class ``0..C-1`` in order. Every candidate class needs at
        least one descriptor.
    theta, eps, gamma, max_iter, tol
        LaZSL's defaults (theta per dataset: :data:`LAZSL_PRESETS`).
    return_plan : bool
        ``False`` skips materialising the (B, K, M, n_max) plans (``plan=None``).
    chunk_elements : int
        Memory bound: images are processed in chunks of about this many similarity
        entries. Results do not depend on it.

    Returns
    -------
    LazslResult

    Notes
    -----
    Speed: similarities are computed once per image against the flat list of its
    candidates' descriptors (or, when the images of a chunk share most candidates, against
    their union, gathered once); pairs are then grouped by descriptor count so each OT
    problem has exactly its own size (no padding to the longest list inside the OT), and
    each group is solved in one batched Sinkhorn with per-pair stopping.

    Shortlists: because every pair stops on its own and the products are computed the same
    way in both layouts, a shortlisted class gets bit-for-bit the score, plan and
    iteration count it gets in a run over all classes (checked in the tests and the
    benchmark; with a BLAS that splits the D-reduction across threads, e.g. D=1024 on
    2 threads, the cosines can differ in the last bit, ~1e-7).

    The stopping test (as in the reference) is absolute in ``r``, whose size grows like
    ``exp(mean cost / eps)``; with a small ``eps`` and a small ``tol`` float32 cannot
    resolve it and pairs stop on rounding noise. The defaults (eps=0.1, tol=1e-2) are far
    from that regime.

    If ``gamma > 0`` leaves an image with no crop, all its crops are kept (with a warning).
    """
    as_torch = any_torch(full, crops, attr, attr_class, candidates)
    dev = pick_device(full, crops, attr, attr_class, candidates)
    f = as_float(full, dev, torch.float32)
    x = as_float(crops, dev, torch.float32)
    t = as_float(attr, dev, torch.float32)
    ac = as_index(attr_class, dev)
    if f.ndim != 2 or x.ndim != 3 or x.shape[0] != f.shape[0]:
        raise ValueError(f"expected full (B, D) and crops (B, M, D); got {tuple(f.shape)}, {tuple(x.shape)}")
    _check_dims(full=f, crops=x, attr=t)
    if ac.shape != (t.shape[0],):
        raise ValueError("attr_class must have one entry per attr row")
    B, M, D = x.shape
    n_cls = int(ac.max()) + 1 if ac.numel() else 0
    if candidates is None:
        cand = torch.arange(n_cls, device=dev).expand(B, -1).contiguous()
    else:
        cand = as_index(candidates, dev)
        if cand.ndim != 2 or cand.shape[0] != B:
            raise ValueError(f"candidates must be (B, K); got {tuple(cand.shape)}")
        if cand.numel() and int(cand.min()) < 0:
            raise ValueError("candidate class indices must be >= 0")
        n_cls = max(n_cls, int(cand.max()) + 1 if cand.numel() else 0)
    K = cand.shape[1]
    counts = torch.bincount(ac, minlength=n_cls)
    n_pair = counts[cand]  # (B, K) descriptors per pair
    if (n_pair == 0).any():
        bad = torch.unique(cand[n_pair == 0])[:5].tolist()
        raise ValueError(f"candidate classes without descriptors: {bad}")

    # Class -> its descriptor rows (in attr order), as CSR.
    order = torch.argsort(ac, stable=True)
    ptr = torch.zeros(n_cls + 1, dtype=torch.int64, device=dev)
    ptr[1:] = torch.cumsum(counts, 0)
    n_max = int(n_pair.max()) if n_pair.numel() else 0
    j = torch.arange(n_max, device=dev)
    start = ptr[cand].unsqueeze(-1) + j  # (B, K, n_max)
    valid = j < n_pair.unsqueeze(-1)
    attr_index = torch.where(valid, order[torch.where(valid, start, 0)], -1)

    # Crop marginal (OP.py l.107-113): drop crops below the mean crop-full similarity.
    sim_rg = torch.einsum("bmd,bd->bm", x, f)
    keep = ~(sim_rg < sim_rg.mean(1, keepdim=True) + gamma)
    n_keep = keep.sum(1)
    if (n_keep == 0).any():
        warnings.warn(
            f"lazsl_scores: gamma={gamma} removes every crop of {int((n_keep == 0).sum())} "
            "image(s); keeping all their crops",
            RuntimeWarning,
            stacklevel=2,
        )
        keep[n_keep == 0] = True
        n_keep = keep.sum(1)
    crop_mass = keep.to(torch.float32) / n_keep.unsqueeze(1).to(torch.float32)

    scores = torch.zeros((B, K), device=dev)
    glob = torch.zeros((B, K), device=dev)
    local = torch.zeros((B, K), device=dev)
    n_iter = torch.zeros((B, K), dtype=torch.int64, device=dev)
    plan = torch.zeros((B, K, M, n_max), device=dev) if return_plan else None

    # Cosines are in [-1, 1], so |log K| <= 2 / eps: below PLAIN_MAX_SCALE the plain kernel
    # is safe for every pair and the per-pair range check of method="auto" can be skipped.
    method = "sinkhorn" if 2.01 / eps <= PLAIN_MAX_SCALE[torch.float32] else "auto"
    per_image = max(1, int(n_pair.sum(1).max()) * (M + 1)) if B else 1
    step = max(1, chunk_elements // per_image)
    for s in range(0, B if K else 0, step):
        e = min(B, s + step)
        res = _lazsl_chunk(
            f[s:e], x[s:e], t, cand[s:e], n_pair[s:e], order, ptr, crop_mass[s:e],
            theta=theta, eps=eps, max_iter=max_iter, tol=tol, method=method,
            plan_out=plan[s:e].view((e - s) * K, M, n_max) if return_plan else None,
        )
        scores[s:e], glob[s:e], local[s:e], n_iter[s:e] = res
    return LazslResult(
        scores=out(scores, as_torch),
        global_scores=out(glob, as_torch),
        local_scores=out(local, as_torch),
        plan=out(plan, as_torch),
        attr_index=out(attr_index, as_torch),
        crop_mass=out(crop_mass, as_torch),
        n_iter=out(n_iter, as_torch),
    )


_MIN_ROWS = 16  # MKL computes matmuls with fewer rows differently (last-bit differences)


def _pad_rows(E: torch.Tensor) -> torch.Tensor:
    if E.shape[0] >= _MIN_ROWS:
        return E
    return torch.cat([E, E[:1].expand(_MIN_ROWS - E.shape[0], -1)])


def _lazsl_chunk(f, x, t, cand, n_pair, order, ptr, crop_mass, *, theta, eps, max_iter, tol, method, plan_out):
    """LaZSL for a chunk of images; see :func:`lazsl_scores`. Plans are written into
    ``plan_out`` (Bc*K, M, n_max, zero-initialised) when given."""
    dev = f.device
    Bc, M = x.shape[:2]
    K = cand.shape[1]
    P = Bc * K
    nflat = n_pair.reshape(-1)  # (P,) pair-major, image-major
    pend = torch.cumsum(nflat, 0)
    pstart = pend - nflat
    n_el = int(pend[-1])
    pid = torch.repeat_interleave(torch.arange(P, device=dev), nflat)  # (n_el,)
    jj = torch.arange(n_el, device=dev) - pstart[pid]
    aid = order[ptr[cand.reshape(-1)[pid]] + jj]  # descriptor row of each element
    img = pid // K

    # Similarities, computed once per (image, descriptor), flat (not padded per class).
    # The full image rides along as region 0, so g and S come out of the same product.
    # Both layouts below compute them with the same kind of product, one (rows, D) x
    # (D, 1+M) matmul per image with at least _MIN_ROWS rows, whose per-row results do not
    # depend on the number of rows (MKL; checked for D <= 768 with 1-2 threads, D = 1024
    # with 1 thread). That keeps a shortlisted pair's cosines, and hence its whole
    # result, bit-identical to a run over all classes.
    R = torch.cat([f.unsqueeze(1), x], 1)  # (Bc, 1+M, D)
    L_max = int(n_pair.sum(1).max())
    uniq, inv = torch.unique(aid, return_inverse=True)
    if uniq.numel() <= 1.5 * L_max:
        # The images share (almost) all candidates, e.g. a run over all classes: gather the
        # union once and multiply every image by it.
        E = _pad_rows(t[uniq])
        U = E.shape[0]
        ST = torch.empty((Bc, U, M + 1), device=dev)
        for b in range(Bc):
            torch.mm(E, R[b].T, out=ST[b])
        ST = ST.reshape(Bc * U, M + 1)
        row = img * U + inv
    else:
        # Different shortlists: each image against its own flat descriptor list, one image
        # at a time so the gathered descriptors stay in cache (2x faster than one big
        # gather + bmm). Rows of ST are the elements themselves.
        ST = torch.empty((n_el + _MIN_ROWS, M + 1), device=dev)
        bounds = torch.cat([pstart[::K], pend[-1:]]).tolist()
        for b in range(Bc):
            lo, hi = bounds[b], bounds[b + 1]
            E = _pad_rows(t.index_select(0, aid[lo:hi]))
            torch.mm(E, R[b].T, out=ST[lo : lo + E.shape[0]])
        row = None

    scores = torch.empty(P, device=dev)
    glob = torch.empty(P, device=dev)
    local = torch.empty(P, device=dev)
    n_iter = torch.empty(P, dtype=torch.int64, device=dev)
    # One batched Sinkhorn per descriptor count: every problem has exactly its own size,
    # so its arithmetic never depends on which other classes are in the batch.
    for n in torch.unique(nflat).tolist():
        pairs = (nflat == n).nonzero().squeeze(1)
        rows = pstart[pairs].unsqueeze(1) + torch.arange(n, device=dev)  # (Pn, n) elements
        if row is not None:
            rows = row[rows]
        SG = ST.index_select(0, rows.reshape(-1)).reshape(-1, n, M + 1)
        g, S = SG[:, :, 0], SG[:, :, 1:]  # (Pn, n), (Pn, n, M)
        F = torch.add(((1.0 - theta) * g).unsqueeze(2), S, alpha=theta)  # (1-θ) g + θ S
        a = crop_mass[pairs // K]
        b = torch.full((pairs.numel(), n), 1.0 / n, device=dev)
        # log K = -(1 - F) / eps as OP.py l.116-119 (F - 1 == -(1 - F) exactly in IEEE).
        if method == "sinkhorn":
            Tt, it, _, _ = _solve_plain(torch.sub(F, 1.0).div_(eps).exp_(), a, b, max_iter, tol)
        else:
            logKt = torch.sub(F, 1.0).div_(eps)
            Tt, it, _, _, _ = _solve_transposed(logKt, a, b, max_iter=max_iter, tol=tol, method=method)
        scores[pairs] = (Tt * F).sum((1, 2))
        local[pairs] = (Tt * S).sum((1, 2))
        glob[pairs] = g.mean(1)
        n_iter[pairs] = it
        if plan_out is not None:
            plan_out[:, :, :n].index_copy_(0, pairs, Tt.transpose(1, 2))
    shape = (Bc, K)
    return scores.reshape(shape), glob.reshape(shape), local.reshape(shape), n_iter.reshape(shape)
