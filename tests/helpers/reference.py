"""The one reference implementation of Sinkhorn and LaZSL, written from the spec
(methods-reference §4) one problem at a time in float64, for tests and benchmarks to compare
the batched code against. Slow by design: plain loops, no batching, no shortcuts."""
from __future__ import annotations

import numpy as np


def sinkhorn_loop(a, b, M, reg, max_iter=100, tol=1e-2):
    """LaZSL's Sinkhorn for ONE problem: r = c = 1; repeat r = a / (K c); c = b / (K^T r)
    until mean|r - r_prev| < tol. Returns (plan, iterations).

    Zero-mass columns are dropped (the unpadded problem); zero-mass rows stay (they count
    in the mean, as excluded crops do in the reference) with r = 0 there.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    M = np.asarray(M, np.float64)
    cols = b > 0
    K = np.exp(-M[:, cols] / reg)
    bb = b[cols]
    r = np.ones(len(a))
    c = np.ones(len(bb))
    for it in range(1, max_iter + 1):
        r_prev = r
        Kc = K @ c
        r = np.where(a > 0, a / np.where(a > 0, Kc, 1.0), 0.0)
        c = bb / (K.T @ r)
        if np.abs(r - r_prev).mean() < tol:
            break
    T = np.zeros_like(M)
    T[:, cols] = r[:, None] * K * c[None, :]
    return T, it


def lazsl_pair(full, crops, attrs, *, theta=0.8, eps=0.1, gamma=0.0, max_iter=100, tol=1e-2):
    """LaZSL for one (image, class): full (D,), crops (M, D), the class's attrs (N, D).

    Returns dict(score, glob, local, plan (M, N), fused (M, N), n_iter).
    """
    full, crops, attrs = (np.asarray(x, np.float64) for x in (full, crops, attrs))
    sim_rg = crops @ full
    keep = ~(sim_rg < sim_rg.mean() + gamma)
    if not keep.any():
        keep[:] = True
    u = keep / keep.sum()
    S = crops @ attrs.T  # (M, N)
    g = attrs @ full  # (N,)
    F = (1 - theta) * g[None, :] + theta * S
    v = np.full(len(attrs), 1.0 / len(attrs))
    T, it = sinkhorn_loop(u, v, 1.0 - F, eps, max_iter, tol)
    return dict(score=float((T * F).sum()), glob=float(g.mean()), local=float((T * S).sum()), plan=T, fused=F,
                n_iter=it)


def lazsl_loop(full, crops, attr, attr_class, n_classes, **knobs):
    """LaZSL for each (image, class) on its own. Returns (scores, glob, iters, plans{(b, c)})."""
    B = len(full)
    scores = np.zeros((B, n_classes))
    glob = np.zeros((B, n_classes))
    iters = np.zeros((B, n_classes), dtype=int)
    plans = {}
    for b in range(B):
        for c in range(n_classes):
            r = lazsl_pair(full[b], crops[b], attr[attr_class == c], **knobs)
            scores[b, c], glob[b, c], iters[b, c], plans[b, c] = r["score"], r["glob"], r["n_iter"], r["plan"]
    return scores, glob, iters, plans
