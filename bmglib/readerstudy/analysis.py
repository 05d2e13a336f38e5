"""The analysis of a reader study (notebook 08): every number with its N and a 95% interval.

Input: the tidy export (:meth:`bmglib.readerstudy.store.Store.export`, one row per reader ×
image). Readers and images are both samples, so every interval comes from a **two-level
bootstrap**: readers and images are resampled independently (a crossed design; the images of
the row being summarised, stratified by class for an AUC) and each resample's statistic is
computed from all ratings of the drawn readers on the drawn images, with their multiplicities.
Percentile intervals.

* :func:`realism_table` — mean realism (1–5) and the share rated ≥ 4, per source × level
  (overall, FST group I–III / IV–VI, each FST);
* :func:`auc_table` — discrimination of each source's images from the real ones: ROC AUC of the
  1..10 "synthetic" score (judgement × confidence), per reader and averaged over readers
  (0.5: readers cannot tell them apart);
* :func:`agreement_table` — Krippendorff's α (the ``krippendorff`` package): ordinal for realism
  and the synthetic score, nominal for the real/synthetic judgement, bootstrap over images;
* :func:`lesion_table`, :func:`fst_table` — lesion-type accuracy and perceived skin type.

The seed paper's numbers are quoted in their own column (:data:`CLAIMED`), never computed.
"""

from __future__ import annotations

import krippendorff
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bmglib import report
from bmglib.data import schema
from bmglib.metrics import bootstrap
from bmglib.readerstudy import design

#: the seed paper's claims (three board-certified dermatologists, 300 synthetic images, 1–5 Likert)
CLAIMED = {("bmg", "IV-VI"): "89% rated ≥ 4; mean 4.3", ("bmg", "I-III"): "mean 4.7",
           ("standard", "IV-VI"): "mean 2.1"}
CLAIMED_SETTING = "3 board-certified dermatologists, 300 synthetic images"
ANSWER_COLUMNS = ("reader_id", "image_id", "realism", "judgement", "synthetic_score", "lesion_answer",
                  "fst_answer", "source", "is_synthetic", "fitzpatrick_scale", "fst_group", "true_lesion")


def check_answers(answers: pd.DataFrame, where: str = "answers") -> pd.DataFrame:
    """The export with its columns checked (a clear error naming what is missing)."""
    schema.require_columns(answers, ANSWER_COLUMNS, where)
    if answers.duplicated(["reader_id", "image_id"]).any():
        raise ValueError(f"{where}: a reader answers an image more than once")
    return answers


def levels(df: pd.DataFrame):
    """``((level, group), rows)``: overall, each FST group, each FST (rows of a key or export)."""
    yield ("overall", "all"), df
    for grp in schema.FST_GROUPS:
        yield ("fst_group", grp), df[df["fst_group"] == grp]
    for f in schema.FST_LEVELS:
        yield ("fst", schema.FST_ROMAN[f]), df[df["fitzpatrick_scale"] == f]


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) float multiplicities of a resample with replacement (continues ``rng``)."""
    return bootstrap.resample_counts(n, n_boot, rng).astype(float)


def _ci(boot: np.ndarray) -> tuple[float, float]:
    return bootstrap.percentile_ci(boot) if len(boot) else (np.nan, np.nan)


def crossed_mean(rows: pd.DataFrame, value: str, n_boot: int, seed: int) -> dict:
    """Mean of ``value`` over ratings, with the two-level (readers × images) bootstrap CI.
    Ratings whose value is missing do not count (e.g. an unnamed lesion)."""
    rows = rows[rows[value].notna()]
    if rows.empty:
        return {"value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_ratings": 0}
    x = rows.pivot(index="reader_id", columns="image_id", values=value).astype(float)
    m = x.notna().to_numpy(float)
    xm = np.nan_to_num(x.to_numpy())
    rng = np.random.default_rng(seed)
    wr, wi = _weights(rng, m.shape[0], n_boot), _weights(rng, m.shape[1], n_boot)
    num, den = ((wr @ xm) * wi).sum(1), ((wr @ m) * wi).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = num / den
    lo, hi = _ci(boot)
    return {"value": float(xm.sum() / m.sum()), "ci_low": lo, "ci_high": hi, "n_ratings": int(m.sum())}


def realism_table(answers: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per source × level: images, readers, ratings, mean realism and share ≥ 4 with CIs."""
    answers = check_answers(answers).assign(ge4=lambda d: (d["realism"] >= 4).astype(float))
    rows = []
    for (level, group), sub in levels(answers):
        for source, g in sub.groupby("source", sort=False):
            mean = crossed_mean(g, "realism", n_boot, seed)
            share = crossed_mean(g, "ge4", n_boot, seed)
            rows.append({"source": source, "level": level, "group": group, "n_images": g["image_id"].nunique(),
                         "n_readers": g["reader_id"].nunique(), "n_ratings": mean["n_ratings"],
                         "mean_realism": mean["value"], "mean_ci_low": mean["ci_low"],
                         "mean_ci_high": mean["ci_high"], "share_ge4": share["value"],
                         "share_ci_low": share["ci_low"], "share_ci_high": share["ci_high"]})
    return _order_sources(pd.DataFrame(rows), answers)


def _order_sources(table: pd.DataFrame, answers: pd.DataFrame) -> pd.DataFrame:
    order = [design.REAL] + sorted(set(answers["source"]) - {design.REAL})  # real first, then by name
    key = table["source"].map({s: k for k, s in enumerate(order)})
    return table.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)


# --- real vs synthetic: ROC AUC -----------------------------------------------------------------


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann–Whitney kernel: 1 if a synthetic image scored above a real one, ½ for a tie (NaN-safe)."""
    p, n = pos[:, None], neg[None, :]
    return np.where(p > n, 1.0, np.where(p == n, 0.5, 0.0))


def reader_auc(pos: pd.DataFrame, neg: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Reader-averaged AUC of ``synthetic_score`` for synthetic (``pos``) vs real (``neg``)
    ratings, the per-reader AUCs, and the two-level bootstrap CI (images resampled within class)."""
    xp = pos.pivot(index="reader_id", columns="image_id", values="synthetic_score").astype(float)
    xn = neg.pivot(index="reader_id", columns="image_id", values="synthetic_score").astype(float)
    readers = xp.index.intersection(xn.index)
    rng = np.random.default_rng(seed)
    wp, wn = _weights(rng, xp.shape[1], n_boot), _weights(rng, xn.shape[1], n_boot)
    per_reader, boots = {}, []
    for r in readers:
        sp, sn = xp.loc[r].to_numpy(), xn.loc[r].to_numpy()
        valid = (np.isfinite(sp)[:, None] & np.isfinite(sn)[None, :]).astype(float)
        psi = np.where(valid, _psi(np.nan_to_num(sp), np.nan_to_num(sn)), 0.0)
        if not valid.any():
            continue
        per_reader[r] = float(psi.sum() / valid.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            boots.append(((wp @ psi) * wn).sum(1) / ((wp @ valid) * wn).sum(1))
    if not per_reader:
        return {"auc": np.nan, "ci_low": np.nan, "ci_high": np.nan, "per_reader": {}}
    boots = np.array(boots)  # (readers, n_boot)
    wr = _weights(rng, len(boots), n_boot).T
    ok = np.isfinite(boots)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (np.where(ok, boots, 0) * wr).sum(0) / (ok * wr).sum(0)
    lo, hi = _ci(boot)
    return {"auc": float(np.mean(list(per_reader.values()))), "ci_low": lo, "ci_high": hi,
            "per_reader": per_reader}


def auc_table(answers: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per synthetic source × level: how well readers tell its images from the real images of the
    same level (reader-averaged ROC AUC with CI; per-reader AUCs in ``auc_<reader>`` columns)."""
    answers = check_answers(answers)
    rows = []
    for (level, group), sub in levels(answers):
        neg = sub[sub["source"] == design.REAL]
        for source, pos in sub[sub["source"] != design.REAL].groupby("source", sort=False):
            if neg.empty:
                continue
            a = reader_auc(pos, neg, n_boot, seed)
            rows.append({"source": source, "level": level, "group": group,
                         "n_synthetic": pos["image_id"].nunique(), "n_real": neg["image_id"].nunique(),
                         "n_readers": len(a["per_reader"]), "auc": a["auc"], "auc_ci_low": a["ci_low"],
                         "auc_ci_high": a["ci_high"], **{f"auc_{r}": v for r, v in a["per_reader"].items()}})
    return _order_sources(pd.DataFrame(rows), answers)


def roc_points(answers: pd.DataFrame, source: str) -> pd.DataFrame:
    """The pooled ROC curve (all readers' ratings) of ``source`` vs real: fpr, tpr per cut."""
    pos = answers.loc[answers["source"] == source, "synthetic_score"].to_numpy()
    neg = answers.loc[answers["source"] == design.REAL, "synthetic_score"].to_numpy()
    cuts = np.arange(11, 0, -1)
    return pd.DataFrame({"cut": cuts, "fpr": [(neg >= c).mean() for c in cuts],
                         "tpr": [(pos >= c).mean() for c in cuts]})


# --- agreement ---------------------------------------------------------------------------------

AGREEMENT = {"realism": ("ordinal", list(range(1, 6))),
             "synthetic_score": ("ordinal", list(range(1, 11))),
             "judgement": ("nominal", ["real", "synthetic"])}


def kripp_alpha(rows: pd.DataFrame, measure: str, n_boot: int = 200, seed: int = 0) -> dict:
    """Krippendorff's α of ``measure`` over readers (reliability data: readers × images), with a
    bootstrap percentile CI over images."""
    level, domain = AGREEMENT[measure]
    x = rows.pivot(index="reader_id", columns="image_id", values=measure)
    values = x.to_numpy(object)
    data = np.full(values.shape, np.nan)
    for k, v in enumerate(domain):
        data[values == v] = k
    pairable = (np.isfinite(data).sum(0) >= 2)
    data = data[:, pairable]
    out = {"n_readers": int(x.shape[0]), "n_images": int(data.shape[1])}

    def alpha(d):
        if d.shape[1] == 0 or len(np.unique(d[np.isfinite(d)])) < 2:
            return np.nan
        return float(krippendorff.alpha(reliability_data=d, level_of_measurement=level,
                                        value_domain=list(range(len(domain)))))

    point = alpha(data)
    rng = np.random.default_rng(seed)
    boot = (bootstrap.replicates(lambda idx: alpha(data[:, idx]), n_boot, rng, n=data.shape[1])
            if data.shape[1] else np.array([]))
    lo, hi = _ci(boot)
    return {**out, "alpha": point, "ci_low": lo, "ci_high": hi}


def agreement_table(answers: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Krippendorff's α per measure (realism ordinal, synthetic score ordinal, judgement nominal)
    for all images and per source."""
    answers = check_answers(answers)
    subsets = [("all", answers)] + list(answers.groupby("source", sort=False))
    rows = [{"measure": m, "level": AGREEMENT[m][0], "source": name, **kripp_alpha(g, m, n_boot, seed)}
            for m in AGREEMENT for name, g in subsets]
    return pd.DataFrame(rows)


# --- lesion type and skin type -----------------------------------------------------------------


def lesion_table(answers: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per source × FST group: how often a lesion type was named (not blank, not "unsure") and
    the accuracy of the named types against the true (real) or requested (synthetic) type."""
    answers = check_answers(answers)
    named = answers["lesion_answer"].notna() & (answers["lesion_answer"] != "unsure")
    answers = answers.assign(correct=np.where(named, answers["lesion_answer"] == answers["true_lesion"], np.nan))
    rows = []
    for (level, group), sub in levels(answers):
        if level == "fst":
            continue
        for source, g in sub.groupby("source", sort=False):
            acc = crossed_mean(g, "correct", n_boot, seed)
            rows.append({"source": source, "level": level, "group": group, "n_ratings": len(g),
                         "share_named": float(g["correct"].notna().mean()), "n_named": acc["n_ratings"],
                         "accuracy": acc["value"], "accuracy_ci_low": acc["ci_low"],
                         "accuracy_ci_high": acc["ci_high"]})
    return _order_sources(pd.DataFrame(rows), answers)


def fst_table(answers: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per source × FST group: the skin type readers see against the FST the image stands for
    (real: annotated; synthetic: requested): exact, within one type, mean signed difference."""
    answers = check_answers(answers)
    given = answers["fst_answer"].notna()
    diff = pd.to_numeric(answers["fst_answer"], errors="coerce") - answers["fitzpatrick_scale"]
    answers = answers.assign(diff=diff.where(given), exact=(diff == 0).where(given).astype(float),
                             within1=(diff.abs() <= 1).where(given).astype(float))
    rows = []
    for (level, group), sub in levels(answers):
        if level == "fst":
            continue
        for source, g in sub.groupby("source", sort=False):
            ex, w1, d = (crossed_mean(g, c, n_boot, seed) for c in ("exact", "within1", "diff"))
            rows.append({"source": source, "level": level, "group": group, "n_given": ex["n_ratings"],
                         "exact": ex["value"], "exact_ci_low": ex["ci_low"], "exact_ci_high": ex["ci_high"],
                         "within_one": w1["value"], "mean_difference": d["value"],
                         "difference_ci_low": d["ci_low"], "difference_ci_high": d["ci_high"]})
    return _order_sources(pd.DataFrame(rows), answers)


# --- the headline table and figures -------------------------------------------------------------


def _fmt(v, lo, hi, digits=2, pct=False) -> str:
    if not np.isfinite(v):
        return "—"
    if pct:
        return f"{100 * v:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summary_table(realism: pd.DataFrame, auc: pd.DataFrame, truth: pd.DataFrame | None = None,
                  readers: str = "readers") -> pd.DataFrame:
    """One row per source × FST group (I–III, IV–VI, all): mean realism, share ≥ 4 and AUC vs
    real, each ``value [95% CI]``, the N behind them, the simulated truth when given, and the
    seed paper's claim in its own column. ``readers`` names who rated (e.g. "simulated readers")."""
    rows = []
    r = realism[realism["level"] != "fst"]
    for t in r.itertuples():
        a = auc[(auc["source"] == t.source) & (auc["group"] == t.group)]
        row = {"source": t.source, "FST": t.group,
               f"mean realism, {readers}": _fmt(t.mean_realism, t.mean_ci_low, t.mean_ci_high),
               f"rated ≥ 4, {readers}": _fmt(t.share_ge4, t.share_ci_low, t.share_ci_high, pct=True),
               f"AUC synthetic vs real, {readers}": (_fmt(a["auc"].iloc[0], a["auc_ci_low"].iloc[0],
                                                         a["auc_ci_high"].iloc[0]) if len(a) else "—"),
               "images / readers / ratings": f"{t.n_images} / {t.n_readers} / {t.n_ratings}"}
        if truth is not None:
            tr = truth[(truth["source"] == t.source) & (truth["group"] == t.group)].iloc[0]
            auc_text = "" if not np.isfinite(tr["true_auc"]) else f", AUC {tr['true_auc']:.2f}"
            row["simulation truth"] = (f"mean {tr['true_mean_realism']:.2f}, ≥ 4 {100 * tr['true_share_ge4']:.0f}%"
                                       f"{auc_text}")
        row[f"claimed (seed paper: {CLAIMED_SETTING})"] = CLAIMED.get((t.source, t.group), "")
        rows.append(row)
    return pd.DataFrame(rows).set_index(["source", "FST"])


def plot_realism(realism: pd.DataFrame, title: str, save_to=None):
    """Mean realism per FST (and group) per source, with the two-level bootstrap 95% CI."""
    t = realism[realism["level"] != "overall"]
    groups = [schema.FST_ROMAN[f] for f in schema.FST_LEVELS] + list(schema.FST_GROUPS)  # FSTs, then groups
    sources = list(dict.fromkeys(t["source"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    width = 0.8 / len(sources)
    for ax, (col, lo, hi, label) in zip(axes, [("mean_realism", "mean_ci_low", "mean_ci_high", "mean realism (1–5)"),
                                               ("share_ge4", "share_ci_low", "share_ci_high", "share rated ≥ 4")],
                                        strict=True):
        for k, s in enumerate(sources):
            rows = t[t["source"] == s].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (k - (len(sources) - 1) / 2) * width
            err = np.vstack([(rows[col] - rows[lo]).clip(lower=0), (rows[hi] - rows[col]).clip(lower=0)])
            ax.bar(x, rows[col], width, yerr=err, capsize=2, label=s)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.axvline(5.5, color="grey", lw=0.8)
        ax.set(ylabel=label, ylim=(1, 5.2) if col == "mean_realism" else (0, 1.05), xlabel="FST · group")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    return report.save(fig, save_to)


def plot_roc(answers: pd.DataFrame, auc: pd.DataFrame, title: str, save_to=None):
    """Pooled ROC curves of each synthetic source vs real (the diagonal: indistinguishable),
    labelled with the reader-averaged AUC and its CI."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    overall = auc[auc["level"] == "overall"].set_index("source")
    for s in overall.index:
        pts = roc_points(answers, s)
        r = overall.loc[s]
        ax.plot(pts["fpr"], pts["tpr"], marker=".", label=f"{s}: AUC {_fmt(r['auc'], r['auc_ci_low'], r['auc_ci_high'])}")
    ax.set(xlabel="real images called synthetic (FPR)", ylabel="synthetic images called synthetic (TPR)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return report.save(fig, save_to)


def recovery_table(realism: pd.DataFrame, auc: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Simulated readers only: each estimate beside the value its simulation was built with, and
    whether the 95% interval holds it (per source × FST group and overall)."""
    rows = []
    for name, table, col, lo, hi, true in (
            ("mean realism", realism, "mean_realism", "mean_ci_low", "mean_ci_high", "true_mean_realism"),
            ("share rated ≥ 4", realism, "share_ge4", "share_ci_low", "share_ci_high", "true_share_ge4"),
            ("AUC synthetic vs real", auc, "auc", "auc_ci_low", "auc_ci_high", "true_auc")):
        t = table[table["level"] != "fst"].merge(truth, on=["source", "level", "group"])
        for r in t.itertuples():
            v, a, b, x = (getattr(r, c) for c in (col, lo, hi, true))
            rows.append({"measure": name, "source": r.source, "FST": r.group, "estimate": v, "ci_low": a,
                         "ci_high": b, "simulation truth": x, "inside CI": bool(a <= x <= b)})
    return pd.DataFrame(rows)


def titled(table: pd.DataFrame, title: str, digits: int = 3):
    """A table with its title above it (a pandas Styler) for the notebook."""
    return table.style.set_caption(title).format(precision=digits, na_rep="—")
