"""Group-disaggregated classification metrics with bootstrap confidence intervals.

Point estimates come from fairlearn's ``MetricFrame``; CIs from a bootstrap that resamples
images *within* each group (:func:`bmglib.metrics.bootstrap.stratified`: every replicate keeps
each group's N). Every gap is light minus dark, metric(I–III) − metric(IV–VI)
(:data:`schema.GAP_GROUPS`). Every row states its N and its number of melanomas (positives):
per-FST melanoma metrics rest on few cases.

Label metrics (:data:`METRICS`) take thresholded predictions; :data:`SCORE_METRICS` (AUC) take
scores (``p_melanoma``). For classifiers trained with several seeds on one test set,
:func:`seed_metrics`, :func:`seed_gap`, :func:`edfr`, :func:`edfr_fst_range` and
:func:`fairness_summary` report the mean over seeds, the sd over seeds and an image-bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from scipy.stats import rankdata

from bmglib.data import schema
from bmglib.metrics import bootstrap

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


def group_metrics(y_true, y_pred, groups, metrics: dict[str, Metric] | None = None,
                  n_boot: int = 2000, seed: int = 0, level: float = 0.95, y_score=None,
                  score_metrics: dict[str, ScoreMetric] | None = None) -> pd.DataFrame:
    """One row per group (and ``overall``): n, n_pos, each metric with [ci_low, ci_high].

    ``y_true``/``y_pred``: (N,) {0, 1}; ``groups``: (N,) group labels (e.g. FST or "I-III").
    ``y_score``: optional (N,) melanoma scores (e.g. ``p_melanoma`` in [0, 1]) for the
    ``score_metrics`` (default :data:`SCORE_METRICS`: AUC), bootstrapped on the same resamples.
    """
    metrics = metrics or METRICS
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    point = _frame(y_true, y_pred, groups, metrics)
    fns = {name: (fn, y_pred) for name, fn in metrics.items()}
    if y_score is not None:
        y_score, score_metrics = np.asarray(y_score, dtype=float), score_metrics or SCORE_METRICS
        point = point.join(_frame(y_true, y_score, groups, score_metrics))
        fns.update({name: (fn, y_score) for name, fn in score_metrics.items()})
    reps = {name: {g: [] for g in point.index} for name in fns}
    for idx in bootstrap.stratified(bootstrap.strata_of(groups), n_boot, seed):
        yt, gr = y_true[idx], groups[idx]
        resampled = {name: values[idx] for name, (_, values) in fns.items()}
        for g in point.index:
            sel = slice(None) if g == "overall" else gr == g
            for name, (fn, _) in fns.items():
                reps[name][g].append(fn(yt[sel], resampled[name][sel]))
    rows = []
    for g in point.index:
        sel = np.ones(len(groups), bool) if g == "overall" else groups == g
        row = {"group": g, "n": int(sel.sum()), "n_pos": int(y_true[sel].sum())}
        for name in fns:
            row[name] = float(point.loc[g, name])
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bootstrap.percentile_ci(reps[name][g], level)
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def gap(y_true, y_pred, groups, a=schema.GAP_GROUPS[0], b=schema.GAP_GROUPS[1],
        metric: Metric = sensitivity, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """metric(group a) − metric(group b) with a bootstrap CI (within-group resampling); by default
    the gap I–III − IV–VI of ``groups`` (N,) labelled ``"I-III"``/``"IV-VI"``.

    Returns ``{"gap", "ci_low", "ci_high", "n_a", "n_b", "n_pos_a", "n_pos_b", "p_le_0"}``;
    ``p_le_0`` is the bootstrap share of replicates with gap ≤ 0 (a one-sided check).
    """
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    keep = np.isin(groups, [a, b])
    y_true, y_pred, groups = y_true[keep], y_pred[keep], groups[keep]
    sa, sb = groups == a, groups == b

    def diff(yt, yp, gr):
        return metric(yt[gr == a], yp[gr == a]) - metric(yt[gr == b], yp[gr == b])

    reps = bootstrap.replicates(lambda i: diff(y_true[i], y_pred[i], groups[i]), n_boot, seed,
                                strata=bootstrap.strata_of(groups))
    lo, hi = bootstrap.percentile_ci(reps, level)
    return {"gap": diff(y_true, y_pred, groups), "ci_low": lo, "ci_high": hi,
            "n_a": int(sa.sum()), "n_b": int(sb.sum()), "n_pos_a": int(y_true[sa].sum()),
            "n_pos_b": int(y_true[sb].sum()), "p_le_0": float(np.mean(reps <= 0))}


# --- scores (AUC) -------------------------------------------------------------------------------

ScoreMetric = Callable[[np.ndarray, np.ndarray], float]


def auc(y_true, y_score) -> float:
    """ROC AUC as the Mann–Whitney statistic: P(score of a melanoma > score of a non-melanoma),
    ties counting ½. ``y_true`` (N,) {0, 1}; ``y_score`` (N,) any real. NaN unless both classes.

    Equal to ``sklearn.metrics.roc_auc_score`` but ~50× cheaper, which matters inside a bootstrap.
    """
    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(y_score, dtype=float))  # average ranks: ties count ½
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


#: metrics of (y_true, y_score) — scores, not thresholded labels
SCORE_METRICS: dict[str, ScoreMetric] = {"auc": auc}


def es_auc(y_true, y_score, groups) -> dict:
    """Equity-scaled AUC (FairDiffusion, Luo et al. 2024): ES-AUC = AUC_overall / (1 + Σ_g |AUC_g −
    AUC_overall|), threshold-free; equals AUC_overall when every group's AUC does, and falls as
    the groups' AUCs spread around it.

    ``y_true`` (N,) {0, 1}; ``y_score`` (N,) any real (``p_melanoma``); ``groups`` (N,) labels (e.g.
    ``"I-III"``/``"IV-VI"`` of ``schema.fst_group``, or FST 1..6). Returns ``{"auc_overall",
    "auc_<g>" for every group g in sorted order, "es_auc"}`` (:func:`auc`); NaN where a group has
    one class only (and then ``es_auc`` too). A point estimate: its CI over images and seeds comes
    from ``bmglib.metrics.hierarchical`` (``es_auc`` there, on the FST groups)."""
    y_true, y_score, groups = np.asarray(y_true), np.asarray(y_score, dtype=float), np.asarray(groups)
    if not y_true.shape == y_score.shape == groups.shape or y_true.ndim != 1:
        raise ValueError(f"es_auc: y_true {y_true.shape}, y_score {y_score.shape} and groups {groups.shape} "
                         "must be equal (N,) shapes")
    overall = auc(y_true, y_score)
    out = {"auc_overall": overall}
    for g in sorted(pd.unique(groups)):
        out[f"auc_{g}"] = auc(y_true[groups == g], y_score[groups == g])
    spread = sum(abs(v - overall) for k, v in out.items() if k != "auc_overall")
    out["es_auc"] = float(overall / (1 + spread))
    return out


def _frame(y_true, values, groups, metrics) -> pd.DataFrame:
    """fairlearn ``MetricFrame`` by group plus an ``overall`` row (index: group, columns: metric)."""
    mf = MetricFrame(metrics=metrics, y_true=y_true, y_pred=values, sensitive_features=groups)
    point = mf.by_group.copy()
    point.loc["overall"] = mf.overall
    return point


# --- several training seeds evaluated on one test set -------------------------------------------
#
# A training seed is one draw of the classifier; the test images are one draw of the population.
# Both vary, so the tables below report both: ``sd`` is the spread over seeds, and the CI is an
# image bootstrap of the seed-mean (images resampled within each FST, the same resample applied to
# every seed's predictions, so each replicate keeps every FST's N).

#: EDFR = FNR(IV–VI) − FNR(I–III): > 0 when darker skin is missed more. As FNR = 1 − sensitivity,
#: this is the sensitivity gap I–III − IV–VI, so it follows :data:`schema.GAP_GROUPS`.
EDFR_GROUPS = schema.GAP_GROUPS[::-1]


@dataclass(frozen=True)
class SeedPredictions:
    """Test predictions of S training seeds on the same N images, aligned by image."""

    y_true: np.ndarray  # (N,) {0, 1}: melanoma
    fst: np.ndarray  # (N,) int 1..6
    y_pred: np.ndarray  # (S, N) {0, 1}
    y_score: np.ndarray  # (S, N) float, p_melanoma in [0, 1]
    seeds: tuple

    def take(self, idx: np.ndarray) -> SeedPredictions:
        return SeedPredictions(self.y_true[idx], self.fst[idx], self.y_pred[:, idx],
                               self.y_score[:, idx], self.seeds)


def stack_seeds(preds: pd.DataFrame, id_col: str | None = None) -> SeedPredictions:
    """Align a long prediction table by image.

    ``preds``: one row per (seed, test image) with ``fitzpatrick_scale``, ``y_true``, ``y_pred``,
    ``p_melanoma``, an image id (``id_col``; default ``md5hash``, else ``image_path``) and
    ``seed`` (absent = one seed). Every seed must cover the same images.
    """
    id_col = id_col or ("md5hash" if "md5hash" in preds.columns else "image_path")
    df = preds if "seed" in preds.columns else preds.assign(seed=0)
    if df.duplicated([id_col, "seed"]).any():
        raise ValueError(f"duplicate ({id_col}, seed) rows in the predictions")
    wide = df.pivot(index=id_col, columns="seed")
    if wide.isna().any().any():
        raise ValueError("the seeds' predictions cover different test images; evaluate each seed "
                         "on the same test split")
    seeds = tuple(wide["y_pred"].columns)
    for col in ("y_true", "fitzpatrick_scale"):
        if (wide[col].nunique(axis=1) > 1).any():
            raise ValueError(f"{col} differs between seeds for the same image")
    return SeedPredictions(wide["y_true"].iloc[:, 0].to_numpy(int),
                           wide["fitzpatrick_scale"].iloc[:, 0].to_numpy(int),
                           wide["y_pred"].to_numpy(int).T, wide["p_melanoma"].to_numpy(float).T,
                           seeds)


def _labels(fst: np.ndarray, by: str) -> np.ndarray:
    if by == "fst":
        return fst
    if by == "group":
        return np.array([schema.fst_group(f) for f in fst])
    raise ValueError(f"by must be 'fst' or 'group', got {by!r}")


def _metric(name: str, y, pred, score) -> float:
    return SCORE_METRICS[name](y, score) if name in SCORE_METRICS else METRICS[name](y, pred)


def _seed_frames(sp: SeedPredictions, labels: np.ndarray) -> list[pd.DataFrame]:
    """Per seed, a MetricFrame table: group (+ ``overall``) × every metric incl. AUC."""
    return [_frame(sp.y_true, sp.y_pred[s], labels, METRICS)
            .join(_frame(sp.y_true, sp.y_score[s], labels, SCORE_METRICS))
            for s in range(len(sp.seeds))]


def _sd(values) -> float:
    v = np.asarray(values, float)
    return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def seed_metrics(preds: pd.DataFrame | SeedPredictions, by: str = "fst", n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Accuracy, sensitivity, specificity, FNR and AUC per FST (``by="fst"``: 1..6) or per group
    (``by="group"``: I-III, IV-VI), plus ``overall``, over S training seeds.

    One row per group: ``n``, ``n_pos`` (melanomas), ``seeds``; for every metric ``<m>`` (mean
    over seeds, from fairlearn's MetricFrame), ``<m>_sd`` (sd over seeds; NaN for one seed) and
    ``<m>_ci_low`` / ``<m>_ci_high`` (image bootstrap of the seed mean).
    """
    sp = preds if isinstance(preds, SeedPredictions) else stack_seeds(preds)
    labels = _labels(sp.fst, by)
    per_seed = pd.concat(_seed_frames(sp, labels), keys=range(len(sp.seeds)))
    names = list(per_seed.columns)
    groups = list(per_seed.loc[0].index)
    reps = {(g, m): [] for g in groups for m in names}
    for idx in bootstrap.stratified(bootstrap.strata_of(sp.fst), n_boot, seed):
        r, lab = sp.take(idx), labels[idx]
        for g in groups:
            sel = slice(None) if g == "overall" else lab == g
            y = r.y_true[sel]
            for m in names:
                reps[g, m].append(np.mean([_metric(m, y, r.y_pred[s, sel], r.y_score[s, sel])
                                           for s in range(len(sp.seeds))]))
    rows = []
    for g in groups:
        sel = np.ones(len(labels), bool) if g == "overall" else labels == g
        row = {"group": g, "n": int(sel.sum()), "n_pos": int(sp.y_true[sel].sum()),
               "seeds": len(sp.seeds)}
        for m in names:
            values = per_seed.xs(g, level=1)[m]
            row[m], row[f"{m}_sd"] = float(values.mean()), _sd(values)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap.percentile_ci(reps[g, m], level)
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def _contrast(values: pd.Series, a, b) -> float:
    """values[a] − values[b]; ``b=None``: max − min over the groups (``overall`` excluded)."""
    if b is None:
        v = values.drop("overall", errors="ignore").astype(float)
        return float(np.nanmax(v) - np.nanmin(v)) if np.isfinite(v).any() else float("nan")
    return float(values[a] - values[b])


def seed_gap(preds: pd.DataFrame | SeedPredictions, metric: str = "accuracy",
             a=schema.GAP_GROUPS[0], b=schema.GAP_GROUPS[1], by: str = "group", n_boot: int = 1000,
             seed: int = 0, level: float = 0.95) -> dict:
    """metric(a) − metric(b) per seed, averaged over seeds, with sd and an image-bootstrap CI;
    by default the gap I–III − IV–VI.

    ``b=None`` gives the range max − min of the metric over the groups of ``by`` (e.g. FNR over
    FST 1..6; per seed, as fairlearn's ``MetricFrame.difference``); ``a``/``b`` of the result
    then name the groups with the highest/lowest seed-mean metric. ``metric``: a key of
    :data:`METRICS` or :data:`SCORE_METRICS`. Returns ``{"metric", "a", "b", "value", "sd",
    "ci_low", "ci_high", "p_le_0", "seeds", "n_a", "n_b", "n_pos_a", "n_pos_b", "per_seed"}``.
    """
    sp = preds if isinstance(preds, SeedPredictions) else stack_seeds(preds)
    labels = _labels(sp.fst, by)
    frames = _seed_frames(sp, labels)
    per_seed = [_contrast(f[metric], a, b) for f in frames]
    groups = [g for g in frames[0].index if g != "overall"]
    reps = []
    for idx in bootstrap.stratified(bootstrap.strata_of(sp.fst), n_boot, seed):
        r, lab = sp.take(idx), labels[idx]
        masks = {g: lab == g for g in groups}
        reps.append(np.mean([_contrast(pd.Series({g: _metric(metric, r.y_true[m], r.y_pred[s, m],
                                                                 r.y_score[s, m])
                                                  for g, m in masks.items()}), a, b)
                             for s in range(len(sp.seeds))]))
    if b is None:  # name the extreme groups of the seed-mean metric
        mean = sum(f[metric] for f in frames).drop("overall") / len(frames)
        a, b = mean.idxmax(), mean.idxmin()
    lo, hi = bootstrap.percentile_ci(reps, level)
    sa, sb = labels == a, labels == b
    return {"metric": metric, "a": a, "b": b, "value": float(np.mean(per_seed)),
            "sd": _sd(per_seed), "ci_low": lo, "ci_high": hi,
            "p_le_0": float(np.mean(np.asarray(reps) <= 0)), "seeds": len(sp.seeds),
            "n_a": int(sa.sum()), "n_b": int(sb.sum()), "n_pos_a": int(sp.y_true[sa].sum()),
            "n_pos_b": int(sp.y_true[sb].sum()), "per_seed": per_seed}


def edfr(preds: pd.DataFrame | SeedPredictions, n_boot: int = 1000, seed: int = 0,
         level: float = 0.95) -> dict:
    """EDFR = FNR(IV–VI) − FNR(I–III) (missed melanomas; > 0: darker skin missed more)."""
    return seed_gap(preds, "fnr", *EDFR_GROUPS, n_boot=n_boot, seed=seed, level=level)


def edfr_fst_range(preds: pd.DataFrame | SeedPredictions, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """max − min of the FNR over FST 1..6 (≥ 0; ``a``/``b`` name the worst/best FST).

    A range of noisy estimates is biased upwards (the max picks noise), in the bootstrap too: on
    ~40 melanomas per FST compare arms by this number, not against 0."""
    return seed_gap(preds, "fnr", None, None, by="fst", n_boot=n_boot, seed=seed, level=level)


def fairness_summary(preds: pd.DataFrame | SeedPredictions, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> pd.DataFrame:
    """The headline contrasts, one row each (value = mean over seeds, sd over seeds, CI):

    * ``accuracy_gap`` — the fairness gap, accuracy(I–III) − accuracy(IV–VI);
    * ``sensitivity_gap``, ``auc_gap`` — the same contrast of melanoma sensitivity and AUC;
    * ``edfr`` — FNR(IV–VI) − FNR(I–III); ``edfr_fst_range`` — max − min FNR over FST 1..6.

    Columns ``a``/``b`` name the groups contrasted, with their N and melanoma counts.
    """
    sp = preds if isinstance(preds, SeedPredictions) else stack_seeds(preds)
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    rows = {"accuracy_gap": seed_gap(sp, "accuracy", **kw),
            "sensitivity_gap": seed_gap(sp, "sensitivity", **kw),
            "auc_gap": seed_gap(sp, "auc", **kw),
            "edfr": edfr(sp, **kw), "edfr_fst_range": edfr_fst_range(sp, **kw)}
    out = pd.DataFrame.from_dict(rows, orient="index").drop(columns="per_seed")
    out.index.name = "contrast"
    return out
