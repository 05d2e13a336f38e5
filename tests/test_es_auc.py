"""bmglib.metrics.fairness.es_auc: equity-scaled AUC on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from bmglib.metrics import fairness


def test_equal_group_aucs_leave_the_auc_unchanged():
    y = np.array([0, 1, 0, 1, 1, 0] * 2)
    s = np.array([0.1, 0.9, 0.4, 0.3, 0.8, 0.2] * 2)
    g = np.array(["I-III"] * 6 + ["IV-VI"] * 6)
    out = fairness.es_auc(y, s, g)
    assert out["auc_I-III"] == out["auc_IV-VI"] == out["auc_overall"]
    assert out["es_auc"] == out["auc_overall"] == pytest.approx(fairness.auc(y, s))


def test_two_groups_by_hand():
    # group a: perfectly ranked (AUC 1); group b: reversed (AUC 0)
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.8, 0.2])
    g = np.array(["a", "a", "b", "b"])
    out = fairness.es_auc(y, s, g)
    # overall: positives 0.9, 0.2 vs negatives 0.1, 0.8: pairs won 0.9>0.1, 0.9>0.8, 0.2>0.1 → 3/4
    assert (out["auc_a"], out["auc_b"], out["auc_overall"]) == (1.0, 0.0, 0.75)
    assert out["es_auc"] == pytest.approx(0.75 / (1 + 0.25 + 0.75))
    assert list(out) == ["auc_overall", "auc_a", "auc_b", "es_auc"]
    one_class = fairness.es_auc(y, s, np.array(["a", "a", "b", "c"]))
    assert np.isnan(one_class["auc_c"]) and np.isnan(one_class["es_auc"])
    with pytest.raises(ValueError, match="equal"):
        fairness.es_auc(y, s, g[:3])
