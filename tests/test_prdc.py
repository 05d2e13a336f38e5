"""bmglib.metrics.image.prdc / prdc_per_group: precision, recall, density, coverage on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from bmglib.metrics import image


def test_identical_sets():
    x = np.random.default_rng(0).normal(size=(200, 8))
    out = image.prdc(x, x, k=5)
    assert (out["precision"], out["recall"], out["coverage"]) == (1.0, 1.0, 1.0)
    assert out["density"] == pytest.approx(1.0, abs=0.02)


def test_a_far_away_set():
    x = np.random.default_rng(1).normal(size=(150, 8))
    out = image.prdc(x, x[::-1] + 100.0, k=5)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_a_set_covering_half_the_modes():
    rng = np.random.default_rng(2)
    centres = np.zeros((2, 8))
    centres[1, 0] = 20.0
    real = np.concatenate([rng.normal(size=(150, 8)) + c for c in centres])
    fake = rng.normal(size=(300, 8)) + centres[0]  # mode 0 only
    out = image.prdc(real, fake, k=5)
    assert out["precision"] > 0.85  # one distribution: k-NN precision at finite N sits a little below 1
    assert out["recall"] == pytest.approx(0.5, abs=0.06)
    assert out["coverage"] == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="more than k"):
        image.prdc(real[:5], fake, k=5)


def test_per_group_at_equal_n():
    rng = np.random.default_rng(3)
    fst = np.repeat(np.arange(1, 7), [30, 40, 50, 25, 20, 12])
    feats = rng.normal(size=(len(fst), 6))
    table = image.prdc_per_group(feats, fst, feats + 100.0, fst, k=3)
    assert list(table["group"]) == ["I-III", "IV-VI", "I", "II", "III", "IV", "V", "VI"]
    assert set(table.loc[table["level"] == "fst", "n_used"]) == {12}
    assert set(table.loc[table["level"] == "fst_group", "n_used"]) == {57}
    assert (table[["precision", "recall", "density", "coverage"]] == 0.0).all().all() and (table["k"] == 3).all()
    small = image.prdc_per_group(feats, fst, feats, fst, k=3, n=20)
    assert small.loc[small["group"] == "VI", "n_used"].item() == 0 and small["precision"].isna().sum() == 1
