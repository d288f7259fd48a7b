"""queries.stats: paired bootstrap against a plain resampling loop."""
from __future__ import annotations

import numpy as np

from queries.stats import bootstrap_mean, paired_bootstrap


def test_paired_bootstrap_matches_plain_loop():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 0.2, 150)
    b = a + rng.normal(0.05, 0.1, 150)
    r = paired_bootstrap(a, b, n_resamples=4000, seed=1)
    d = a - b
    boots = [rng.choice(d, len(d)).mean() for _ in range(4000)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    assert r.mean == d.mean()
    assert abs(r.low - lo) < 0.004 and abs(r.high - hi) < 0.004
    assert r.excludes_zero and r.high < 0


def test_no_difference_interval_covers_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=200)
    r = bootstrap_mean(x, n_resamples=2000)
    assert r.low < 0 < r.high and not r.excludes_zero
    assert bootstrap_mean([np.nan, 1.0, 1.0]).n == 2
