import numpy as np
import pytest

from bmglib.metrics import fairness as F


def test_hand_made_predictions():
    # group A: 4 melanomas all found, 4 benign all right; group B: 4 melanomas, 1 found, 1 false alarm
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 2)
    p = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    g = np.array(["A"] * 8 + ["B"] * 8)
    t = F.group_metrics(y, p, g, n_boot=200)
    assert t.loc["A", "sensitivity"] == 1.0 and t.loc["B", "sensitivity"] == 0.25
    assert t.loc["B", "specificity"] == 0.75 and t.loc["B", "fnr"] == 0.75
    assert t.loc["overall", "accuracy"] == pytest.approx(12 / 16)
    assert t.loc["A", "n"] == 8 and t.loc["B", "n_pos"] == 4
    assert t.loc["B", "sensitivity_ci_low"] <= 0.25 <= t.loc["B", "sensitivity_ci_high"]
    gap = F.gap(y, p, g, "A", "B", n_boot=200)
    assert gap["gap"] == 0.75 and gap["n_pos_b"] == 4


def test_gap_ci_covers_zero_without_a_real_difference_and_excludes_it_with_one():
    rng = np.random.default_rng(0)
    g = np.repeat(["A", "B"], 400)
    y = np.tile([1, 0], 400)
    same = (rng.random(800) < 0.8).astype(int) * y
    r = F.gap(y, same, g, "A", "B", n_boot=500)
    assert r["ci_low"] < 0 < r["ci_high"]
    worse = same.copy()
    worse[(g == "B") & (rng.random(800) < 0.4)] = 0
    r2 = F.gap(y, worse, g, "A", "B", n_boot=500)
    assert r2["ci_low"] > 0
