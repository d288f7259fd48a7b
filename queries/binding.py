"""Object-bound transport: a class scores well only when one object carries all its attributes.

LaZSL (and every descriptor method of the field) pools attribute evidence over the whole image:
with two birds in a picture, a crest seen on one bird and a wing pattern seen on the other add
up to a class that neither bird is. Object-bound transport asks the question per candidate
object instead. Every region ``p`` of the image (the full view included) is a candidate
object; its *parts* are the other regions that lie inside it. For class ``c`` with
descriptors ``d_1..d_N``:

* parts of ``p``: regions ``r != p`` with ``area(r ∩ p) >= contain * area(r)``;
  ``p`` is a candidate only with at least ``min_parts`` parts;
* part mass (LaZSL's filter, relative to the object): parts with
  ``cos(r, p) < mean_{r' in parts(p)} cos(r', p) + gamma`` get mass 0, the rest
  ``1 / n_kept``; zero on every region that is not a part;
* fused similarity ``F[r, n] = (1 - theta) cos(p, d_n) + theta cos(r, d_n)`` (LaZSL's, with
  the object in the role of the full image);
* entropic OT between the part mass and uniform descriptor mass ``1/N``, cost ``1 - F``,
  kernel ``exp(-(1 - F)/eps)``, Sinkhorn-Knopp as LaZSL runs it (``r = c = 1`` at the
  start, stop when ``mean |r - r_prev| < tol`` over the object's parts, filtered ones
  included, or after ``max_iter``), each problem stopping on its own; this is
  :func:`queries.lazsl.lazsl_scores` with the object as the full view and its parts as
  the crops;
* object score ``s(c, p) = sum T F``; class score ``max_p s(c, p)``; the arg-max ``p`` is
  the object that carried the class (for explanations).

Why it binds: the part marginal is balanced, so every kept part of the object must send its
mass to some descriptor of the class. An object that holds one bird of class ``c`` explains
all its parts with ``c``'s descriptors; an object that spans two birds can only reach a
mixed class's four descriptors by also explaining the other bird's parts with descriptors
they do not show, which costs. The full image is always a candidate (every crop lies inside
it), so the class score is never below plain LaZSL over the image's crops with the full
view as global (theta, eps, gamma, max_iter and tol equal): the full view's object score *is* LaZSL's.

Cost: one OT problem per (candidate class, candidate object), of size (object's parts x
class's descriptors), against LaZSL's one per candidate class. Problems of a chunk of
images are batched by padded part and descriptor counts (powers of two; padding carries no
mass and is excluded from the stopping test). Two identities keep it cheap: the kernel
factorises, ``exp((F - 1)/eps) = V diag(u)`` with ``V = exp(theta (S - 1)/eps)`` computed once
per image and ``u_n = exp((1 - theta)(cos(p, d_n) - 1)/eps)``, and Sinkhorn on ``V`` started at
``c = u`` has the same iterates as on the full kernel started at ``c = 1``; and because the
plan's columns sum to ``1/N``, ``sum T F = (1 - theta) mean_n cos(p, d_n) + theta sum T S``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from queries._arrays import any_torch, as_float, as_index, candidate_texts, out, pick_device
from queries.result import ScoreResult
from queries.transport import PLAIN_MAX_SCALE

__all__ = ["BindingResult", "object_bound_scores", "part_structure"]


@dataclass
class BindingResult(ScoreResult):
    """Object-bound scores for each (image, candidate class) (:class:`queries.result.ScoreResult`).

    Attributes
    ----------
    scores : (B, K)
        ``max_p sum_rn T_rn F_rn`` over candidate objects ``p``.
    region : (B, K) int64
        Region index (row of ``regions``) of the object that carried the class. Also
        readable as ``proposal``.
    global_scores : (B, K)
        ``mean_n cos(p*, d_n)`` of that object.
    local_scores : (B, K)
        ``sum_rn T_rn cos(r, d_n)`` of its plan (``scores = (1-theta) global + theta local``).
    plan : (B, K, R, n_max) or None
        The winning object's plan: regions (rows of ``regions``; zero outside its kept
        parts) x the class's descriptors (padded columns 0).
    similarity : (B, K, R, n_max) or None
        The fused similarity ``(1 - theta) cos(p*, d_n) + theta cos(r, d_n)`` each entry of
        ``plan`` was paid for (0 where the plan is 0 by construction: outside the winning
        object's parts and on padding), so ``sum(plan * similarity) == scores``. Also
        readable as ``fused``.
    text_index : (B, K, n_max) int64
        Row of ``attr`` of each plan column, -1 for padding. Also readable as ``attr_index``.
    n_parts : (B, R) int64
        Parts of each region as an object (0 where it has fewer than ``min_parts``:
        not a candidate).
    n_solved : (B,) int64
        OT problems solved per image (candidate objects x K).
    """

    n_parts: Any = None
    n_solved: Any = None

    @property
    def proposal(self):
        return self.region

    @property
    def fused(self):
        return self.similarity

    @property
    def attr_index(self):
        return self.text_index


def part_structure(regions, boxes, *, contain: float = 0.9, min_parts: int = 2, gamma: float = 0.0):
    """Which regions are parts of which candidate object, and the part mass.

    regions (R, D) L2-normalised, boxes (R, 4) ``(x0, y0, x1, y1)``. Returns
    ``(inside (R, R) bool, mass (R, R) float)``: ``inside[p, r]`` when ``r != p`` lies at least
    ``contain`` inside ``p``; ``mass[p]`` is the part marginal of object ``p`` (LaZSL's
    mean filter relative to ``p``), all zero when ``p`` has fewer than ``min_parts`` parts.

    >>> import numpy as np
    >>> E = np.eye(3, dtype=np.float32)
    >>> bx = np.array([[0, 0, 10, 10], [0, 0, 5, 5], [5, 5, 10, 10]], np.float32)
    >>> inside, mass = part_structure(E, bx)
    >>> inside.astype(int).tolist()
    [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    >>> mass[0].tolist()
    [0.0, 0.5, 0.5]
    """
    as_torch = any_torch(regions, boxes)
    dev = pick_device(regions, boxes)
    E = as_float(regions, dev)
    bx = as_float(boxes, dev, E.dtype)
    inside, mass = _parts(E, bx, contain, min_parts, gamma)
    return out(inside, as_torch), out(mass, as_torch)


def _parts(E: torch.Tensor, bx: torch.Tensor, contain: float, min_parts: int, gamma: float):
    R = E.shape[0]
    x0, y0, x1, y1 = bx.unbind(1)
    iw = (torch.minimum(x1[None, :], x1[:, None]) - torch.maximum(x0[None, :], x0[:, None])).clamp(min=0)
    ih = (torch.minimum(y1[None, :], y1[:, None]) - torch.maximum(y0[None, :], y0[:, None])).clamp(min=0)
    area = (x1 - x0) * (y1 - y0)
    # inside[p, r]: intersection of r with p covers >= contain of r's area
    inside = (iw * ih) >= contain * area[None, :]
    inside &= ~torch.eye(R, dtype=torch.bool, device=E.device)
    n = inside.sum(1)
    sim = E @ E.T  # sim[p, r] = cos(p, r)
    insf = inside.to(E.dtype)
    mean = (sim * insf).sum(1) / n.clamp(min=1).to(E.dtype)
    kept = inside & ~(sim < (mean + gamma).unsqueeze(1))
    # gamma > 0 may drop every part: keep them all then (as lazsl_scores does for crops)
    empty = kept.sum(1) == 0
    kept = torch.where(empty.unsqueeze(1), inside, kept)
    kept &= (n >= min_parts).unsqueeze(1)
    mass = kept.to(E.dtype) / kept.sum(1, keepdim=True).clamp(min=1).to(E.dtype)
    return inside, mass


def object_bound_scores(
    regions,
    boxes,
    attr,
    attr_class,
    candidates=None,
    *,
    theta: float = 0.8,
    eps: float = 0.1,
    gamma: float = 0.0,
    contain: float = 0.9,
    min_parts: int = 2,
    max_iter: int = 100,
    tol: float = 1e-2,
    return_plan: bool = True,
    chunk_elements: int = 1 << 22,
) -> BindingResult:
    r"""Object-bound transport scores (see the module docstring for the method).

    .. math::
        \mathrm{score}_c = \max_{p} \sum_{r,n} T^{(p,c)}_{rn}
        \big[(1-\theta)\cos(p, d_n) + \theta \cos(r, d_n)\big]

    where ``T^{(p,c)}`` is the entropic OT plan between the part mass of object ``p`` and
    the uniform mass of class ``c``'s descriptors.

    .. note:: Accepts numpy arrays or torch tensors and returns the same kind. float64
       inputs are computed in float64, everything else in float32.

    Parameters
    ----------
    regions : (B, R, D)
        L2-normalised region embeddings of each image; any row may be the full view (its
        box is the whole image, so every crop is one of its parts).
    boxes : (B, R, 4)
        Region boxes ``(x0, y0, x1, y1)`` in pixels of the original image.
    attr : (A, D)
        Descriptor embeddings; ``attr_class`` (A,) their class indices.
    candidates : (B, K) int, optional
        Classes to score per image (a shortlist); ``None`` scores every class.
    theta, eps, gamma
        LaZSL's fused-similarity weight, entropic regularisation and part filter offset.
    contain : float
        A region is a part of ``p`` when this fraction of its area lies inside ``p``.
    min_parts : int
        Objects with fewer parts are not candidates.
    max_iter, tol
        Sinkhorn stopping, per problem (LaZSL's: 100, 1e-2).
    return_plan : bool
        ``False`` skips the (B, K, R, n_max) plans.
    chunk_elements : int
        Memory bound (entries of the batched similarity/OT tensors); results do not depend
        on it.

    Returns
    -------
    BindingResult

    Examples
    --------
    >>> import numpy as np
    >>> unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    >>> rng = np.random.default_rng(0)
    >>> regions = unit(rng.standard_normal((1, 4, 8)))
    >>> boxes = np.array([[[0, 0, 100, 100], [0, 0, 60, 60], [10, 10, 50, 50], [40, 40, 100, 100]]])
    >>> attr = unit(rng.standard_normal((4, 8)))
    >>> res = object_bound_scores(regions, boxes, attr, np.array([0, 0, 1, 1]))
    >>> res.scores.shape, res.proposal.tolist(), res.n_parts.tolist()
    ((1, 2), [[0, 0]], [[3, 0, 0, 0]])
    """
    as_torch = any_torch(regions, boxes, attr, attr_class, candidates)
    dev = pick_device(regions, boxes, attr, attr_class, candidates)
    X = as_float(regions, dev)
    dt = torch.float64 if X.dtype == torch.float64 else torch.float32
    X = X.to(dt)
    bx = as_float(boxes, dev, dt)
    t = as_float(attr, dev, dt)
    ac = as_index(attr_class, dev)
    if X.ndim != 3 or bx.shape != X.shape[:2] + (4,):
        raise ValueError(f"expected regions (B, R, D) and boxes (B, R, 4); got {tuple(X.shape)}, {tuple(bx.shape)}")
    if t.ndim != 2 or t.shape[1] != X.shape[2] or ac.shape != (t.shape[0],):
        raise ValueError("attr must be (A, D) with one attr_class entry per row")
    if 2.01 / eps > PLAIN_MAX_SCALE[dt]:
        raise ValueError(f"eps={eps} is too small for the plain Sinkhorn kernel in {dt}")
    B, R, _ = X.shape
    ct = candidate_texts(ac, candidates, B, dev)
    cand, npair, n_max, valid, attr_index = ct.cand, ct.n_pair, ct.n_max, ct.valid, ct.attr_index
    K = cand.shape[1]

    scores = torch.full((B, K), float("-inf"), dtype=dt, device=dev)
    glob = torch.zeros((B, K), dtype=dt, device=dev)
    local = torch.zeros((B, K), dtype=dt, device=dev)
    best_p = torch.full((B, K), R, dtype=torch.int64, device=dev)
    plan = torch.zeros((B, K, R, n_max), dtype=dt, device=dev) if return_plan else None
    fused = torch.zeros((B, K, R, n_max), dtype=dt, device=dev) if return_plan else None
    n_parts_all = torch.zeros((B, R), dtype=torch.int64, device=dev)
    n_solved = torch.zeros(B, dtype=torch.int64, device=dev)
    col_bucket = torch.clamp(torch.ceil(torch.log2(npair.to(torch.float64))), min=2).to(torch.int64)

    step = max(1, chunk_elements // max(1, R * K * max(1, n_max)))
    for s0 in range(0, B, step):
        e0 = min(B, s0 + step)
        # objects of every image of the chunk, flat: image, region, parts (compacted), mass
        o_img, o_reg, o_parts, o_mass, o_n = [], [], [], [], []
        for b in range(s0, e0):
            inside, mass = _parts(X[b], bx[b], contain, min_parts, gamma)
            is_obj = (mass > 0).any(1)
            n_parts_all[b] = torch.where(is_obj, inside.sum(1), 0)
            objs = is_obj.nonzero().squeeze(1)
            if objs.numel() == 0:
                raise ValueError(f"image {b}: no region has {min_parts} or more parts; index crops inside the full view")
            ins = inside[objs]
            n = ins.sum(1)
            rank = torch.cumsum(ins.to(torch.int64), 1) - 1
            pidx = torch.zeros((objs.numel(), R), dtype=torch.int64, device=dev)
            oo, rr = ins.nonzero(as_tuple=True)
            pidx[oo, rank[oo, rr]] = rr
            o_img.append(torch.full_like(objs, b - s0))
            o_reg.append(objs)
            o_parts.append(pidx)
            o_mass.append(torch.where(torch.arange(R, device=dev) < n.unsqueeze(1), mass[objs].gather(1, pidx), 0.0))
            o_n.append(n)
            n_solved[b] = objs.numel() * K
        o_img, o_reg, o_n = torch.cat(o_img), torch.cat(o_reg), torch.cat(o_n)
        o_parts, o_mass = torch.cat(o_parts), torch.cat(o_mass)
        o_row = torch.arange(R, device=dev) < o_n.unsqueeze(1)
        o_bucket = torch.clamp(torch.ceil(torch.log2(o_n.to(torch.float64))), min=2).to(torch.int64)
        # cosines of every region with its image's candidate descriptors; V shared by all objects
        Sk = torch.stack([
            (X[b] @ t[attr_index[b].clamp(min=0).reshape(-1)].T).reshape(R, K, n_max) for b in range(s0, e0)
        ])  # (b, R, K, n_max)
        Vk = torch.exp(Sk.sub(1.0).mul_(theta / eps))
        # all (object, class) problems of the chunk, grouped by padded sizes
        O = o_img.numel()
        po = torch.arange(O, device=dev).repeat_interleave(K)
        pk = torch.arange(K, device=dev).repeat(O)
        key = o_bucket[po] * 64 + col_bucket[s0 + o_img[po], pk]
        for kv in torch.unique(key).tolist():
            sel = (key == kv).nonzero().squeeze(1)
            m = min(1 << (kv // 64), R)
            nc = min(1 << (kv % 64), n_max)
            qc = max(1, chunk_elements // max(1, m * nc * 4))
            for c0 in range(0, sel.numel(), qc):
                q = sel[c0 : c0 + qc]
                _solve_and_keep_best(
                    po[q], pk[q], m, nc, o_img, o_reg, o_parts, o_row, o_mass, o_n, Sk, Vk, valid[s0:e0],
                    theta, eps, max_iter, tol, scores[s0:e0], best_p[s0:e0], glob[s0:e0], local[s0:e0],
                    plan[s0:e0] if plan is not None else None,
                    fused[s0:e0] if fused is not None else None,
                )
    proposal = torch.where(best_p < R, best_p, -1)
    return BindingResult(
        scores=out(scores, as_torch),
        region=out(proposal, as_torch),
        global_scores=out(glob, as_torch),
        local_scores=out(local, as_torch),
        plan=out(plan, as_torch),
        text_index=out(attr_index, as_torch),
        n_parts=out(n_parts_all, as_torch),
        n_solved=out(n_solved, as_torch),
        similarity=out(fused, as_torch),
    )


def _sinkhorn_parts(K, a, bcol, rows, n_rows, max_iter: int, tol: float, c0=None):
    """Sinkhorn-Knopp (LaZSL's iteration) on compacted part rows with per-problem stopping.

    K (Q, m, n); a (Q, m) part mass (0 on filtered parts and on padding); bcol (Q, n)
    descriptor mass (0 on padded columns); rows (Q, m) bool: the object's parts (not padding);
    n_rows (Q,) their number. r starts at 1 on the parts (0 on padding), c at ``c0`` (default
    1) on real columns; a problem stops when ``sum_parts |r - r_prev| / n_rows < tol``, i.e.
    LaZSL's mean over its crops with the object's parts as the crops. Returns (T, n_iter).
    """
    dt = K.dtype
    r = rows.to(dt)
    c = (bcol > 0).to(dt) if c0 is None else torch.where(bcol > 0, c0, 0.0)
    apos, bpos = a > 0, bcol > 0
    Q = K.shape[0]
    done = torch.zeros(Q, dtype=torch.bool, device=K.device)
    n_iter = torch.full((Q,), max_iter, dtype=torch.int64, device=K.device)
    nr = n_rows.to(dt)
    for it in range(1, max_iter + 1):
        Kc = torch.bmm(K, c.unsqueeze(2)).squeeze(2)
        r_new = torch.where(apos, a / Kc, 0.0)
        Ktr = torch.bmm(r_new.unsqueeze(1), K).squeeze(1)
        c_new = torch.where(bpos, bcol / Ktr, 0.0)
        err = (r_new - r).abs().sum(1) / nr
        live = ~done
        r = torch.where(live.unsqueeze(1), r_new, r)
        c = torch.where(live.unsqueeze(1), c_new, c)
        fin = live & (err < tol)
        n_iter[fin] = it
        done |= fin
        if bool(done.all()):
            break
    return r.unsqueeze(2) * K * c.unsqueeze(1), n_iter


def _solve_and_keep_best(qo, qk, m, nc, o_img, o_reg, o_parts, o_row, o_mass, o_n, Sk, Vk, valid,
                         theta, eps, max_iter, tol, scores, best_p, glob, local, plan, fused):
    """Solve the (object qo[i], class qk[i]) problems on the objects' first m part rows and
    the classes' first nc descriptor columns; keep each (image, class)'s best object (highest
    score; ties -> lowest region index) in place. Every array is the chunk's (images
    0..b-1 of the chunk); scores, best_p, glob, local, plan, fused are views written in place."""
    dt = Sk.dtype
    bi = o_img[qo]  # image within the chunk
    ridx = o_reg[qo]
    pidx = o_parts[qo, :m]  # (Q, m)
    L = Sk[bi.unsqueeze(1), pidx, qk.unsqueeze(1), :nc]  # (Q, m, nc) cos(part, descriptor)
    V = Vk[bi.unsqueeze(1), pidx, qk.unsqueeze(1), :nc]
    g_all = Sk[bi, ridx, qk, :nc]  # (Q, nc) cos(object, descriptor)
    B = scores.shape[0]
    vq = valid[bi, qk, :nc]
    n_desc = vq.sum(1).to(dt)
    bcol = torch.where(vq, 1.0 / n_desc.unsqueeze(1), 0.0)
    u = torch.exp(g_all.sub(1.0).mul_((1 - theta) / eps))
    T, _ = _sinkhorn_parts(V, o_mass[qo, :m], bcol, o_row[qo, :m], o_n[qo], max_iter, tol, c0=u)
    g = torch.where(vq, g_all, 0.0).sum(1) / n_desc
    loc = (T * L).sum((1, 2))
    sc = (1 - theta) * g + theta * loc
    # best per (image, class) in this batch, then against the best so far
    K = scores.shape[1]
    key = bi * K + qk
    flat_s, flat_p = scores.view(-1), best_p.view(-1)
    gmax = torch.full((B * K,), float("-inf"), dtype=dt, device=Sk.device).scatter_reduce(0, key, sc, "amax")
    at_max = sc == gmax[key]
    R = Sk.shape[1]
    gidx = torch.full((B * K,), R, dtype=torch.int64, device=Sk.device).scatter_reduce(
        0, key[at_max], ridx[at_max], "amin"
    )
    win = (at_max & (ridx == gidx[key])).nonzero().squeeze(1)  # one winner per (image, class)
    kw = key[win]
    better = (sc[win] > flat_s[kw]) | ((sc[win] == flat_s[kw]) & (ridx[win] < flat_p[kw]))
    win, kw = win[better], kw[better]
    if win.numel() == 0:
        return
    flat_s[kw], flat_p[kw] = sc[win], ridx[win]
    glob.view(-1)[kw] = g[win]
    local.view(-1)[kw] = loc[win]
    if plan is not None:
        wb, wk = kw // K, kw % K
        plan[wb, wk] = 0
        fused[wb, wk] = 0
        wi, ii = o_row[qo[win], :m].nonzero(as_tuple=True)
        plan[wb[wi], wk[wi], pidx[win][wi, ii], :nc] = T[win][wi, ii]
        F = (1 - theta) * g_all[win].unsqueeze(1) + theta * L[win]  # (W, m, nc)
        fused[wb[wi], wk[wi], pidx[win][wi, ii], :nc] = torch.where(vq[win][wi], F[wi, ii], 0.0)
