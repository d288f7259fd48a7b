"""Contrastive reasons: "why class A and not class B" as per-attribute terms that sum to the gap.

A LaZSL score is a sum of per-attribute contributions, ``c_A(a) = Σ_r T_A[r,a]·F_A[r,a]``
(``score_A = Σ_a c_A(a)``; each attribute has plan mass 1/N, so ``c_A(a) = F̄_A(a)/N``, its
mass-weighted mean similarity over N). The gap ``score_A − score_B`` is split over *pairs* of
attributes, so that what both classes share cancels:

1. **Pairing** (:func:`pair_attributes`). Attributes with the same descriptor text are
   *shared* pairs (one-to-one). The rest are paired by text-embedding similarity (Hungarian
   assignment, pairs with cosine ≥ ``min_similarity`` only); what is left is unpaired.
2. **Class-prompt term.** A shared descriptor is the same words in both classes' prompts
   ("vorlik, which has a red crest" / "tessan, which has a red crest"), so its difference
   ``d_k = c_A(a_k) − c_B(b_k)`` can only come from the rest of the prompt (the class name)
   and from where the two plans put the mass. Shared pairs get the term **0**, and their
   differences go to one *class-prompt* term. Every other pair's difference also carries
   the prompt's effect on its slot, estimated by the mean over shared pairs
   ``ν = mean_k d_k`` (0 without shared pairs):

   .. math::
      \\text{term}(a,b) &= c_A(a) - c_B(b) - \\nu \\quad\\text{(paired, different texts)}\\\\
      \\text{term}(a) &= c_A(a), \\qquad \\text{term}(b) = -c_B(b) \\quad\\text{(unpaired)}\\\\
      \\text{prompt} &= \\textstyle\\sum_{k\\,\\text{shared}} d_k + \\nu\\cdot\\#\\{\\text{paired, different}\\}

   and ``Σ terms + prompt = score_A − score_B`` exactly.
3. **Ranking.** ``reason_rank`` orders every term of the gap (the class-prompt term and
   each non-shared attribute row) by its signed contribution toward A, largest first. Rank
   1 is what tipped the decision: since the terms sum to the gap and A outscored B, it is
   always positive. The most negative term is the strongest evidence for B
   (:meth:`ContrastResult.against`). Shared rows have no rank: their term is 0 by
   construction (their difference is in the prompt term), so ranking them would only say
   "the same words argue for neither class". ``prompt_rank`` is the prompt term's rank.

>>> import numpy as np
>>> r = contrast_terms([0.30, 0.20, 0.26], [0.29, 0.21, 0.24],
...                    ["a red crest", "plain wings", "a forked tail"],
...                    ["a red crest", "striped wings", "a forked tail"],
...                    emb_a=np.eye(3), emb_b=np.eye(3))
>>> [(row.text_a, row.text_b, round(row.term, 4), row.reason_rank) for row in r.rows]
[('a red crest', 'a red crest', 0.0, None), ('plain wings', 'striped wings', -0.025, 2), ('a forked tail', 'a forked tail', 0.0, None)]
>>> round(r.prompt_term, 4), round(r.prompt_term + sum(x.term for x in r.rows), 4), round(r.gap, 4), r.prompt_rank
(0.045, 0.02, 0.02, 1)
>>> r.tipped() is None, round(r.against().term, 4)  # None: the class prompt tipped it
(True, -0.025)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ContrastRow", "ContrastResult", "pair_attributes", "contrast_terms", "plan_contributions"]


def _norm(t: str) -> str:
    return " ".join(str(t).lower().split())


def pair_attributes(texts_a, texts_b, emb_a=None, emb_b=None, *, min_similarity: float = 0.5):
    """Pairs ``(i, j, shared)`` of attribute indices, then unpaired ``i`` of A and ``j`` of B.

    Same text (case and spacing ignored) -> shared pair; the rest by Hungarian assignment on
    cosine similarity of ``emb_a``/``emb_b`` (rows L2-normalised here), keeping pairs with
    cosine >= ``min_similarity``. Without embeddings the rest stay unpaired.
    Returns (pairs, unpaired_a, unpaired_b).
    """
    # heavy: imported on use
    from scipy.optimize import linear_sum_assignment

    na, nb = len(texts_a), len(texts_b)
    free_b: dict[str, list[int]] = {}
    for j, t in enumerate(texts_b):
        free_b.setdefault(_norm(t), []).append(j)
    pairs, rest_a = [], []
    for i, t in enumerate(texts_a):
        js = free_b.get(_norm(t))
        if js:
            pairs.append((i, js.pop(0), True))
        else:
            rest_a.append(i)
    rest_b = sorted(j for js in free_b.values() for j in js)
    if rest_a and rest_b and emb_a is not None and emb_b is not None:
        ea = np.asarray(emb_a, dtype=np.float64)[rest_a]
        eb = np.asarray(emb_b, dtype=np.float64)[rest_b]
        ea = ea / np.maximum(np.linalg.norm(ea, axis=1, keepdims=True), 1e-12)
        eb = eb / np.maximum(np.linalg.norm(eb, axis=1, keepdims=True), 1e-12)
        sim = ea @ eb.T
        ri, ci = linear_sum_assignment(-sim)
        used_a, used_b = set(), set()
        for i, j in zip(ri, ci):
            if sim[i, j] >= min_similarity:
                pairs.append((rest_a[i], rest_b[j], False))
                used_a.add(rest_a[i])
                used_b.add(rest_b[j])
        rest_a = [i for i in rest_a if i not in used_a]
        rest_b = [j for j in rest_b if j not in used_b]
    if len({p[0] for p in pairs}) != len(pairs) or max([p[0] for p in pairs], default=-1) >= na or \
            max([p[1] for p in pairs], default=-1) >= nb:  # pragma: no cover - internal invariant
        raise AssertionError("pairing is not one-to-one")
    pairs.sort(key=lambda p: p[0])
    return pairs, rest_a, rest_b


@dataclass
class ContrastRow:
    """One term of the gap. ``index_a``/``index_b`` are attribute positions (None when absent)."""

    index_a: int | None
    index_b: int | None
    text_a: str | None
    text_b: str | None
    shared: bool
    term: float
    reason_rank: int | None = None


@dataclass
class ContrastResult:
    """``gap = score_A − score_B = prompt_term + Σ row.term``; ``prompt_rank`` is the place the
    prompt term would take among the ranked attribute rows (1 = above all of them)."""

    gap: float
    prompt_term: float
    nu: float  # the per-slot class-prompt effect, mean difference over shared pairs
    rows: list[ContrastRow] = field(default_factory=list)
    prompt_rank: int | None = None

    def tipped(self) -> ContrastRow | None:
        """The attribute row of reason_rank 1, or None when the class-prompt term is rank 1."""
        return next((r for r in self.rows if r.reason_rank == 1), None)

    def top_term(self) -> float:
        """The largest signed term (rank 1): the prompt term or an attribute row's."""
        r = self.tipped()
        return self.prompt_term if r is None else r.term

    def against(self) -> ContrastRow | None:
        """The attribute row that argued most for B (most negative term), or None when none did."""
        rows = [r for r in self.rows if r.reason_rank is not None and r.term < 0]
        return min(rows, key=lambda r: r.term) if rows else None

    def top_attribute(self) -> ContrastRow | None:
        """The distinguishing attribute with the largest |term| (shared rows excluded)."""
        rows = [r for r in self.rows if not r.shared]
        return max(rows, key=lambda r: abs(r.term)) if rows else None


def contrast_terms(contrib_a, contrib_b, texts_a, texts_b, *, emb_a=None, emb_b=None,
                   min_similarity: float = 0.5) -> ContrastResult:
    """Split ``Σ contrib_a − Σ contrib_b`` into per-attribute terms and a class-prompt term.

    contrib_a (N_A,), contrib_b (N_B,): each attribute's contribution to its class's score
    (:func:`plan_contributions` for LaZSL); texts_*: the descriptor texts (without the class
    name); emb_*: optional embeddings used to pair non-identical texts. See the module doc.
    """
    ca = np.asarray(contrib_a, dtype=np.float64).reshape(-1)
    cb = np.asarray(contrib_b, dtype=np.float64).reshape(-1)
    if len(ca) != len(texts_a) or len(cb) != len(texts_b):
        raise ValueError("one text per contribution")
    pairs, ua, ub = pair_attributes(texts_a, texts_b, emb_a, emb_b, min_similarity=min_similarity)
    shared_d = [ca[i] - cb[j] for i, j, s in pairs if s]
    nu = float(np.mean(shared_d)) if shared_d else 0.0
    rows = []
    n_diff = 0
    for i, j, s in pairs:
        if s:
            term = 0.0
        else:
            term = float(ca[i] - cb[j] - nu)
            n_diff += 1
        rows.append(ContrastRow(i, j, texts_a[i], texts_b[j], s, term))
    rows += [ContrastRow(i, None, texts_a[i], None, False, float(ca[i])) for i in ua]
    rows += [ContrastRow(None, j, None, texts_b[j], False, float(-cb[j])) for j in ub]
    prompt = float(np.sum(shared_d) + nu * n_diff)
    res = ContrastResult(gap=float(ca.sum() - cb.sum()), prompt_term=prompt, nu=nu, rows=rows)
    # every term toward A, largest first; the prompt goes first among equals, then row order (stable sort)
    ranked = sorted([None] + [r for r in rows if not r.shared], key=lambda r: -(prompt if r is None else r.term))
    for k, r in enumerate(ranked, 1):
        if r is None:
            res.prompt_rank = k
        else:
            r.reason_rank = k
    return res


def plan_contributions(plan, fused) -> np.ndarray:
    """Per attribute column: ``Σ_r T[r, n]·F[r, n]`` (plans (..., R, N) -> (..., N))."""
    return (np.asarray(plan, dtype=np.float64) * np.asarray(fused, dtype=np.float64)).sum(-2)
