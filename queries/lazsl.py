"""LaZSL (Chen et al., ICCV 2025): optimal transport between an image's crops and a class's
descriptors, batched over every (image, candidate class) pair (pure array functions).

Follows ``OP.py`` ``OP_d.get_OP_distence`` with ``is_cost_global=is_sim_global=True``
(``shared/spec/methods-reference.md`` §4), with the per-pair Sinkhorn stopping rule of
:mod:`queries.transport`. The result carries everything a writer needs (scores, their
global and local parts, the plans and the fused similarities they were paid for,
iterations and convergence), so nothing is recomputed downstream.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from queries._arrays import any_torch, as_float, as_index, candidate_texts, check_dims, out, pick_device
from queries.result import PlanAliases, ScoreResult
from queries.transport import PLAIN_MAX_SCALE, _solve_plain, _solve_transposed

__all__ = ["LazslResult", "lazsl_scores"]


# --------------------------------------------------------------------------- LaZSL


@dataclass
class LazslResult(PlanAliases, ScoreResult):
    """LaZSL scores for each (image, candidate class) pair (:class:`queries.result.ScoreResult`).

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
    similarity : (B, K, M, n_max) float32 or None
        The fused similarity ``F = (1-theta) g + theta S`` each plan entry was paid for
        (0 on padding); with ``plan`` it is what the ``alignments`` writer stores, so
        ``sum(plan * similarity) == scores``. Also readable as ``fused``.
    text_index : (B, K, n_max) int64
        Row of ``attr`` for each plan column, -1 for padding. Also readable as ``attr_index``.
    crop_mass : (B, M) float32
        Crop marginal: 0 for crops less similar to the full image than the mean (+gamma),
        uniform over the rest.
    n_iter : (B, K) int64
        Sinkhorn iterations per pair.
    converged : (B, K) bool
        Whether the pair's Sinkhorn reached ``tol`` within ``max_iter`` iterations.
    """

    crop_mass: Any = None
    n_iter: Any = None
    converged: Any = None


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
        LaZSL's defaults (theta per dataset: the presets in ``pipeline/presets/``).
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
    check_dims(full=f, crops=x, attr=t)
    if ac.shape != (t.shape[0],):
        raise ValueError("attr_class must have one entry per attr row")
    B, M, D = x.shape
    ct = candidate_texts(ac, candidates, B, dev)  # class -> descriptor rows (attr order), per image
    cand, n_pair, order, ptr, n_max, attr_index = ct.cand, ct.n_pair, ct.order, ct.ptr, ct.n_max, ct.attr_index
    K = cand.shape[1]

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
    converged = torch.zeros((B, K), dtype=torch.bool, device=dev)
    plan = torch.zeros((B, K, M, n_max), device=dev) if return_plan else None
    fused = torch.zeros((B, K, M, n_max), device=dev) if return_plan else None

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
            fused_out=fused[s:e].view((e - s) * K, M, n_max) if return_plan else None,
        )
        scores[s:e], glob[s:e], local[s:e], n_iter[s:e], converged[s:e] = res
    return LazslResult(
        scores=out(scores, as_torch),
        global_scores=out(glob, as_torch),
        local_scores=out(local, as_torch),
        plan=out(plan, as_torch),
        text_index=out(attr_index, as_torch),
        crop_mass=out(crop_mass, as_torch),
        n_iter=out(n_iter, as_torch),
        converged=out(converged, as_torch),
        similarity=out(fused, as_torch),
    )


_MIN_ROWS = 16  # MKL computes matmuls with fewer rows differently (last-bit differences)


def _pad_rows(E: torch.Tensor) -> torch.Tensor:
    if E.shape[0] >= _MIN_ROWS:
        return E
    return torch.cat([E, E[:1].expand(_MIN_ROWS - E.shape[0], -1)])


def _lazsl_chunk(f, x, t, cand, n_pair, order, ptr, crop_mass, *, theta, eps, max_iter, tol, method, plan_out,
                 fused_out):
    """LaZSL for a chunk of images; see :func:`lazsl_scores`. Plans and fused similarities
    are written into ``plan_out`` / ``fused_out`` (Bc*K, M, n_max, zero-initialised) when given."""
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
    conv = torch.empty(P, dtype=torch.bool, device=dev)
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
            Tt, it, cv, _ = _solve_plain(torch.sub(F, 1.0).div_(eps).exp_(), a, b, max_iter, tol)
        else:
            logKt = torch.sub(F, 1.0).div_(eps)
            Tt, it, cv, _, _ = _solve_transposed(logKt, a, b, max_iter=max_iter, tol=tol, method=method)
        scores[pairs] = (Tt * F).sum((1, 2))
        local[pairs] = (Tt * S).sum((1, 2))
        glob[pairs] = g.mean(1)
        n_iter[pairs] = it
        conv[pairs] = cv
        if plan_out is not None:
            plan_out[:, :, :n].index_copy_(0, pairs, Tt.transpose(1, 2))
            fused_out[:, :, :n].index_copy_(0, pairs, F.transpose(1, 2))
    shape = (Bc, K)
    return (scores.reshape(shape), glob.reshape(shape), local.reshape(shape), n_iter.reshape(shape),
            conv.reshape(shape))
