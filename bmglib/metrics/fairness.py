"""Group-disaggregated classification metrics with bootstrap confidence intervals.

Point estimates come from fairlearn's ``MetricFrame``; CIs from a bootstrap that resamples
images *within* each group (so every replicate keeps each group's N). Every row states its N and
its number of melanomas (positives): per-FST melanoma metrics rest on few cases.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

Metric = Callable[[np.ndarray, np.ndarray], float]


def _mean_or_nan(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def accuracy(y_true, y_pred) -> float:
    return _mean_or_nan(np.asarray(y_true) == np.asarray(y_pred))


def sensitivity(y_true, y_pred) -> float:
    """True-positive rate (melanoma recall); NaN without positives."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return _mean_or_nan(y_pred[y_true == 1] == 1)


def specificity(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return _mean_or_nan(y_pred[y_true == 0] == 0)


def fnr(y_true, y_pred) -> float:
    """False-negative rate = 1 − sensitivity (missed melanomas)."""
    return 1.0 - sensitivity(y_true, y_pred)


METRICS: dict[str, Metric] = {"accuracy": accuracy, "sensitivity": sensitivity,
                              "specificity": specificity, "fnr": fnr}


def _bootstrap_indices(groups: np.ndarray, n_boot: int, seed: int):
    """Yield index arrays resampled with replacement within each group."""
    rng = np.random.default_rng(seed)
    members = {g: np.flatnonzero(groups == g) for g in pd.unique(groups)}
    for _ in range(n_boot):
        yield np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members.values()])


def group_metrics(y_true, y_pred, groups, metrics: dict[str, Metric] | None = None,
                  n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per group (and ``overall``): n, n_pos, each metric with [ci_low, ci_high].

    ``y_true``/``y_pred``: (N,) {0, 1}; ``groups``: (N,) group labels (e.g. FST or "I-III").
    """
    metrics = metrics or METRICS
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    mf = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    point = mf.by_group.copy()
    point.loc["overall"] = mf.overall
    reps = {name: {g: [] for g in point.index} for name in metrics}
    for idx in _bootstrap_indices(groups, n_boot, seed):
        yt, yp, gr = y_true[idx], y_pred[idx], groups[idx]
        for g in point.index:
            sel = slice(None) if g == "overall" else gr == g
            for name, fn in metrics.items():
                reps[name][g].append(fn(yt[sel], yp[sel]))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    rows = []
    for g in point.index:
        sel = np.ones(len(groups), bool) if g == "overall" else groups == g
        row = {"group": g, "n": int(sel.sum()), "n_pos": int(y_true[sel].sum())}
        for name in metrics:
            r = np.asarray(reps[name][g], float)
            row[name] = float(point.loc[g, name])
            row[f"{name}_ci_low"] = float(np.nanpercentile(r, lo)) if np.isfinite(r).any() else np.nan
            row[f"{name}_ci_high"] = float(np.nanpercentile(r, hi)) if np.isfinite(r).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def gap(y_true, y_pred, groups, a, b, metric: Metric = sensitivity, n_boot: int = 2000,
        seed: int = 0, level: float = 0.95) -> dict:
    """metric(group a) − metric(group b) with a bootstrap CI (within-group resampling).

    Returns ``{"gap", "ci_low", "ci_high", "n_a", "n_b", "n_pos_a", "n_pos_b", "p_le_0"}``;
    ``p_le_0`` is the bootstrap share of replicates with gap ≤ 0 (a one-sided check).
    """
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    keep = np.isin(groups, [a, b])
    y_true, y_pred, groups = y_true[keep], y_pred[keep], groups[keep]
    sa, sb = groups == a, groups == b

    def diff(yt, yp, gr):
        return metric(yt[gr == a], yp[gr == a]) - metric(yt[gr == b], yp[gr == b])

    reps = np.array([diff(y_true[i], y_pred[i], groups[i])
                     for i in _bootstrap_indices(groups, n_boot, seed)])
    lo, hi = np.nanpercentile(reps, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {"gap": diff(y_true, y_pred, groups), "ci_low": float(lo), "ci_high": float(hi),
            "n_a": int(sa.sum()), "n_b": int(sb.sum()), "n_pos_a": int(y_true[sa].sum()),
            "n_pos_b": int(y_true[sb].sum()), "p_le_0": float(np.mean(reps <= 0))}
