"""Bootstrap resampling and percentile confidence intervals: the one implementation in bmg.

Every CI in the package is a percentile bootstrap interval built from these pieces:

* :func:`resample` — (n_boot, n) indices drawn with replacement: one sample, all replicates.
* :func:`resample_counts` — a resample as (n_boot, n) counts (how often each observation was
  drawn), for statistics that are sums over observations (one matrix product, no loop).
* :func:`stratified` — replicate by replicate, indices resampled *within* each stratum (FST,
  FST group, positives/negatives, or two independent image sets), so every replicate keeps each
  stratum's N; :func:`strata_of` makes the strata of a label array.
* :func:`replicates` — a statistic of the resampled indices, one value per replicate. A
  statistic that reads several quantities through the same indices is a **paired** bootstrap
  (Spearman ρ of two scores of the same images; every training seed's predictions on one
  resample of the test images; the difference of two measures of the same images), so their
  difference is read replicate by replicate and its CI is not inflated by unpaired noise.
* :func:`mean_replicates` — the mean of each resample of a vector (vectorised).
* :func:`percentile_ci` — the interval [(1 − level)/2, (1 + level)/2] of the replicates.

Random numbers: every sampler takes ``rng``, a ``np.random.Generator`` or anything
``np.random.default_rng`` accepts (an int, a sequence of ints). A Generator passed to several
calls continues its stream, so a caller's numbers depend on its seed and on the order of its
calls; both are part of each caller's contract (a seed reproduces its CIs to the byte).

Gaps are light minus dark, measure(I–III) − measure(IV–VI): :data:`bmglib.data.schema.GAP_GROUPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

Rng = np.random.Generator | int | Sequence[int]


def percentile_ci(reps, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates ``reps`` (n_boot,) float at ``level`` in (0, 1).

    NaN replicates (a metric undefined on a resample, e.g. sensitivity without melanomas) are
    left out; (nan, nan) when no replicate is finite."""
    r = np.asarray(reps, float)
    if not np.isfinite(r).any():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(r, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def resample(n: int, n_boot: int, rng: Rng) -> np.ndarray:
    """(n_boot, n) int indices in [0, n) drawn with replacement; row b is replicate b."""
    return np.random.default_rng(rng).integers(0, n, (n_boot, n))


def resample_counts(n: int, n_boot: int, rng: Rng) -> np.ndarray:
    """(n_boot, n) int counts, each row summing to n: how often each of n observations is drawn
    in each replicate (multinomial; the distribution of :func:`resample`, not its draws)."""
    return np.random.default_rng(rng).multinomial(n, np.full(n, 1 / n), size=n_boot)


def strata_of(labels) -> list[np.ndarray]:
    """Index arrays (int) of each distinct value of ``labels`` (N,), in order of first appearance."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == g) for g in pd.unique(labels)]


def stratified(strata: Sequence[np.ndarray], n_boot: int, rng: Rng) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` replicates, each (N,) int with N = Σ stratum sizes: every stratum's indices
    resampled with replacement within the stratum, concatenated in stratum order. Draws go
    replicate by replicate, stratum by stratum (so a stratum's draws depend on those before it)."""
    rng = np.random.default_rng(rng)
    strata = [np.asarray(s, dtype=np.intp) for s in strata]
    for _ in range(n_boot):
        yield np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])


def replicates(stat: Callable[[np.ndarray], float], n_boot: int, rng: Rng, *, n: int | None = None,
               strata: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """(n_boot,) float: ``stat(idx)`` for the indices ``idx`` of each replicate, drawn by
    :func:`resample` of ``n`` observations or by :func:`stratified` over ``strata`` (give one)."""
    if (n is None) == (strata is None):
        raise ValueError("replicates: give exactly one of n (plain resample) or strata (stratified)")
    draws = resample(n, n_boot, rng) if strata is None else stratified(strata, n_boot, rng)
    return np.array([stat(i) for i in draws], dtype=float)


def mean_replicates(values, n_boot: int, rng: Rng) -> np.ndarray:
    """(n_boot,) float: the mean of each resample of ``values`` (n,) (n ≥ 1)."""
    v = np.asarray(values, float)
    return v[resample(len(v), n_boot, rng)].mean(1)
