"""How the map kind on screen scored on this store: the lines ``explain`` and ``report`` quote.

They read the latest ``faithfulness`` summary (table ``faithfulness_summary``) that measured
the kind, and say plainly when it was not better than random maps of the same kind.
"""
from __future__ import annotations

import duckdb

from stores import tables
from stores.catalog import Catalog

from .map_kinds import RANDOM_OF

METRICS = ("deletion", "insertion", "road", "pointing")
HIGHER_IS_BETTER = {"deletion": False, "insertion": True, "road": True, "pointing": True}


def honesty_lines(cat: Catalog, run_id: int, kind: str) -> list[str]:
    """How ``kind`` scored on this store when ``faithfulness`` measured it, and a plain
    statement when it was not better than random; a pointer to the command when never measured."""
    try:
        s = tables.map_kind_summary(cat, run_id, kind)
    except duckdb.CatalogException:  # a store from before migration m014 opened read-only: no summary table
        return []
    if s is None:
        return [f"{kind} maps were not measured on this store yet: `pipeline faithfulness --maps {kind}`."]
    where = f"faithfulness run {s['faith_run_id']}" + (f" on run {s['run_id']}" if s["run_id"] != run_id else "")
    parts, worse = [], []
    rname = RANDOM_OF.get(kind, "random")
    for m in METRICS:
        r = s["metrics"].get(m)
        if r is None or r["diff"] is None:
            continue
        ref = f"chance {r['chance']:.2f}, {rname} {r['random_value']:.2f}" if m == "pointing" and r["chance"] is not None \
            else f"{rname} {r['random_value']:.3f}"
        parts.append(f"{m} {r['value']:.3f} vs {ref}")
        if not r["better"]:
            worse.append(m)
    if not parts:
        return []
    n = max(r["images"] for r in s["metrics"].values())
    out = [f"{kind} maps on this store ({where}, {n} images): " + "; ".join(parts) + "."]
    if worse:
        out.append(f"{kind} maps are NOT better than {rname} maps on {', '.join(worse)} here (the 95% interval of the "
                   "difference includes 0 or favours random): do not read them as evidence for those.")
    else:
        out.append(f"{kind} maps beat {rname} maps on every measured metric (95% intervals of the differences exclude 0).")
    return out
