"""bmglib.metrics.hierarchical: the paired hierarchical bootstrap on simulated runs with a known
effect (coverage), pairing, the generator level, input errors and the statistics' conventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmglib.metrics import fairness
from bmglib.metrics import hierarchical as H

DELTA = 0.1  # true lift of the dark-skin sensitivity: the true Δ(fnr_gap) is −DELTA


def _simulate(rng, G=6, C=2, n_per_fst=24, h=0.2, delta=DELTA, shared=0.85):
    """Runs on one test set: image difficulty d_i; reference classifier c: p = 0.45 + d_i + u_c;
    arm run (g, c): the same + (delta + b_g + e_gc) on FST IV–VI (generator effect b_g ~ U(±h),
    classifier noise e_gc ~ U(±0.05)); every prediction a Bernoulli draw 1{V < p}, V the image's
    own uniform draw (shared by every run: a hard image is missed by most classifiers) with
    probability ``shared``, else the run's. Independent draws (shared=0) are noise that the run and
    the image levels both resample, so the CI covers ~97-98 %; at 0.85 it covers ~95 %."""
    fst = np.repeat(np.arange(1, 7), n_per_fst)
    n = len(fst)
    y = np.tile([1, 0], n // 2)
    dark = (fst >= 4).astype(float)
    d, u, v = rng.uniform(-0.15, 0.15, n), rng.uniform(-0.05, 0.05, C), rng.random(n)
    ids = [f"img{i:03d}" for i in range(n)]
    rows = []

    def add(arm, g, c, p):
        draw = np.where(rng.random(n) < shared, v, rng.random(n))
        rows.append(pd.DataFrame({"arm": arm, "generator_seed": g, "classifier_seed": c, "md5hash": ids,
                                  "fitzpatrick_scale": fst, "y_true": y,
                                  "y_pred": (draw < p).astype(int), "p_melanoma": p}))

    for c in range(C):
        add("real", np.nan, c, 0.45 + d + u[c])
    for g in range(G):
        b = rng.uniform(-h, h)
        for c in range(C):
            add("bmg", g, c, 0.45 + d + u[c] + dark * (delta + b + rng.uniform(-0.05, 0.05)))
    return pd.concat(rows, ignore_index=True)


def test_ci_covers_the_true_effect_on_simulated_data():
    rng = np.random.default_rng(7)
    hits = []
    for s in range(150):
        r = H.paired_effect(_simulate(rng), "bmg", n_boot=200, rng=s)
        hits.append(r["ci_low"] <= -DELTA <= r["ci_high"])
    assert 0.88 <= np.mean(hits) <= 0.99, np.mean(hits)
    assert r["variance_sources"] == "generator seeds, classifier seeds, test images (within FST)"
    assert (r["n_generator_seeds"], r["n_classifier_seeds"], r["n_reference_seeds"], r["n_images"]) == (6, 12, 2, 144)


def test_an_arm_identical_to_the_reference_gives_zero_with_a_degenerate_ci():
    df = _simulate(np.random.default_rng(0), G=1, C=3)
    ref = df[df["arm"] == "real"]
    same = pd.concat([ref.assign(arm="copy", generator_seed=g) for g in range(3)], ignore_index=True)
    both = pd.concat([ref, same], ignore_index=True)
    for stat in (H.fnr_gap, H.auc_overall, H.es_auc):
        r = H.paired_effect(both, "copy", statistic=stat, n_boot=100, rng=1)
        assert (r["estimate"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0), stat.__name__
        assert r["arm_value"] == r["reference_value"]


def test_ignoring_the_generator_level_narrows_the_ci():
    df = _simulate(np.random.default_rng(3), G=5, C=3, h=0.3)
    full = H.paired_effect(df, "bmg", n_boot=300, rng=0)
    fixed = H.paired_effect(df, "bmg", n_boot=300, rng=0, resample_generators=False)
    assert full["estimate"] == fixed["estimate"]
    assert fixed["ci_high"] - fixed["ci_low"] < 0.8 * (full["ci_high"] - full["ci_low"])
    assert "generator seeds held fixed" in fixed["variance_sources"]
    one = H.paired_effect(df[df["generator_seed"].fillna(-1) <= 0], "bmg", n_boot=50, rng=0)
    assert one["n_generator_seeds"] == 1 and "one generator seed" in one["variance_sources"]


def test_input_errors_name_the_problem():
    df = _simulate(np.random.default_rng(1), G=2, C=2, n_per_fst=4)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['classifier_seed'\]"):
        H.paired_effect(df.drop(columns="classifier_seed"), "bmg")
    extra = df[(df["arm"] == "bmg") & (df["classifier_seed"] == 1)].assign(classifier_seed=5)
    with pytest.raises(ValueError, match=r"unpaired classifier seeds: .*\[5\]"):
        H.paired_effect(pd.concat([df, extra]), "bmg")
    with pytest.raises(ValueError, match="cover different test images"):
        H.paired_effect(df.drop(index=df.index[(df["arm"] == "bmg")][:1]), "bmg")
    with pytest.raises(ValueError, match="reference 'none' not in"):
        H.paired_effect(df, "bmg", reference="none")


def test_statistics_follow_the_fairness_module():
    df = _simulate(np.random.default_rng(2), G=1, C=3)
    ref = df[df["arm"] == "real"].rename(columns={"classifier_seed": "seed"})
    sp = fairness.stack_seeds(ref.drop(columns=["arm", "generator_seed"]))
    # fnr_gap = FNR(IV–VI) − FNR(I–III) = EDFR, the sensitivity gap light minus dark
    assert H.fnr_gap(sp) == pytest.approx(fairness.edfr(sp, n_boot=2)["value"], abs=1e-12)
    assert H.fnr_gap(sp) == pytest.approx(fairness.seed_gap(sp, "sensitivity", n_boot=2)["value"], abs=1e-12)
    groups = np.array(["I-III" if f <= 3 else "IV-VI" for f in sp.fst])
    per_run = [fairness.es_auc(sp.y_true, sp.y_score[s], groups) for s in range(3)]
    assert H.es_auc(sp) == pytest.approx(np.mean([r["es_auc"] for r in per_run]), abs=1e-12)
    assert H.auc_overall(sp) == pytest.approx(np.mean([r["auc_overall"] for r in per_run]), abs=1e-12)


def test_minimal_detectable_effect():
    assert H.minimal_detectable_effect(-0.1, 0.1) == pytest.approx(0.1 * (1.96 + 0.84) / 1.96, rel=1e-3)
    assert H.minimal_detectable_effect(0.0, 0.2, level=0.9, power=0.5) == pytest.approx(0.1)


def test_arm_value_is_the_reference_value_of_paired_effect_with_a_ci_around_it():
    df = _simulate(np.random.default_rng(5), G=2, C=3)
    paired = H.paired_effect(df, "bmg", n_boot=50, rng=0)
    real = H.arm_value(df, "real", n_boot=300, rng=0)
    assert real["estimate"] == pytest.approx(paired["reference_value"])
    assert real["ci_low"] < real["estimate"] < real["ci_high"]
    assert real["variance_sources"] == "classifier seeds, test images (within FST)" and real["n_classifier_seeds"] == 3
    bmg = H.arm_value(df, "bmg", n_boot=100, rng=0)
    assert bmg["variance_sources"].startswith("generator seeds") and bmg["n_classifier_seeds"] == 6
    with pytest.raises(ValueError, match="'nope' not in"):
        H.arm_value(df, "nope")


def test_paired_contrast_of_two_arms_covers_the_true_difference_and_is_zero_for_twins():
    rng = np.random.default_rng(11)
    hits = []
    for s in range(60):
        a = _simulate(rng, G=4, C=2, delta=DELTA)
        b = _simulate(rng, G=4, C=2, delta=0.0)
        b = b[b["arm"] == "bmg"].assign(arm="standard")  # standard: no lift, paired with a's real runs
        both = pd.concat([a, b], ignore_index=True)
        r = H.paired_contrast(both, "bmg", "standard", n_boot=150, rng=s)
        hits.append(r["ci_low"] <= -DELTA <= r["ci_high"])
    assert 0.85 <= np.mean(hits) <= 1.0, np.mean(hits)
    assert r["estimate"] == pytest.approx(r["delta_a"] - r["delta_b"])
    # a copy of the arm: Δ − Δ = 0, but its generators are resampled independently (different
    # models in a real design), so the interval is not degenerate; it straddles 0
    twin = pd.concat([a, a[a["arm"] == "bmg"].assign(arm="copy")], ignore_index=True)
    r = H.paired_contrast(twin, "bmg", "copy", n_boot=200, rng=0)
    assert r["estimate"] == 0.0 and r["ci_low"] < 0 < r["ci_high"]
    with pytest.raises(ValueError, match="both 'bmg'"):
        H.paired_contrast(twin, "bmg", "bmg")
