""""Why A and not B" for ``explain`` and ``report``: the stored contrast terms of one image.

Reads the ``contrasts`` view (written by classify, :mod:`pipeline.stages.contrasts`); for a run
of an OT method written before the table existed it computes the same terms from the stored
alignments without writing. Each panel lists both classes' attributes side by side with the
signed term of each pair (positive: argues for A, negative: for B) and the class-prompt term;
the terms sum to the score gap. Every term, the class prompt's included, is ranked by its
signed contribution toward A (``reason_rank``); the headline names rank 1, what tipped the
decision, and separately the strongest evidence for B.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stores import explanations, tables
from stores.catalog import Catalog

from ..names import norm_class_name
from ..stages.contrasts import compute_contrasts
from ..stages.methods import find_method

PROMPT = "(class prompt)"


@dataclass
class ContrastPanel:
    class_name: str  # A, the prediction
    other_name: str  # B
    other_class_id: int
    runner_up: bool
    true_class: bool
    gap: float  # score_A − score_B = prompt_term + Σ row terms
    prompt_term: float
    rows: list[dict] = field(default_factory=list)  # attribute, other_attribute, shared, term, reason_rank
    prompt_rank: int | None = None  # the class-prompt term's reason_rank

    @property
    def role(self) -> str:
        return " and ".join(w for w, on in (("runner-up", self.runner_up), ("true class", self.true_class)) if on)

    @property
    def has_shared(self) -> bool:
        """The class-prompt term is estimated from shared descriptors; without any it is 0."""
        return any(r["shared"] for r in self.rows)

    @property
    def reason(self) -> dict | None:
        """reason_rank 1, what tipped the decision: an attribute row, or the class-prompt row."""
        if self.prompt_rank == 1:
            return self.prompt_row()
        return next((r for r in self.rows if r["reason_rank"] == 1), None)

    @property
    def headline_attribute(self) -> dict | None:
        """The attribute row the headline names: what tipped it, or (when the class prompt did)
        the strongest evidence for B; None when the headline names no attribute."""
        for r in (self.reason, self.against):
            if r is not None and r.get("attribute") != PROMPT:
                return r
        return None

    @property
    def against(self) -> dict | None:
        """The term that argued most for B (most negative; the prompt row included), or None."""
        terms = [r for r in self.rows if r["reason_rank"] is not None] + [self.prompt_row()]
        worst = min(terms, key=lambda r: r["term"])
        return worst if worst["term"] < 0 else None

    def prompt_row(self) -> dict:
        return dict(attribute=PROMPT, other_attribute=None, shared=False, term=self.prompt_term,
                    reason_rank=self.prompt_rank)

    def favours(self, term: float) -> str:
        return self.class_name if term > 0 else self.other_name if term < 0 else "neither"

    def headline(self) -> str:
        """What tipped A over B (rank 1) and, separately, the strongest evidence for B."""
        top = self.reason
        if top is None:
            return f"{self.class_name} over {self.other_name} by {self.gap:+.4f}"
        out = f"{self.class_name} over {self.other_name} by {self.gap:+.4f}: {term_text(top)} {top['term']:+.4f} tipped it"
        against = self.against
        if against is None:
            return out + f"; no term favoured {self.other_name}"
        return out + f", outweighing {term_text(against)}, which favoured {self.other_name} by {-against['term']:.4f}"

    def lines(self) -> list[str]:
        out = [f"why {self.class_name} and not {self.other_name} ({self.role}): {self.headline()}",
               f"  {'term':>8}  {'reason':>6}  {self.class_name[:30]:<30}  {self.other_name[:30]}"]
        prank = "" if self.prompt_rank is None else str(self.prompt_rank)
        out.append(f"  {self.prompt_term:+8.4f}  {prank:>6}  {PROMPT:<30}  (the class names' effect on every descriptor)")
        for r in self.rows:
            rank = "" if r["reason_rank"] is None else str(r["reason_rank"])
            a = r["attribute"] or "-"
            b = "= (shared)" if r["shared"] else (r["other_attribute"] or "-")
            out.append(f"  {r['term']:+8.4f}  {rank:>6}  {a[:30]:<30}  {b}")
        return out

    def to_dict(self) -> dict:
        return dict(class_name=self.class_name, other_class=self.other_name, runner_up=self.runner_up,
                    true_class=self.true_class, gap=self.gap, prompt_term=self.prompt_term, prompt_rank=self.prompt_rank,
                    reason=None if self.reason is None else self.reason["attribute"] or self.reason["other_attribute"],
                    against=None if self.against is None else self.against["attribute"] or self.against["other_attribute"],
                    terms=[dict(r) for r in self.rows])


def term_text(r: dict) -> str:
    """How a headline names a term: the class-name prompt, or the attribute pair."""
    return "the class-name prompt" if r["attribute"] == PROMPT and r["other_attribute"] is None else pair_text(r)


def pair_text(r: dict) -> str:
    """'a vs b', or which class alone has the attribute."""
    a, b = r["attribute"], r["other_attribute"]
    if a and b:
        return f"{a} vs {b}"
    return f"{a} (only here)" if a else f"{b} (only the other class)"


def contrast_panels(cat: Catalog, run: tables.RunRecord, image_id: int) -> list[ContrastPanel]:
    """The image's contrasts in a run: vs the runner-up first, then vs the true class."""
    rows = tables.contrast_rows(cat, run.run_id, image_id) if explanations.has_contrast_terms(cat) else []
    if not rows:
        rows = _computed_rows(cat, run, image_id)
    panels: dict[int, ContrastPanel] = {}
    for r in rows:
        p = panels.get(r["other_class_id"])
        if p is None:
            p = panels[r["other_class_id"]] = ContrastPanel(r["class_name"], r["other_class_name"], r["other_class_id"],
                                                            r["runner_up"], r["true_class"], r["gap"], 0.0)
        if r["attr_id"] is None and r["other_attr_id"] is None:
            p.prompt_term, p.prompt_rank = r["term"], r["reason_rank"]
        else:
            p.rows.append({k: r[k] for k in ("attribute", "other_attribute", "shared", "term", "reason_rank", "attr_id",
                                             "other_attr_id")})
    return sorted(panels.values(), key=lambda p: (not p.runner_up, p.other_name))


def missing_true_note(cat: Catalog, run: tables.RunRecord, image_id: int, label: str | None,
                      panels: list[ContrastPanel]) -> str | None:
    """Why a wrong prediction has no contrast with its true class (or None)."""
    if not label or any(p.true_class for p in panels):
        return None
    by_norm = tables.class_ids_by_norm(cat)
    true = by_norm.get(norm_class_name(label))
    ranks = explanations.prediction_ranks(cat, run.run_id, image_id)
    if true is None or ranks.get(true) == 1:
        return None
    if true not in ranks:
        return f"the true class {label} was not among the run's candidates (the top-k shortlist): no contrast"
    return f"no plan stored for the true class {label} (see --alignments-top): no contrast"


def _computed_rows(cat: Catalog, run: tables.RunRecord, image_id: int) -> list[dict]:
    spec = find_method(run.method)
    if spec is None or not spec.writes_contrasts:
        return []
    names = tables.class_names(cat)
    out = []
    for c in compute_contrasts(cat, run.run_id, [image_id]):
        base = dict(class_name=names[c.class_id], other_class_id=c.other_class_id, other_class_name=names[c.other_class_id],
                    runner_up=c.runner_up, true_class=c.true_class, gap=c.result.gap)
        out.append(dict(base, attr_id=None, other_attr_id=None, attribute=PROMPT, other_attribute=None, shared=False,
                        term=c.result.prompt_term, reason_rank=c.result.prompt_rank))
        for r in sorted(c.result.rows, key=lambda r: (r.reason_rank is None, r.reason_rank or 0)):
            out.append(dict(base, attr_id=None if r.index_a is None else int(c.attr_ids[r.index_a]),
                            other_attr_id=None if r.index_b is None else int(c.other_attr_ids[r.index_b]),
                            attribute=r.text_a, other_attribute=r.text_b, shared=r.shared, term=r.term,
                            reason_rank=r.reason_rank))
    return out
