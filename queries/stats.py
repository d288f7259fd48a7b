"""Paired bootstrap intervals for comparing explanation metrics over the same images.

For per-image values ``a_i`` and ``b_i`` of two map kinds on the same images, the statistic is
the mean difference ``mean_i (a_i − b_i)``; its 95% interval comes from resampling images with
replacement (``scipy.stats.bootstrap`` on the differences, percentile method, a fixed seed).
An interval that excludes 0 says the two kinds differ on this image population.

>>> import numpy as np
>>> r = paired_bootstrap([0.2, 0.3, 0.25, 0.1], [0.4, 0.5, 0.45, 0.3], n_resamples=200)
>>> round(r.mean, 3), r.low <= r.mean <= r.high, r.excludes_zero
(-0.2, True, True)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapCI", "paired_bootstrap", "bootstrap_mean"]


@dataclass
class BootstrapCI:
    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def as_list(self, digits: int = 4) -> list[float]:
        return [round(self.mean, digits), round(self.low, digits), round(self.high, digits)]


def bootstrap_mean(values, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Mean of ``values`` with a percentile bootstrap interval (NaNs dropped)."""
    # heavy: imported on use
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return BootstrapCI(float("nan"), float("nan"), float("nan"), 0)
    if len(v) == 1 or np.all(v == v[0]):
        return BootstrapCI(float(v.mean()), float(v.mean()), float(v.mean()), len(v))
    res = bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                    random_state=np.random.default_rng(seed))
    ci = res.confidence_interval
    return BootstrapCI(float(v.mean()), float(ci.low), float(ci.high), len(v))


def paired_bootstrap(a, b, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Mean of ``a − b`` over paired observations with a percentile bootstrap interval."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError("paired values need the same length")
    return bootstrap_mean(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed)
