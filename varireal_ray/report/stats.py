"""The statistics of the report, as pure functions of trial results.

- Per condition: mean test top-1 over seeds with a t-interval (none with a single seed).
- Feasible vs infeasible, per attribute: the paired difference in test accuracy on the same test
  images (same seed), with a bootstrap interval over test images and an exact McNemar test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None
    high: float | None
    n: int

    def fmt(self, scale: float = 100.0) -> str:
        if self.low is None:
            return f"{self.mean * scale:.1f} (n={self.n})"
        return f"{self.mean * scale:.1f} ± {(self.high - self.mean) * scale:.1f} (n={self.n})"


def mean_interval(values: list[float], confidence: float) -> Interval:
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, None, None, len(x))
    half = float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


@dataclass(frozen=True)
class PairedComparison:
    attribute: str
    use_real: bool
    diff: float  # feasible minus infeasible test top-1 (fraction)
    low: float
    high: float
    mcnemar_p: float
    n_images: int
    n_seeds: int


def paired_correctness(feasible: list[dict], infeasible: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-image correctness of matching seeds, aligned on test ids: (seeds x images) each."""
    by_seed = {r["seed"]: r for r in infeasible}
    rows_f, rows_i = [], []
    for rf in sorted(feasible, key=lambda r: r["seed"]):
        ri = by_seed.get(rf["seed"])
        if ri is None:
            continue
        index = {t: k for k, t in enumerate(ri["test_ids"])}
        common = [t for t in rf["test_ids"] if t in index]
        pos_f = {t: k for k, t in enumerate(rf["test_ids"])}
        rows_f.append([rf["test_correct_selected"][pos_f[t]] for t in common])
        rows_i.append([ri["test_correct_selected"][index[t]] for t in common])
    if not rows_f:
        raise ValueError("no seed has both a feasible and an infeasible result")
    return np.asarray(rows_f, dtype=float), np.asarray(rows_i, dtype=float)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value on paired binary outcomes (pooled over seeds)."""
    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * sps.binom.cdf(min(only_a, only_b), n, 0.5)))


def compare(attribute: str, use_real: bool, feasible: list[dict], infeasible: list[dict], samples: int, confidence: float, seed: int = 0) -> PairedComparison:
    f, i = paired_correctness(feasible, infeasible)
    per_image = (f - i).mean(axis=0)  # mean over seeds, one value per test image
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_image.size, size=(samples, per_image.size))
    boot = per_image[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return PairedComparison(
        attribute=attribute,
        use_real=use_real,
        diff=float(per_image.mean()),
        low=float(np.quantile(boot, alpha)),
        high=float(np.quantile(boot, 1 - alpha)),
        mcnemar_p=mcnemar_exact(f.ravel(), i.ravel()),
        n_images=per_image.size,
        n_seeds=f.shape[0],
    )
