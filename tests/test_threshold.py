"""bmglib.downstream.choose_threshold("val_sensitivity") and its config keys: chosen on the
validation split alone (no test argument), reaching the target sensitivity there."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from bmglib import config
from bmglib import downstream as D


def test_val_sensitivity_on_a_known_case():
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 0.1, 0.3, 0.5, 0.7])
    for target, t in ((0.8, 0.4), (1.0, 0.2), (0.6, 0.6), (0.9, 0.2), (0.2, 0.9)):
        assert D.choose_threshold(y, p, "val_sensitivity", target_sensitivity=target) == t, target
    assert D.choose_threshold(y, p, "val_sensitivity") == 0.2  # default target 0.90
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="target_sensitivity"):
            D.choose_threshold(y, p, "val_sensitivity", target_sensitivity=bad)
    with pytest.raises(ValueError, match="y_val has no melanomas"):
        D.choose_threshold(np.zeros(4, int), p[:4], "val_sensitivity")


def test_the_threshold_sees_validation_data_only():
    params = list(inspect.signature(D.choose_threshold).parameters)
    assert params == ["y_val", "p_val", "rule", "target_sensitivity"]
    assert not any("test" in name for name in params)


def test_the_chosen_threshold_reaches_the_target_on_validation():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.25).astype(int)
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 400), 0, 1)
    for target in (0.5, 0.85, 0.9, 0.97):
        t = D.choose_threshold(y, p, "val_sensitivity", target_sensitivity=target)
        assert np.mean(p[y == 1] >= t) >= target
        above = np.unique(p[p > t])
        assert not len(above) or np.mean(p[y == 1] >= above[0]) < target  # the largest such t


def test_config_keys():
    cfg = config.get_config("quick")
    # the protocol's operating point (docs/protocol.md) is the default
    assert cfg.downstream.threshold == "val_sensitivity" and cfg.downstream.target_sensitivity == 0.90
    assert "val_sensitivity" in config.THRESHOLDS
    cfg = config.get_config("quick", {"downstream.threshold": "val_sensitivity",
                                      "downstream.target_sensitivity": 1.0})
    assert cfg.downstream.target_sensitivity == 1.0
    for bad in (0.0, 1.2):
        with pytest.raises(config.ConfigError, match=r"downstream\.target_sensitivity"):
            config.get_config("quick", {"downstream.target_sensitivity": bad})
