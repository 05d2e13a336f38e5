"""The one bootstrap (bmglib.metrics.bootstrap) and the one gap sign (schema.GAP_GROUPS)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmglib.data import schema
from bmglib.metrics import bootstrap, fairness
from bmglib.vae import laplace


def test_percentile_ci_covers_a_known_mean_at_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        x = rng.normal(1.0, 2.0, 60)
        lo, hi = bootstrap.percentile_ci(bootstrap.mean_replicates(x, 400, k), 0.95)
        hits += lo <= 1.0 <= hi
    assert hits / 200 >= 0.9


def test_percentile_ci_levels_and_nan_replicates():
    reps = np.arange(101, dtype=float)
    assert bootstrap.percentile_ci(reps, 0.9) == pytest.approx((5.0, 95.0))
    assert bootstrap.percentile_ci(np.r_[reps, np.nan, np.nan], 0.9) == pytest.approx((5.0, 95.0))
    assert all(np.isnan(bootstrap.percentile_ci([np.nan, np.nan])))


def test_resample_and_counts_shapes_and_ranges():
    idx = bootstrap.resample(7, 50, 0)
    assert idx.shape == (50, 7) and idx.min() >= 0 and idx.max() <= 6
    counts = bootstrap.resample_counts(7, 50, 0)
    assert counts.shape == (50, 7) and (counts.sum(1) == 7).all() and counts.min() >= 0


def test_stratified_resampling_keeps_group_sizes():
    labels = np.array([3, 1, 1, 2, 3, 3, 1, 2, 2, 2, 6])
    strata = bootstrap.strata_of(labels)
    assert [labels[s[0]] for s in strata] == [3, 1, 2, 6]  # order of first appearance
    want = pd.Series(labels).value_counts().sort_index()
    for idx in bootstrap.stratified(strata, 100, 0):
        assert len(idx) == len(labels)
        pd.testing.assert_series_equal(pd.Series(labels[idx]).value_counts().sort_index(), want)
    # an empty stratum contributes nothing and is allowed
    assert all(len(i) == 3 for i in bootstrap.stratified([np.array([0, 1, 2]), []], 5, 0))


def test_draws_are_deterministic_for_a_seed_and_a_generator_continues_its_stream():
    x = np.random.default_rng(1).random(30)
    a = bootstrap.mean_replicates(x, 100, 5)
    assert np.array_equal(a, bootstrap.mean_replicates(x, 100, 5))
    assert not np.array_equal(a, bootstrap.mean_replicates(x, 100, 6))
    assert np.array_equal(bootstrap.resample(4, 3, [5, 1]), bootstrap.resample(4, 3, [5, 1]))
    rng = np.random.default_rng(5)
    first, second = bootstrap.mean_replicates(x, 100, rng), bootstrap.mean_replicates(x, 100, rng)
    assert np.array_equal(first, a) and not np.array_equal(first, second)
    s1 = list(bootstrap.stratified(bootstrap.strata_of(x > 0.5), 10, 3))
    s2 = list(bootstrap.stratified(bootstrap.strata_of(x > 0.5), 10, 3))
    assert all(np.array_equal(u, v) for u, v in zip(s1, s2, strict=True))


def test_paired_differences_use_the_same_indices_on_both_sides():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 200)
    b = a + 0.1 + rng.normal(0, 0.05, 200)  # b − a ≈ 0.1, both sides share most of their noise
    paired = bootstrap.replicates(lambda i: b[i].mean() - a[i].mean(), 500, 7, n=len(a))
    assert np.allclose(paired, bootstrap.mean_replicates(b - a, 500, 7))  # same indices, both sides
    lo, hi = bootstrap.percentile_ci(paired)
    assert lo > 0.09 and hi < 0.11
    unpaired = bootstrap.mean_replicates(b, 500, 8) - bootstrap.mean_replicates(a, 500, 9)
    u_lo, u_hi = bootstrap.percentile_ci(unpaired)
    assert u_lo < 0 < u_hi and (u_hi - u_lo) > 10 * (hi - lo)


def test_replicates_needs_exactly_one_design():
    with pytest.raises(ValueError, match="exactly one of n"):
        bootstrap.replicates(np.mean, 5, 0)
    with pytest.raises(ValueError, match="exactly one of n"):
        bootstrap.replicates(np.mean, 5, 0, n=3, strata=[np.arange(3)])
    assert bootstrap.replicates(len, 4, 0, strata=[np.arange(3), np.arange(2)]).tolist() == [5.0] * 4


def test_every_gap_is_light_minus_dark_by_default():
    assert schema.GAP_GROUPS == ("I-III", "IV-VI")
    assert set(schema.GAP_GROUPS) == set(schema.FST_GROUPS)
    # light skin: 9 of 10 melanomas found; dark skin: 5 of 10
    groups = np.repeat(["I-III", "IV-VI"], 10)
    y = np.ones(20, int)
    pred = np.r_[np.ones(9), 0, np.ones(5), np.zeros(5)].astype(int)
    g = fairness.gap(y, pred, groups, n_boot=200)
    assert g["gap"] == pytest.approx(0.4) and (g["n_a"], g["n_b"]) == (10, 10)
    fst = np.repeat([2, 5], 10)
    preds = pd.DataFrame({"md5hash": np.arange(20), "fitzpatrick_scale": fst, "y_true": y,
                          "y_pred": pred, "p_melanoma": pred * 0.8 + 0.1})
    s = fairness.seed_gap(preds, "sensitivity", n_boot=50)
    assert (s["a"], s["b"]) == schema.GAP_GROUPS and s["value"] == pytest.approx(0.4)
    # EDFR = FNR(IV–VI) − FNR(I–III) is the same number as the sensitivity gap I–III − IV–VI
    assert fairness.EDFR_GROUPS == schema.GAP_GROUPS[::-1]
    assert fairness.edfr(preds, n_boot=50)["value"] == pytest.approx(s["value"])
    # a per-image measure: light skin has the larger value → gap > 0
    m = laplace.mean_gap(np.where(fst <= 3, 2.0, 1.0) + np.tile([0.0, 0.1], 10), fst, n_boot=100)
    assert m["gap"] == pytest.approx(1.0) and m["ci_low"] > 0 and (m["n_a"], m["n_b"]) == (10, 10)
