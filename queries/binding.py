"""Object-bound transport: a class scores well only when one object carries all its attributes.

LaZSL (and every descriptor method of the field) pools attribute evidence over the whole image:
with two birds in a picture, a crest seen on one bird and a wing pattern seen on the other add
up to a class that neither bird is. Object-bound transport asks the question per candidate
object instead. Every region ``p`` of the image (the full view included) is a candidate
object; its *parts* are the other regions that lie inside it. For class ``c`` with
descriptors ``d_1..d_N``:

* parts of ``p``: regions ``r`` smaller than ``p`` with ``area(r ∩ p) >= contain * area(r)``;
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
class's descriptors), against LaZSL's one per candidate class. All problems of a chunk of
images are solved together, dense over (image, class, object, region, descriptor): an
object's parts are its rows of ``inside`` and every other region carries no mass, so the
image's one kernel serves every object and each Sinkhorn step is two batched matrix
products per (image, class), the way :func:`queries.lazsl.lazsl_scores` batches classes.
Padded objects and descriptor columns carry no mass and never iterate; each problem stops on
its own. Two identities keep it cheap: the kernel factorises, ``exp((F - 1)/eps) = V diag(u)``
with ``V = exp(theta (S - 1)/eps)`` computed once per image and
``u_n = exp((1 - theta)(cos(p, d_n) - 1)/eps)``, and Sinkhorn on ``V`` started at ``c = u``
has the same iterates as on the full kernel started at ``c = 1``; and because the plan's
columns sum to ``1/N``, ``sum T F = (1 - theta) mean_n cos(p, d_n) + theta sum T S``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from queries._arrays import any_torch, as_float, as_index, candidate_texts, out, pick_device
from queries.result import PlanAliases, ScoreResult
from queries.transport import PLAIN_MAX_SCALE

__all__ = ["BindingResult", "object_bound_scores", "part_structure"]


@dataclass
class BindingResult(PlanAliases, ScoreResult):
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


def part_structure(regions, boxes, *, contain: float = 0.75, min_parts: int = 2, gamma: float = 0.0):
    """Which regions are parts of which candidate object, and the part mass.

    regions (R, D) L2-normalised, boxes (R, 4) ``(x0, y0, x1, y1)``. Returns
    ``(inside (R, R) bool, mass (R, R) float)``: ``inside[p, r]`` when ``r``, smaller than ``p``, lies at least
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
    """(inside, mass) of :func:`part_structure` for (R, D) / (R, 4), or batched (B, R, D) / (B, R, 4)."""
    x0, y0, x1, y1 = bx.unbind(-1)
    iw = (torch.minimum(x1.unsqueeze(-1), x1.unsqueeze(-2)) - torch.maximum(x0.unsqueeze(-1), x0.unsqueeze(-2))).clamp(min=0)
    ih = (torch.minimum(y1.unsqueeze(-1), y1.unsqueeze(-2)) - torch.maximum(y0.unsqueeze(-1), y0.unsqueeze(-2))).clamp(min=0)
    area = (x1 - x0) * (y1 - y0)
    # inside[p, r]: intersection of r with p covers >= contain of r's area, and r is smaller than p
    # (with a loose test a large crop would otherwise count the full view, or a near-equal crop, as a part)
    # (being strictly smaller, no region is a part of itself)
    inside = ((iw * ih) >= contain * area.unsqueeze(-2)) & (area.unsqueeze(-2) < area.unsqueeze(-1))
    n = inside.sum(-1)
    sim = E @ E.transpose(-1, -2)  # sim[p, r] = cos(p, r)
    insf = inside.to(E.dtype)
    mean = (sim * insf).sum(-1) / n.clamp(min=1).to(E.dtype)
    kept = inside & ~(sim < (mean + gamma).unsqueeze(-1))
    # gamma > 0 may drop every part: keep them all then (as lazsl_scores does for crops)
    empty = kept.sum(-1) == 0
    kept = torch.where(empty.unsqueeze(-1), inside, kept)
    kept &= (n >= min_parts).unsqueeze(-1)
    mass = kept.to(E.dtype) / kept.sum(-1, keepdim=True).clamp(min=1).to(E.dtype)
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
    contain: float = 0.75,
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
    cand, n_max, valid, attr_index = ct.cand, ct.n_max, ct.valid, ct.attr_index
    K = cand.shape[1]

    inside, mass = _parts(X, bx, contain, min_parts, gamma)  # (B, R, R): object x part
    is_obj = (mass > 0).any(-1)
    n_obj = is_obj.sum(1)
    if B and int(n_obj.min()) == 0:
        b = int((n_obj == 0).nonzero()[0])
        raise ValueError(f"image {b}: no region has {min_parts} or more parts; index crops inside the full view")
    n_in = inside.sum(-1)
    n_parts_all = torch.where(is_obj, n_in, 0)
    n_solved = n_obj * K
    # each image's candidate objects in region order, padded to the most objects of any image
    O = int(n_obj.max()) if B else 0
    ar = torch.arange(R, device=dev)
    obj_idx = torch.argsort(torch.where(is_obj, ar, ar + R), dim=1)[:, :O]  # (B, O)
    obj_ok = is_obj.gather(1, obj_idx)

    scores = torch.full((B, K), float("-inf"), dtype=dt, device=dev)
    glob = torch.zeros((B, K), dtype=dt, device=dev)
    local = torch.zeros((B, K), dtype=dt, device=dev)
    best_p = torch.full((B, K), R, dtype=torch.int64, device=dev)
    plan = torch.zeros((B, K, R, n_max), dtype=dt, device=dev) if return_plan else None
    fused = torch.zeros((B, K, R, n_max), dtype=dt, device=dev) if return_plan else None

    step = max(1, chunk_elements // max(1, K * R * max(O, n_max)))
    for s0 in range(0, B if K else 0, step):
        sl = slice(s0, min(B, s0 + step))
        res = _objects_chunk(X[sl], t, attr_index[sl], valid[sl], inside[sl], mass[sl], obj_idx[sl], obj_ok[sl],
                             n_in[sl], theta, eps, max_iter, tol, return_plan)
        scores[sl], best_p[sl], glob[sl], local[sl] = res[:4]
        if return_plan:
            plan[sl], fused[sl] = res[4], res[5]
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


def _objects_chunk(X, t, attr_index, valid, inside, mass, obj_idx, obj_ok, n_in, theta, eps, max_iter, tol,
                   return_plan):
    """Every (candidate object, candidate class) problem of a chunk of images at once.

    Dense over the chunk's images (b), candidate classes (k), candidate objects (o, padded to
    the chunk's most; ``obj_ok`` marks real ones), regions (r) and descriptor columns (n,
    padded to ``n_max``; ``valid`` marks real ones). An object's parts are its rows of
    ``inside``; the other regions carry no mass (r = 0), so one batched product over all
    regions serves every object of an image: the kernel ``V = exp(theta (S - 1)/eps)`` is
    shared (see the module docstring) and Sinkhorn runs on ``V`` with ``c`` started at the
    object's ``u``, each problem stopping on its own. Returns (scores, best region, global,
    local[, plan, fused]) of the best object per (image, class).
    """
    Bc, R, _ = X.shape
    K, n = attr_index.shape[1], attr_index.shape[2]
    O = obj_idx.shape[1]
    dt = X.dtype
    # S[b, k, r, j] = cos(region r, descriptor j of candidate k)
    S = torch.stack([
        (X[b] @ t.index_select(0, attr_index[b].clamp(min=0).reshape(-1)).T).view(R, K, n).transpose(0, 1)
        for b in range(Bc)
    ]).contiguous()  # (Bc, K, R, n)
    V = torch.exp(S.sub(1.0).mul_(theta / eps))
    W = V * S  # sum_rj r_r V_rj c_j S_rj = sum_r r_r (W c)_r
    vmask = valid.unsqueeze(2)  # (Bc, K, 1, n)
    n_desc = valid.sum(-1, keepdim=True).unsqueeze(2).to(dt)  # (Bc, K, 1, 1)
    bcol = torch.where(vmask, 1.0 / n_desc, 0.0)
    # the objects' own cosines and their part masses
    G = S.gather(2, obj_idx[:, None, :, None].expand(Bc, K, O, n))  # (Bc, K, O, n)
    ins = inside.gather(1, obj_idx.unsqueeze(-1).expand(Bc, O, R))  # (Bc, O, R)
    a = mass.gather(1, obj_idx.unsqueeze(-1).expand(Bc, O, R)).unsqueeze(1)  # (Bc, 1, O, R)
    n_rows = n_in.gather(1, obj_idx).to(dt)[:, None, :].clamp(min=1)  # (Bc, 1, O)
    apos = a > 0
    Vb = V.view(Bc * K, R, n)
    r = ins.to(dt).unsqueeze(1).expand(Bc, K, O, R).clone()
    c = torch.where(vmask, torch.exp(G.sub(1.0).mul((1 - theta) / eps)), 0.0)
    done = (~obj_ok).unsqueeze(1).expand(Bc, K, O).clone()  # padding objects never iterate
    for _ in range(max_iter):
        Kc = torch.bmm(c.view(Bc * K, O, n), Vb.transpose(1, 2)).view(Bc, K, O, R)
        r_new = torch.where(apos, a / Kc, 0.0)
        Ktr = torch.bmm(r_new.view(Bc * K, O, R), Vb).view(Bc, K, O, n)
        c_new = torch.where(vmask, bcol / Ktr, 0.0)
        err = (r_new - r).abs().sum(-1) / n_rows
        live = (~done).unsqueeze(-1)
        r = torch.where(live, r_new, r)
        c = torch.where(live, c_new, c)
        done |= err < tol
        if bool(done.all()):
            break
    g = torch.where(vmask, G, 0.0).sum(-1) / n_desc.squeeze(-1)  # (Bc, K, O)
    loc = (r * torch.bmm(c.view(Bc * K, O, n), W.view(Bc * K, R, n).transpose(1, 2)).view(Bc, K, O, R)).sum(-1)
    sc = torch.where(obj_ok.unsqueeze(1), (1 - theta) * g + theta * loc, float("-inf"))
    best = sc.argmax(-1)  # first maximum: ties -> the lowest region index (objects are in region order)
    pick = best.unsqueeze(-1)
    result = [sc.gather(-1, pick).squeeze(-1), obj_idx.gather(1, best), g.gather(-1, pick).squeeze(-1),
            loc.gather(-1, pick).squeeze(-1)]
    if return_plan:
        r_w = r.gather(2, pick.unsqueeze(-1).expand(Bc, K, 1, R)).squeeze(2)  # (Bc, K, R)
        c_w = c.gather(2, pick.unsqueeze(-1).expand(Bc, K, 1, n))  # (Bc, K, 1, n)
        g_w = G.gather(2, pick.unsqueeze(-1).expand(Bc, K, 1, n))
        ins_w = ins.gather(1, best.unsqueeze(-1).expand(Bc, K, R))  # (Bc, K, R)
        result.append(r_w.unsqueeze(-1) * V * c_w)
        result.append(torch.where(ins_w.unsqueeze(-1) & vmask, (1 - theta) * g_w + theta * S, 0.0))
    return result
