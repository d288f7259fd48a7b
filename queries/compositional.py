"""Compositional zero-shot classification of (state, object) pairs: scores, feasibility, metrics.

Pure functions on embedding arrays (numpy or torch in, the same kind out, as the rest of
:mod:`queries`). Three pieces:

* :func:`compose_scores`: MSCI's combination of a pair branch with a state and an object branch;
  :func:`branch_scores` computes one branch's per-class cosine score either on the full image
  (CLIP / DCLIP: the mean cosine over a class's prompts) or by LaZSL's local alignment of the
  class's attributes to image regions (:func:`queries.lazsl.lazsl_scores`);
  :func:`compositional_scores` does all three branches and also returns, for each image, how the
  state's and the object's transport mass spreads over the regions (which region carried which).
* :func:`feasibility` / :func:`apply_feasibility`: the open-world filter.
* :func:`czsl_metrics`: best seen, best unseen, best harmonic mean and AUC of the seen-unseen
  curve as a calibration bias sweeps, as the CZSL evaluators compute them.

Pairs are given as index arrays ``pair_state (P,)`` and ``pair_object (P,)`` into the state and
object vocabularies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from queries._arrays import any_torch, as_float, as_index, out, pick_device
from queries.baselines import dclip_scores
from queries.lazsl import LazslResult, lazsl_scores

__all__ = [
    "BranchScores",
    "CompositionalResult",
    "CzslMetrics",
    "Feasibility",
    "apply_feasibility",
    "branch_scores",
    "compose_scores",
    "compositional_scores",
    "czsl_metrics",
    "feasibility",
]


# --------------------------------------------------------------------------- MSCI combination


def compose_scores(pair_scores, state_scores, object_scores, pair_state, pair_object, *,
                   logit_scale: float = 100.0, pair_weight: float = 1.0, state_weight: float = 1.0,
                   object_weight: float = 1.0):
    """MSCI's inference-time combination of the pair, state and object branches.

    With cosines ``c_pair (B, P)``, ``c_state (B, S)``, ``c_obj (B, O)`` and CLIP's logit scale
    ``t`` (``exp(logit_scale)``, 100 for OpenAI CLIP), for pair p = (s, o):

    ``score[b, p] = w_p * t * c_pair[b, p] + (w_s * P_s[b, s]) * (w_o * P_o[b, o])``

    with ``P_s = softmax_s(t * c_state)`` and ``P_o = softmax_o(t * c_obj)``; a weight of 0
    replaces its factor by 1 (not by 0), as upstream. Source: MSCI (Wang et al., IJCAI 2025),
    ``ltpwy/MSCI`` ``code/model/Mutifuse_new.py`` ``logit_infer`` (its logits are
    ``logit_scale.exp() * cos``, its weights ``pair/attr/obj_inference_weight``, 1.0 in every
    released config). The product of probabilities is at most 1 while the pair logit spreads
    over several units, so the state and object branches mostly re-rank pairs whose pair
    logits are close.

    >>> import numpy as np
    >>> s = compose_scores(np.array([[0.30, 0.31]]), np.array([[0.5, 0.0]]), np.array([[0.2]]),
    ...                    np.array([0, 1]), np.array([0, 0]), logit_scale=10.0)
    >>> [round(float(v), 4) for v in s[0]]  # softmax([5, 0]) = [0.9933, 0.0067], P_o = 1
    [3.9933, 3.1067]
    """
    as_torch = any_torch(pair_scores, state_scores, object_scores, pair_state, pair_object)
    dev = pick_device(pair_scores, state_scores, object_scores)
    cp = as_float(pair_scores, dev, torch.float32)
    cs = as_float(state_scores, dev, torch.float32)
    co = as_float(object_scores, dev, torch.float32)
    ps, po = as_index(pair_state, dev), as_index(pair_object, dev)
    if cp.shape[-1] != ps.numel() or ps.shape != po.shape:
        raise ValueError(f"pair_scores has {cp.shape[-1]} pairs but pair_state/pair_object have {ps.numel()}/{po.numel()}")
    p_s = torch.softmax(logit_scale * cs, dim=-1)[:, ps]
    p_o = torch.softmax(logit_scale * co, dim=-1)[:, po]
    f_s = p_s * state_weight if state_weight != 0 else torch.ones_like(p_s)
    f_o = p_o * object_weight if object_weight != 0 else torch.ones_like(p_o)
    return out(pair_weight * logit_scale * cp + f_s * f_o, as_torch)


# --------------------------------------------------------------------------- one branch


@dataclass
class BranchScores:
    """One branch's scores (cosine units) and, for the local method, its transport.

    Attributes
    ----------
    scores : (B, C)
        Per class: mean cosine of the full image to the class's prompts (``local=False``), or
        the LaZSL score ``sum T F`` (``local=True``).
    lazsl : :class:`queries.lazsl.LazslResult` or None
        ``local=True``: the whole LaZSL result (plans, ``attr_index``, the fused similarity
        each plan entry was paid for), candidates = every class in order.
    """

    scores: Any
    lazsl: LazslResult | None = None

    @property
    def plan(self):
        return None if self.lazsl is None else self.lazsl.plan

    @property
    def attr_index(self):
        return None if self.lazsl is None else self.lazsl.attr_index


def branch_scores(full, crops, attr, attr_class, n_classes: int | None = None, *, local: bool = False,
                  theta: float = 0.8, eps: float = 0.1, gamma: float = 0.0, max_iter: int = 100,
                  tol: float = 1e-2) -> BranchScores:
    """Scores of one branch (pairs, states or objects) against its classes' prompts.

    ``local=False``: DCLIP, ``mean_n cos(full, attr_n)`` over the class's prompts (one prompt
    per class is CLIP; :func:`queries.baselines.dclip_scores`). ``local=True``: LaZSL
    (:func:`queries.lazsl.lazsl_scores`, same parameters) between the regions
    ``crops (B, M, D)`` and the class's attributes. Every class needs at least one prompt.
    """
    as_torch = any_torch(full, crops, attr, attr_class)
    dev = pick_device(full, crops, attr, attr_class)
    f = as_float(full, dev, torch.float32)
    t = as_float(attr, dev, torch.float32)
    ac = as_index(attr_class, dev)
    n = int(ac.max()) + 1 if n_classes is None else int(n_classes)
    if not local:
        return BranchScores(scores=out(dclip_scores(f, t, ac, n), as_torch))
    x = as_float(crops, dev, torch.float32)
    res = lazsl_scores(f, x, t, ac, torch.arange(n, device=dev).expand(f.shape[0], -1), theta=theta, eps=eps,
                       gamma=gamma, max_iter=max_iter, tol=tol, return_plan=True)
    if not as_torch:
        res = LazslResult(**{k: out(v, False) if isinstance(v, torch.Tensor) else v for k, v in res.__dict__.items()})
    return BranchScores(scores=res.scores, lazsl=res)


@dataclass
class CompositionalResult:
    """Pair scores and what carried them.

    Attributes
    ----------
    scores : (B, P)
        :func:`compose_scores` of the three branches (logit units).
    pair_scores, state_scores, object_scores : (B, P), (B, S), (B, O)
        Branch scores (cosine units).
    explained : (B,) int64
        The pair each image's region weights describe (the top-1 pair unless given).
    state_region_weight, object_region_weight : (B, M) or None
        ``local=True``: how much each region carried the explained pair's state and object
        (each row sums to 1 over the regions; see :func:`compositional_scores`).
    state_region, object_region : (B,) int64 or None
        The region with the largest state weight and the one with the largest object weight.
    weight_source : str
        ``"pair_plan"`` or ``"branch_contribution"`` (how the weights were computed).
    pair_lazsl : :class:`queries.lazsl.LazslResult` or None
        ``local=True``: the pair branch's LaZSL result over every pair (its plans are what a
        stage stores as alignments: ``sum(plan * fused)`` is the pair branch score).
    """

    scores: Any
    pair_scores: Any
    state_scores: Any
    object_scores: Any
    explained: Any
    state_region_weight: Any = None
    object_region_weight: Any = None
    state_region: Any = None
    object_region: Any = None
    weight_source: str = ""
    pair_lazsl: Any = None


def _norm_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum(-1, keepdim=True).clamp_min(1e-30)


def compositional_scores(full, crops, pair_attr, pair_attr_class, state_attr, state_attr_class, object_attr,
                         object_attr_class, pair_state, pair_object, *, pair_attr_role=None, local: bool = True,
                         logit_scale: float = 100.0, pair_weight: float = 1.0, state_weight: float = 1.0,
                         object_weight: float = 1.0, explain_pairs=None, theta: float = 0.8, eps: float = 0.1,
                         gamma: float = 0.0, max_iter: int = 100, tol: float = 1e-2) -> CompositionalResult:
    """Score every (state, object) pair: the pair, state and object branches, combined as MSCI.

    Each branch is :func:`branch_scores` of its own attributes (``*_attr`` rows, ``*_attr_class``
    their pair / state / object index): on the full image (``local=False``) or aligned to the
    regions by LaZSL (``local=True``). ``scores = compose_scores(...)``.

    Which regions carried the state and the object (``local=True``), for the explained pair p:

    * ``pair_attr_role`` given (per pair attribute: 0 = describes the state, 1 = the object,
      2 = the pair as a whole): in p's transport plan T (regions x p's attributes), the state
      and object attributes compete for every region's mass, so
      ``w_state[m] = sum_{n: role 0} T[m, n] / sum_{m, n: role 0} T[m, n]`` (the column-normalised
      mass to the state's attributes), and likewise for the object;
    * otherwise, from the state and object branches alone: each region's share of the branch's
      local score, ``w[m] = sum_n T[m, n] S[m, n] / sum_mn T S`` (balanced OT fixes a region's
      total mass to its marginal, so within one class the mass alone does not localise; the
      share ranks regions by their similarity to the class's attributes); negative
      contributions count as 0.

    >>> import numpy as np
    >>> e = np.eye(4, dtype=np.float32)            # dims: state 0, state 1, object 0, object 1
    >>> full = np.array([[0.5, 0, 0.5, 0]], np.float32); full /= np.linalg.norm(full)
    >>> crops = e[None, [0, 2]]                     # region 0 shows state 0, region 1 object 0
    >>> r = compositional_scores(full, crops, e[[0, 2]], [0, 0], e[:2], [0, 1], e[2:], [0, 1],
    ...                          [0], [0], pair_attr_role=[0, 1], local=True, theta=1.0)
    >>> int(r.state_region[0]), int(r.object_region[0]), r.weight_source
    (0, 1, 'pair_plan')
    """
    as_torch = any_torch(full, crops, pair_attr, state_attr, object_attr)
    dev = pick_device(full, crops, pair_attr, state_attr, object_attr)
    ps, po = as_index(pair_state, dev), as_index(pair_object, dev)
    kw = dict(local=local, theta=theta, eps=eps, gamma=gamma, max_iter=max_iter, tol=tol)
    n_s = max(int(ps.max()) + 1, int(as_index(state_attr_class, dev).max()) + 1)
    n_o = max(int(po.max()) + 1, int(as_index(object_attr_class, dev).max()) + 1)
    bp = branch_scores(full, crops, pair_attr, pair_attr_class, ps.numel(), **kw)
    bs = branch_scores(full, crops, state_attr, state_attr_class, n_s, **kw)
    bo = branch_scores(full, crops, object_attr, object_attr_class, n_o, **kw)
    cp = as_float(bp.scores, dev, torch.float32)
    cs, co = as_float(bs.scores, dev, torch.float32), as_float(bo.scores, dev, torch.float32)
    scores = compose_scores(cp, cs, co, ps, po, logit_scale=logit_scale, pair_weight=pair_weight,
                            state_weight=state_weight, object_weight=object_weight)
    expl = scores.argmax(-1) if explain_pairs is None else as_index(explain_pairs, dev)
    res = CompositionalResult(scores=out(scores, as_torch), pair_scores=out(cp, as_torch),
                              state_scores=out(cs, as_torch), object_scores=out(co, as_torch),
                              explained=out(expl, as_torch))
    if not local:
        return res
    res.pair_lazsl = bp.lazsl
    b = torch.arange(cp.shape[0], device=dev)
    if pair_attr_role is not None:
        role = as_index(pair_attr_role, dev)
        plan = as_float(bp.plan, dev)[b, expl]  # (B, M, n_max)
        idx = as_index(bp.attr_index, dev)[b, expl]  # (B, n_max), -1 = padding
        r = torch.where(idx >= 0, role[idx.clamp_min(0)], -1)
        ws = _norm_rows((plan * (r == 0).unsqueeze(1)).sum(-1))
        wo = _norm_rows((plan * (r == 1).unsqueeze(1)).sum(-1))
        res.weight_source = "pair_plan"
    else:
        x = as_float(crops, dev, torch.float32)

        def share(branch, cls_idx, attr):
            plan = as_float(branch.plan, dev)[b, cls_idx]  # (B, M, n_max)
            idx = as_index(branch.attr_index, dev)[b, cls_idx]
            t = as_float(attr, dev, torch.float32)[idx.clamp_min(0)]  # (B, n_max, D)
            sim = torch.einsum("bmd,bnd->bmn", x, t) * (idx >= 0).unsqueeze(1)
            return _norm_rows((plan * sim).sum(-1).clamp_min(0))

        ws = share(bs, ps[expl], state_attr)
        wo = share(bo, po[expl], object_attr)
        res.weight_source = "branch_contribution"
    res.state_region_weight, res.object_region_weight = out(ws, as_torch), out(wo, as_torch)
    res.state_region, res.object_region = out(ws.argmax(-1), as_torch), out(wo.argmax(-1), as_torch)
    return res


# --------------------------------------------------------------------------- open world


@dataclass
class Feasibility:
    """Open-world feasibility of each pair from text embeddings alone.

    Attributes
    ----------
    score : (P,)  ``max(cos(pair, state), cos(pair, object))``
    state_sim, object_sim : (P,)
    feasible : (P,) bool  ``score >= threshold``, or the pair is in ``keep``
    removed : (R,) int64  indices of the pairs left out (the report)
    """

    score: Any
    state_sim: Any
    object_sim: Any
    feasible: Any
    removed: Any


def feasibility(pair_text, state_text, object_text, pair_state, pair_object, *, threshold: float,
                keep=None) -> Feasibility:
    """Leave out the pairs whose text embedding is far from both its state's and its object's.

    ``score[p] = max(cos(t_pair[p], t_state[s_p]), cos(t_pair[p], t_obj[o_p]))``; pair p is
    feasible when ``score[p] >= threshold`` or ``keep[p]`` (pass the seen pairs: a pair seen in
    training is feasible by definition, as MSCI's ``threshold_with_feasibility`` keeps
    ``mask + seen_mask``). Embeddings must be L2-normalised. This is the project's text-only
    criterion (issue 13); CompCos (Mancini et al., CVPR 2021) instead scores a pair by the
    similarity of its object to the objects seen with its state (and vice versa), and MSCI
    loads those precomputed scores and picks the threshold by validation AUC.

    >>> import numpy as np
    >>> st = np.array([[1.0, 0, 0]]); ob = np.array([[0, 1.0, 0]])
    >>> pt = np.array([[0.8, 0.6, 0], [0, 0.28, 0.96]])
    >>> f = feasibility(pt, st, ob, [0, 0], [0, 0], threshold=0.5)
    >>> f.feasible.tolist(), f.removed.tolist()
    ([True, False], [1])
    """
    as_torch = any_torch(pair_text, state_text, object_text)
    dev = pick_device(pair_text, state_text, object_text)
    tp = as_float(pair_text, dev, torch.float32)
    ts = as_float(state_text, dev, torch.float32)
    to = as_float(object_text, dev, torch.float32)
    ps, po = as_index(pair_state, dev), as_index(pair_object, dev)
    ss = (tp * ts[ps]).sum(-1)
    so = (tp * to[po]).sum(-1)
    score = torch.maximum(ss, so)
    ok = score >= threshold
    if keep is not None:
        ok = ok | torch.as_tensor(np.asarray(keep) if not isinstance(keep, torch.Tensor) else keep,
                                  dtype=torch.bool, device=dev)
    removed = (~ok).nonzero().flatten()
    return Feasibility(score=out(score, as_torch), state_sim=out(ss, as_torch), object_sim=out(so, as_torch),
                       feasible=out(ok, as_torch), removed=out(removed, as_torch))


def apply_feasibility(scores, feasible, *, fill: float = -1e10):
    """Scores with the infeasible pairs' columns set to ``fill`` (never predicted)."""
    as_torch = any_torch(scores, feasible)
    dev = pick_device(scores, feasible)
    s = as_float(scores, dev).clone()
    m = torch.as_tensor(np.asarray(feasible) if not isinstance(feasible, torch.Tensor) else feasible,
                        dtype=torch.bool, device=dev)
    s[:, ~m] = fill
    return out(s, as_torch)


# --------------------------------------------------------------------------- metrics


@dataclass
class CzslMetrics:
    """The CZSL evaluation of one score matrix (accuracies in [0, 1]).

    Attributes
    ----------
    best_seen, best_unseen, best_hm, auc : float
        The four headline numbers (papers print them x100).
    hm_seen, hm_unseen, hm_bias : float
        The point of the best harmonic mean and its bias (``max_bias`` for the last point).
    seen_curve, unseen_curve, biases : (K+1,), (K+1,), (K,) numpy
        The swept points (the last curve point is at ``max_bias``).
    seen_acc, unseen_acc, state_acc, object_acc : float
        Closed-world accuracies at bias 0 (``closed_ub`` upstream): pairs of seen images,
        pairs of unseen images, and the predicted pair's state and object over all images.
    n_seen_images, n_unseen_images : int
    """

    best_seen: float
    best_unseen: float
    best_hm: float
    auc: float
    hm_seen: float
    hm_unseen: float
    hm_bias: float
    seen_curve: np.ndarray
    unseen_curve: np.ndarray
    biases: np.ndarray
    seen_acc: float
    unseen_acc: float
    state_acc: float
    object_acc: float
    n_seen_images: int
    n_unseen_images: int

    def to_dict(self, digits: int = 4) -> dict:
        """The scalar figures, rounded (for JSON)."""
        return {k: (round(float(v), digits) if isinstance(v, float) else v) for k, v in self.__dict__.items()
                if not isinstance(v, np.ndarray)}


def _topk_match(scores: np.ndarray, labels: np.ndarray, topk: int) -> np.ndarray:
    # ties go to the lower pair index
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :topk]
    return (idx == labels[:, None]).any(1)


def _hm(s: np.ndarray, u: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((s > 0) & (u > 0), 2 * s * u / (s + u), 0.0)


def czsl_metrics(scores, labels, seen_mask, *, closed_mask=None, pair_state=None, pair_object=None,
                 topk: int = 1, max_bias: float = 1e3, n_bins: int = 20) -> CzslMetrics:
    """Best seen / unseen / harmonic mean and the seen-unseen AUC, as the CZSL evaluators do.

    Definition (Purushwalkam et al., ICCV 2019, "Task-Driven Modular Networks", the evaluator
    kept verbatim by Mancini et al. (CompCos, ``ExplainableML/czsl`` ``models/common.py``
    ``Evaluator.evaluate_predictions``), Nayak et al. (CSP) and MSCI (``test_base.py``)):

    1. ``scores (N, P)``: every test image against every pair; ``labels (N,)`` the true pair;
       ``seen_mask (P,)`` the training pairs; ``closed_mask (P,)`` the candidates (closed
       world: seen + test pairs; default all P = open world). An image is *seen* if its pair is.
    2. Prediction at bias b: add b to the scores of every non-seen pair, set non-candidates to
       -1e10, take the top-k. Accuracy = the true pair is among them, averaged separately over
       seen and unseen images.
    3. Bias list: for each unseen image that is correct at ``b = max_bias`` (1e3 upstream),
       ``d = (k-th best score among seen pairs) - (score of its true pair) - 1e-4``; sort the d,
       keep every ``max(len // 20, 1)``-th (``n_bins = 20``, upstream's "magic_binsize").
       (With the 1e-4, each listed image is still *just wrong* at its own bias and right from
       the next one: the curve is upstream's, slightly pessimistic, not an ROC through every
       point.)
    4. The curve: (seen acc, unseen acc) at every listed bias, then the point at ``max_bias``.
    5. ``best_seen`` / ``best_unseen`` = the maxima over the curve; ``best_hm`` = the maximum of
       the harmonic mean ``2su / (s + u)`` (0 where s or u is 0); ``auc = np.trapz(seen,
       unseen)`` (integrated over the unseen axis in list order; the biases ascend, so the
       unseen accuracy mostly rises, but nothing enforces it, as upstream).

    All accuracies are image-averaged (not class-averaged). Inputs may be numpy or torch.

    >>> import numpy as np
    >>> s = np.array([[0.9, 0.5], [0.6, 0.5], [0.7, 0.8]])   # pair 0 seen, pair 1 unseen
    >>> m = czsl_metrics(s, np.array([0, 1, 1]), np.array([True, False]))
    >>> m.biases.round(4).tolist()                  # 0.7 - 0.8 - 1e-4, 0.6 - 0.5 - 1e-4
    [-0.1001, 0.0999]
    >>> m.seen_curve.tolist(), m.unseen_curve.tolist()
    ([1.0, 1.0, 0.0], [0.0, 0.5, 1.0])
    >>> round(m.best_seen, 3), round(m.best_unseen, 3), round(m.best_hm, 3), round(m.auc, 3)
    (1.0, 1.0, 0.667, 0.75)
    """
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    seen = np.asarray(seen_mask.cpu() if isinstance(seen_mask, torch.Tensor) else seen_mask).astype(bool)
    n, p = s.shape
    closed = np.ones(p, bool) if closed_mask is None else np.asarray(
        closed_mask.cpu() if isinstance(closed_mask, torch.Tensor) else closed_mask).astype(bool)
    if seen.shape != (p,) or closed.shape != (p,) or y.shape != (n,):
        raise ValueError("seen_mask/closed_mask need one entry per pair and labels one per image")
    is_seen_img = seen[y]
    seen_idx, unseen_idx = np.nonzero(is_seen_img)[0], np.nonzero(~is_seen_img)[0]

    def accs(bias: float):
        b = s.copy()
        b[:, ~seen] += bias
        b[:, ~closed] = -1e10
        m = _topk_match(b, y, topk)
        sa = float(m[seen_idx].mean()) if len(seen_idx) else 0.0
        ua = float(m[unseen_idx].mean()) if len(unseen_idx) else 0.0
        return sa, ua, m

    seen_max, unseen_max, match_max = accs(max_bias)
    if len(unseen_idx) and seen.any():
        k_seen = np.sort(s[unseen_idx][:, seen], axis=1)[:, ::-1][:, topk - 1]
        diff = k_seen - s[unseen_idx, y[unseen_idx]]
        diff = np.sort(diff[match_max[unseen_idx]] - 1e-4)
        biases = diff[:: max(len(diff) // n_bins, 1)]
    else:
        biases = np.zeros(0)
    curve = [accs(float(b))[:2] for b in biases] + [(seen_max, unseen_max)]
    seen_c = np.array([c[0] for c in curve])
    unseen_c = np.array([c[1] for c in curve])
    trapz = getattr(np, "trapezoid", None) or np.trapz
    auc = float(trapz(seen_c, unseen_c))
    hm = _hm(seen_c, unseen_c)
    i = int(np.argmax(hm))
    sa0, ua0, _ = accs(0.0)
    b0 = s.copy()
    b0[:, ~closed] = -1e10
    top = np.argmax(b0, axis=1)
    if pair_state is not None and pair_object is not None:
        pst = np.asarray(pair_state.cpu() if isinstance(pair_state, torch.Tensor) else pair_state)
        pob = np.asarray(pair_object.cpu() if isinstance(pair_object, torch.Tensor) else pair_object)
        st_acc = float((pst[top] == pst[y]).mean())
        ob_acc = float((pob[top] == pob[y]).mean())
    else:
        st_acc = ob_acc = float("nan")
    return CzslMetrics(
        best_seen=float(seen_c.max()), best_unseen=float(unseen_c.max()), best_hm=float(hm[i]), auc=auc,
        hm_seen=float(seen_c[i]), hm_unseen=float(unseen_c[i]),
        hm_bias=float(biases[i]) if i < len(biases) else float(max_bias),
        seen_curve=seen_c, unseen_curve=unseen_c, biases=np.asarray(biases, dtype=np.float64),
        seen_acc=sa0, unseen_acc=ua0, state_acc=st_acc, object_acc=ob_acc,
        n_seen_images=int(len(seen_idx)), n_unseen_images=int(len(unseen_idx)),
    )
