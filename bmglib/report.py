"""Figures shared by the notebooks (training curves, sample grids, confusion matrices).

Every function returns its Figure and, given ``save_to``, writes a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib import ticker

from bmglib.data import schema


def save(fig, save_to: Path | None):
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=120, bbox_inches="tight")
    return fig


def plot_training_log(log: pd.DataFrame, title: str, window: int = 25, save_to=None, diffusion=None):
    """Denoising and fairness losses per step (light) with a running mean (dark); with ``diffusion``
    (the run's ``DiffusionConfig``) a dashed line where progressive resolution switches to full size."""
    cols = [c for c in ("denoise", "fair_kl", "fair_ce") if c in log and log[c].abs().sum() > 0]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3), squeeze=False)
    for ax, c in zip(axes[0], cols, strict=True):
        ax.plot(log["step"], log[c], color="#9ecae1", lw=0.6)
        ax.plot(log["step"], log[c].rolling(window, min_periods=1).mean(), color="#08519c")
        ax.set(xlabel="step", title=c, yscale="log" if c == "denoise" else "linear")
        if diffusion is not None and diffusion.lowres_size and 0 < diffusion.lowres_until < 1:
            # the log counts steps from 1; schedule.step_config switches at 0-based ceil(share · steps)
            ax.axvline(math.ceil(diffusion.lowres_until * diffusion.steps) + 0.5, color="grey", ls="--", lw=0.8,
                       label=f"{diffusion.lowres_size} px → {diffusion.image_size} px")
            ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{title} (steps={len(log)})")
    fig.tight_layout()
    return save(fig, save_to)


def sample_grid(images: torch.Tensor, fst: torch.Tensor, lesion: torch.Tensor, title: str,
                per_cell: int = 2, save_to=None):
    """Rows FST I..VI, columns lesion × ``per_cell``. ``images``: (B, 3, H, W) in [-1, 1]."""
    lesions = sorted(set(lesion.tolist()))
    fig, axes = plt.subplots(6, len(lesions) * per_cell, squeeze=False,
                             figsize=(1.1 * len(lesions) * per_cell, 7.0))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, f in enumerate(range(1, 7)):
        for j, les in enumerate(lesions):
            idx = torch.nonzero((fst == f) & (lesion == les)).flatten()[:per_cell]
            for k, n in enumerate(idx.tolist()):
                ax = axes[i, j * per_cell + k]
                ax.imshow(((images[n].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
            if i == 0:
                axes[0, j * per_cell].set_title(schema.LESIONS[les].replace("_", "\n"), fontsize=8, loc="left")
        axes[i, 0].set_ylabel(schema.FST_ROMAN[f])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.2)
    return save(fig, save_to)


def plot_confusion(table: pd.DataFrame, title: str, xlabel: str, ylabel: str, save_to=None):
    """Row-normalised heatmap of a count table, counts annotated."""
    fig, ax = plt.subplots(figsize=(4.6, 3.9))
    confusion_axes(ax, table, title, xlabel, ylabel)
    return save(fig, save_to)


def plot_confusions(tables: dict[str, pd.DataFrame], tag: str, ylabel: str, save_to=None):
    """:func:`plot_confusion` side by side, one panel per estimator: ``tables[name]`` a count table
    (e.g. ``adherence.confusion``), titled ``"<name> · <tag>"``, x label ``"<name>-estimated FST"``."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.75 * len(tables), 3.9), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        confusion_axes(ax, table, f"{name} · {tag}", f"{name}-estimated FST", ylabel)
    return save(fig, save_to)


def confusion_axes(ax, table: pd.DataFrame, title: str, xlabel: str, ylabel: str):
    """:func:`plot_confusion` on an existing axes (for side-by-side panels)."""
    share = table.div(table.sum(1).replace(0, np.nan), axis=0)
    sns.heatmap(share, annot=table, fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return ax


def plot_plan(plan: pd.DataFrame, title: str, save_to=None):
    """A quota plan (``balance.plan_quota``) as FST × lesion heatmaps: real, synthetic, and the
    real + synthetic total (log colour scale; numbers annotated)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
    plan = plan.assign(total=plan["n_real"] + plan["n_synthetic"])
    vmax = max(int(plan["total"].max()), 1)
    for ax, col, name in zip(axes, ("n_real", "n_synthetic", "total"),
                             ("real (train)", "synthetic (planned)", "real + synthetic"), strict=True):
        t = plan.pivot(index="fitzpatrick_scale", columns="lesion", values=col)
        t = t.reindex(columns=[c for c in schema.LESIONS if c in t.columns])
        t.index = [schema.FST_ROMAN[f] for f in t.index]
        sns.heatmap(np.log10(t + 1), annot=t, fmt="d", cmap="viridis", vmin=0, vmax=np.log10(vmax + 1),
                    cbar=False, ax=ax)
        ax.set(title=f"{name}: {int(t.values.sum())}", xlabel="", ylabel="FST" if col == "n_real" else "")
        ax.set_xticklabels([c.get_text().replace("_", "\n") for c in ax.get_xticklabels()], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, save_to)


def manifest_grid(df: pd.DataFrame, title: str, size: int, per_cell: int = 2, save_to=None):
    """:func:`sample_grid` of a sample set's manifest (rows: its ``fitzpatrick_scale``)."""
    from bmglib.data.images import LESION_INDEX, load_tensor

    first = df.groupby(["fitzpatrick_scale", "lesion"], sort=False).head(per_cell)
    x = load_tensor(first, size, progress=False)
    fst = torch.tensor(first["fitzpatrick_scale"].to_numpy())
    lesion = torch.tensor([LESION_INDEX[v] for v in first["lesion"]])
    return sample_grid(x, fst, lesion, title, per_cell=per_cell, save_to=save_to)


def plot_image_metrics(table: pd.DataFrame, title: str, save_to=None):
    """KID (primary, with its bootstrap 95% CI) and FID (point estimates only) per FST and FST
    group, one bar per variant. KID is unbiased and its CI brackets its estimate; FID's bootstrap
    replicates sit above the point estimate (resampling with replacement duplicates images, which
    FID reads as lost diversity), so a percentile interval of FID can lie wholly above its own
    estimate, and none is drawn. ``table``: rows of ``metrics.image.group_image_metrics`` plus a
    ``variant`` column."""
    t = table[table["level"] != "overall"]
    groups = list(dict.fromkeys(t["group"]))
    variants = list(dict.fromkeys(t["variant"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    width = 0.8 / len(variants)
    n = t.groupby("level")["n_used"].max()
    sizes = f"N per FST = {n.get('fst', 0)}, per group = {n.get('fst_group', 0)}"
    for ax, (col, lo, hi) in zip(axes, [("kid", "kid_ci_low", "kid_ci_high"), ("fid", None, None)], strict=True):
        for k, v in enumerate(variants):
            rows = t[t["variant"] == v].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (k - (len(variants) - 1) / 2) * width
            err = (None if lo is None else
                   np.vstack([(rows[col] - rows[lo]).clip(lower=0), (rows[hi] - rows[col]).clip(lower=0)]))
            ax.bar(x, rows[col], width, yerr=err, capsize=2, label=v)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.axvline(5.5, color="grey", lw=0.8)
        label = ("KID, primary (95% bootstrap CI over images)" if col == "kid"
                 else "FID, point estimates (its bootstrap is biased upwards: no interval)")
        ax.set(title=f"{label}\n{sizes}", ylabel=col.upper())
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, save_to)


def plot_pairs(pairs: pd.DataFrame, size: int, title: str, save_to=None):
    """Synthetic images (top row) above their nearest real training image (bottom row), with the
    distance ratio. ``pairs``: ``Memorisation.top_pairs`` (``image_path``, ``train_path``, ``ratio``)."""
    from bmglib.data.images import load_image

    k = len(pairs)
    fig, axes = plt.subplots(2, max(k, 1), figsize=(1.2 * max(k, 1), 2.9), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j, row in enumerate(pairs.itertuples()):
        axes[0, j].imshow(load_image(row.image_path, size))
        axes[1, j].imshow(load_image(row.train_path, size))
        axes[0, j].set_title(f"{row.ratio:.2f}", fontsize=8)
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[1, 0].set_ylabel("nearest real", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.2)
    return save(fig, save_to)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-markdown table (no tabulate dependency); floats to ``digits`` significant digits."""
    df = df.reset_index() if df.index.name or not isinstance(df.index, pd.RangeIndex) else df
    cells = [[f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in row]
             for row in df.itertuples(index=False)]
    head = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


#: The seed paper's claims, shown beside our numbers and labelled as claimed (never computed).
CLAIMED = {
    "real": "acc IV–VI 68%, gap 27%, EDFR 0.21",
    "real+standard": "FID 32.7",
    "real+bmg": "FID 8.5 / 12.8, acc IV–VI 92%, gap 3%, EDFR 0.07",
}
ARM_VARIANT = {"real": None, "real+standard": "standard", "real+bmg": "bmg"}


def _f3(x: float) -> str:
    """Three decimals, with no "-0.000" for a value that rounds to zero."""
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def _ci(mean: float, sd: float, lo: float, hi: float) -> str:
    sd_text = "" if not np.isfinite(sd) else f" ± {sd:.3f}"
    return f"{_f3(mean)}{sd_text} [{_f3(lo)}, {_f3(hi)}]"


def results_table(per_group: pd.DataFrame, summary: pd.DataFrame,
                  image_metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper-style table, one row per arm: FID I–III / IV–VI of the arm's synthetic variant
    (04), accuracy I–III / IV–VI, EDFR and the fairness gap as ``mean ± sd over seeds [95% CI]``,
    the N behind them, and the seed paper's claim in a separate column.

    ``per_group``/``summary``: :func:`bmglib.downstream.evaluate_arms` tables; ``image_metrics``:
    ``04_image_metrics.csv`` (rows of ``group_image_metrics`` with ``variant``)."""
    rows = []
    for arm, g in per_group.groupby("arm", sort=False):
        g = g.set_index("group")
        s = summary[summary["arm"] == arm].set_index("contrast")
        row = {"arm": arm}
        variant = ARM_VARIANT.get(arm)
        for grp in ("I-III", "IV-VI"):
            fid = np.nan
            if image_metrics is not None and variant is not None:
                m = image_metrics[(image_metrics["variant"] == variant) & (image_metrics["group"] == grp)]
                fid = float(m["fid"].iloc[0]) if len(m) else np.nan
            row[f"FID {grp}"] = "—" if not np.isfinite(fid) else f"{fid:.1f}"
        for grp in ("I-III", "IV-VI"):
            r = g.loc[grp]
            row[f"accuracy {grp}"] = _ci(r["accuracy"], r["accuracy_sd"], r["accuracy_ci_low"],
                                          r["accuracy_ci_high"])
        for name, label in (("edfr", "EDFR"), ("accuracy_gap", "gap (acc I–III − IV–VI)")):
            r = s.loc[name]
            row[label] = _ci(r["value"], r["sd"], r["ci_low"], r["ci_high"])
        lo, hi = g.loc["I-III"], g.loc["IV-VI"]
        row["n test (mel) I–III / IV–VI"] = (f"{int(lo['n'])} ({int(lo['n_pos'])}) / "
                                             f"{int(hi['n'])} ({int(hi['n_pos'])})")
        row["seeds"] = int(lo["seeds"])
        row["claimed (seed paper)"] = CLAIMED.get(arm, "")
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


#: the footnote of ``protocol_table.md``
PROTOCOL_NOTE = ("FNR gap = FNR(IV–VI) − FNR(I–III) at the threshold chosen on the real validation split "
                 "(primary; > 0: melanomas on darker skin are missed more). Δ: paired with real-only at the same "
                 "classifier seed and test images (docs/protocol.md); mde: the smallest Δ this design detects with "
                 "80% power. Sensitivity/specificity: means over the runs. CIs: 95% hierarchical bootstrap over "
                 "generator seeds, classifier seeds and test images within FST (real-only: classifier seeds and test "
                 "images). model_id: the first 8 hex digits of each generator's weights (md5), by generator seed.")


def protocol_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The headline table (``protocol_table.md``) from :func:`bmglib.downstream.protocol_summary`:
    one row per arm, CIs in brackets, the seed paper's claims in their own column."""
    rows = []
    summary = summary.sort_values("arm", key=lambda a: a != "real", kind="stable")  # the reference first
    for _, r in summary.iterrows():
        row = {"arm": r["arm"],
               "FNR gap IV–VI − I–III": f"{_f3(r['fnr_gap'])} [{_f3(r['fnr_gap_ci_low'])}, {_f3(r['fnr_gap_ci_high'])}]"}
        if pd.notna(r.get("delta_fnr_gap")):
            row["Δ FNR gap vs real"] = (f"{_f3(r['delta_fnr_gap'])} [{_f3(r['delta_ci_low'])}, {_f3(r['delta_ci_high'])}]"
                                        f" (mde {r['mde']:.3f}): {r['verdict']}")
        else:
            row["Δ FNR gap vs real"] = "—"
        for name, label in (("auc_overall", "AUC"), ("es_auc", "ES-AUC")):
            row[label] = f"{r[name]:.3f} [{r[f'{name}_ci_low']:.3f}, {r[f'{name}_ci_high']:.3f}]"
        row["sens I–III / IV–VI"] = f"{r['sensitivity I-III']:.3f} / {r['sensitivity IV-VI']:.3f}"
        row["spec I–III / IV–VI"] = f"{r['specificity I-III']:.3f} / {r['specificity IV-VI']:.3f}"
        row["n test (mel) I–III / IV–VI"] = (f"{int(r['n I-III'])} ({int(r['n_pos I-III'])}) / "
                                             f"{int(r['n IV-VI'])} ({int(r['n_pos IV-VI'])})")
        row["generator × classifier runs"] = (f"{int(r['n_generator_seeds'])} gen., {int(r['n_runs'])} runs"
                                              if r["arm"] != "real" else f"{int(r['n_runs'])} runs")
        row["model_id (generator seed: md5)"] = r["model_id"]
        row["claimed (seed paper)"] = CLAIMED.get(r["arm"], "")
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def plot_dose_response(effects: pd.DataFrame, title: str = "", save_to=None):
    """Paired Δ (95% CI) of each arm against the size of its synthetic set
    (:func:`bmglib.downstream.dose_effects`), one line per arm; the x axis is the number of
    synthetic images, labelled with the dose."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, (arm, g) in enumerate(effects.groupby("arm", sort=False)):
        x = g["n_synthetic"].to_numpy(float) * (1 + 0.02 * (k - 0.5))  # a small offset keeps the bars apart
        ax.errorbar(x, g["estimate"], yerr=[g["estimate"] - g["ci_low"], g["ci_high"] - g["estimate"]],
                    marker="o", capsize=3, label=arm)
    ax.axhline(0, color="0.3", lw=0.8, ls="--")
    ax.set_xscale("log")
    doses = effects.drop_duplicates("dose").sort_values("dose")
    ax.set_xticks(doses["n_synthetic"], [f"{d:g}× ({n})" for d, n in zip(doses["dose"], doses["n_synthetic"], strict=True)],
                  fontsize=8)
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    measure = effects["measure"].iloc[0]
    ax.set(xlabel="synthetic images added (dose × the protocol's set)", ylabel=f"Δ {measure} vs real-only")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}\nCIs: {effects['variance_sources'].iloc[0]}", fontsize=9)
    fig.tight_layout()
    return save(fig, save_to)


def plot_arm_metrics(per_fst: pd.DataFrame, metrics=("sensitivity", "accuracy", "auc"),
                     title: str = "", save_to=None):
    """Per-FST bars per arm, with the image-bootstrap 95% CI of the seed mean as error bars.
    ``per_fst``: :func:`bmglib.downstream.evaluate_arms` ``per_fst`` table."""
    t = per_fst[per_fst["group"].astype(str) != "overall"]
    groups = list(dict.fromkeys(t["group"]))
    arms = list(dict.fromkeys(t["arm"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / len(arms)
    for ax, m in zip(axes[0], metrics, strict=True):
        for k, arm in enumerate(arms):
            r = t[t["arm"] == arm].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (k - (len(arms) - 1) / 2) * width
            err = np.vstack([(r[m] - r[f"{m}_ci_low"]).clip(lower=0), (r[f"{m}_ci_high"] - r[m]).clip(lower=0)])
            ax.bar(x, r[m], width, yerr=err, capsize=2, label=arm)
        ax.set_xticks(np.arange(len(groups)), [schema.FST_ROMAN.get(int(g), str(g)) for g in groups])
        ax.set(title=m, ylim=(0, 1.05), xlabel="FST")
    axes[0, 0].legend(fontsize=8)
    n_pos = t.groupby("group")["n_pos"].first()
    fig.suptitle(f"{title} (melanomas per FST: {n_pos.to_dict()})", fontsize=9)
    fig.tight_layout()
    return save(fig, save_to)


def plot_protocol(decisions: pd.DataFrame, per_generator: pd.DataFrame | None = None, title: str = "",
                  save_to=None):
    """The decision rules as a forest plot, one panel per measure: each row of
    :func:`bmglib.downstream.decision_rules` with its 95% CI (black; the primary measure's verdict
    beside it) and, given ``per_generator`` (:func:`bmglib.downstream.generator_effects`), each
    generator seed's own Δ and CI (grey) under the pooled one."""
    measures = list(dict.fromkeys(decisions["measure"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 0.55 * len(decisions) / len(measures) + 1.6 +
                                                        (0 if per_generator is None else 0.12 * len(per_generator))),
                             squeeze=False)
    for ax, m in zip(axes[0], measures, strict=True):
        d = decisions[decisions["measure"] == m].reset_index(drop=True)
        labels, y = [], 0.0
        for _, r in d.iterrows():
            ax.errorbar(r["estimate"], -y, xerr=[[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]],
                        fmt="o", color="black", capsize=3)
            if r["role"] == "primary":
                ax.annotate(r["verdict"], (r["ci_high"], -y), xytext=(4, 0), textcoords="offset points",
                            va="center", fontsize=7)
            labels.append((-y, r["rule"]))
            y += 1
            if per_generator is not None and r["versus"] == "real":
                g = per_generator[(per_generator["arm"] == r["arm"]) & (per_generator["measure"] == m)]
                for _, gr in g.iterrows():
                    ax.errorbar(gr["estimate"], -y + 0.35, xerr=[[gr["estimate"] - gr["ci_low"]],
                                                                  [gr["ci_high"] - gr["estimate"]]],
                                fmt=".", color="0.6", capsize=1.5, lw=0.8)
                    labels.append((-y + 0.35, f"  generator seed {gr['generator_seed']}"))
                    y += 0.35
                y += 0.3 * bool(len(g))
        ax.axvline(0, color="0.3", lw=0.8, ls="--")
        ax.set_yticks([t for t, _ in labels], [lab for _, lab in labels], fontsize=7)
        ax.set(title=f"Δ {m} vs real-only ({d['role'].iloc[0]})", xlabel="paired Δ (95% CI)")
    src = decisions["variance_sources"].iloc[0]
    fig.suptitle(f"{title}\nCIs cover: {src}", fontsize=9)
    fig.tight_layout()
    return save(fig, save_to)


# --- the ablation (06) --------------------------------------------------------------------------

#: what each variant removes from `bmg` (DESIGN.md) and the seed paper's claim about it
VARIANT_OFF = {"bmg": "nothing (full method)", "no_fairloss": "fairness loss",
               "no_fst_cond": "FST conditioning", "no_resample": "resampling (natural mix)",
               "standard": "all three"}
CLAIMED_ABLATION = {"no_fairloss": "FID variance over FST 4× the full method's",
                    "no_fst_cond": ">90% II–III when V–VI was asked"}


def _share(d: dict | None) -> str:
    if not d or not d.get("n"):
        return "—"
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}] (n={d['n']})"


def _by_variant(tidy: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """variant → measure → row (value, ci_low, ci_high, sd, n, note) of an ablation tidy table."""
    return {v: {r["measure"]: r for r in g.to_dict("records")}
            for v, g in tidy.groupby("variant", sort=False)}


def _is_requested(light: dict) -> bool:
    return light["note"].startswith("samples requested")


def ablation_table(tidy: pd.DataFrame, reference: str = "bmg") -> pd.DataFrame:
    """The ablation table of notebook 06, one row per variant, every number with its N and CI.

    ``tidy``: :func:`bmglib.ablation.collect` (one row per variant × measure, see
    :data:`bmglib.ablation.MEASURES`); a share that is absent (no FST conditioning) or has n=0,
    and a downstream arm that was not run, show as "—".
    """
    rows = []
    for v, m in _by_variant(tidy).items():
        ratio, light = m["fid_var_ratio"], m["light"]
        row = {
            "variant": v, "removed": VARIANT_OFF.get(v, "?"),
            "FID I–III / IV–VI": (f"{m['fid I-III']['value']:.1f} / {m['fid IV-VI']['value']:.1f} "
                                  f"(n={m['fid I-III']['n']} each)"),
            "FID SD over FST": f"{m['fid_sd']['value']:.1f} (n={m['fid_sd']['n']} per FST)",
            f"FID variance ÷ {reference}": ("1 (reference)" if v == reference else
                                            f"{ratio['value']:.2f} [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]"),
            "FST adherence (ITA)": _share(m.get("fst")), "FST adherence V–VI (ITA)": _share(m.get("fst_v_vi")),
            "FST adherence (auditor CNN)": _share(m.get("fst_audit")),
            "FST adherence V–VI (auditor CNN)": _share(m.get("fst_audit_v_vi")),
            "II–III share when V–VI asked": _share(light) + ("" if _is_requested(light) else " *"),
            "lesion adherence": _share(m.get("lesion")),
        }
        for key, label in (("gap", "downstream gap (acc I–III − IV–VI)"), ("edfr", "downstream EDFR")):
            s = m.get(key)
            row[label] = "—" if s is None else _ci(s["value"], s["sd"], s["ci_low"], s["ci_high"])
        row["claimed (seed paper)"] = CLAIMED_ABLATION.get(v, "")
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def plot_ablation(tidy: pd.DataFrame, reference: str = "bmg", title: str = "", save_to=None):
    """Five panels, one bar per variant with its 95% interval: FID variance over FST ÷ the
    reference's (log scale, the claimed 4× marked), FST adherence V–VI, the II–III share when
    V–VI was asked (hatched: the variant could not be asked, share of all its draws), lesion
    adherence, and the downstream accuracy gap. ``tidy``: :func:`bmglib.ablation.collect`."""
    measures = _by_variant(tidy)
    variants = list(measures)
    x = np.arange(len(variants))
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.6))

    def bars(ax, vals, title, hatch=None, ylim=(0, 1.05)):
        v = np.array([a if a is not None else (np.nan, np.nan, np.nan) for a in vals], float)
        err = np.vstack([(v[:, 0] - v[:, 1]).clip(min=0), (v[:, 2] - v[:, 0]).clip(min=0)])
        b = ax.bar(x, np.nan_to_num(v[:, 0]), yerr=np.nan_to_num(err), capsize=3, color="C0")
        for bar, h in zip(b, hatch or [False] * len(vals), strict=True):
            if h:
                bar.set(hatch="//", color="C7")
        ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        if ylim:
            ax.set_ylim(*ylim)

    def interval(v, name, shares=True):
        d = measures[v].get(name)
        return None if not d or (shares and not d.get("n")) else (d["value"], d["ci_low"], d["ci_high"])

    bars(axes[0], [interval(v, "fid_var_ratio", shares=False) for v in variants],
         f"FID variance over FST ÷ {reference}", ylim=None)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].axhline(1, color="k", lw=0.8)
    axes[0].axhline(4, color="C3", ls="--", lw=0.8, label="claimed: 4× without fairness loss")
    axes[0].legend(fontsize=7)
    bars(axes[1], [interval(v, "fst_v_vi") for v in variants], "FST adherence, V–VI asked (ITA)")
    for i, v in enumerate(variants):
        if "fst_v_vi" not in measures[v]:
            axes[1].text(i, 0.05, "not FST-\nconditioned", ha="center", fontsize=7, color="C7")
    bars(axes[2], [interval(v, "light") for v in variants], "II–III share when V–VI asked",
         hatch=[not _is_requested(measures[v]["light"]) for v in variants])
    axes[2].axhline(0.9, color="C3", ls="--", lw=0.8, label="claimed >0.9 without FST cond.")
    axes[2].legend(fontsize=7)
    bars(axes[3], [interval(v, "lesion") for v in variants], "lesion adherence (chance 0.25)")
    axes[3].axhline(0.25, color="k", ls=":", lw=0.8)
    bars(axes[4], [interval(v, "gap", shares=False) for v in variants],
         "downstream gap, acc I–III − IV–VI (real + variant)", ylim=None)
    axes[4].axhline(0, color="k", lw=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, save_to)


def plot_seed_spread(spread: pd.DataFrame, title: str = "", save_to=None):
    """The ablation claims' measures per generator seed (:func:`bmglib.ablation.seed_spread`): one
    point per (variant, seed), the seeds' mean as a bar outline, the claimed values as dashed lines."""
    panels = (("fid_var_ratio", "FID variance over FST ÷ bmg's (same seed)", 4.0),
              ("light", "II–III share when V–VI was asked", 0.9))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    variants = list(dict.fromkeys(spread["variant"]))
    for ax, (col, label, claimed) in zip(axes, panels, strict=True):
        for k, v in enumerate(variants):
            x = spread.loc[spread["variant"] == v, col].dropna()
            if len(x):
                ax.bar(k, x.mean(), 0.6, fill=False, edgecolor="0.4")
                ax.scatter(np.full(len(x), k), x, s=18, zorder=3)
        ax.axhline(claimed, color="tab:red", ls="--", lw=0.9, label=f"seed paper's claim ({claimed:g})")
        ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
        ax.set(title=label, ylabel=col)
        ax.legend(fontsize=7)
    n = spread.groupby("variant")["generator_seed"].nunique().to_dict()
    fig.suptitle(f"{title} (generator seeds per variant: {n})", fontsize=9)
    fig.tight_layout()
    return save(fig, save_to)


# --- README and docs/ ------------------------------------------------------------------------

README_BEGIN, README_END = "<!-- results:begin (make readme) -->", "<!-- results:end -->"
#: The columns of 05's protocol table (``protocol_table.md``) that the README's headline keeps
#: (docs/results.md has all of them)
HEADLINE_COLUMNS = ("arm", "FNR gap IV–VI − I–III", "Δ FNR gap vs real", "ES-AUC", "n test (mel) I–III / IV–VI",
                    "generator × classifier runs", "model_id (generator seed: md5)", "claimed (seed paper)")


def markers(name: str) -> tuple[str, str]:
    """The begin/end comments of a spliced block, e.g. ``<!-- headline:begin (make readme) -->``."""
    return f"<!-- {name}:begin (make readme) -->", f"<!-- {name}:end -->"


def _read_tables(tables: list[str | Path]) -> list[str]:
    missing = [str(t) for t in tables if not Path(t).exists()]
    if missing:
        raise FileNotFoundError(f"missing generated tables {missing}: run `make paper` first")
    return [Path(t).read_text().strip() for t in tables]


def splice(path: str | Path, blocks: list[str], name: str = "results") -> str:
    """Replace the text between the ``name`` markers (:func:`markers`) in ``path`` by ``blocks``
    (markdown; a level-1 heading becomes level 3). Returns the new text and writes it."""
    path = Path(path)
    begin, end = markers(name)
    text = path.read_text()
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{path}: expected one {begin!r} and one {end!r} marker")
    parts = ["\n".join("##" + line if line.startswith("# ") else line for line in b.splitlines())
             for b in blocks]
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    new = head + begin + "\n" + "\n\n".join(parts) + "\n" + end + tail
    path.write_text(new)
    return new


def splice_readme(readme: str | Path, tables: list[str | Path]) -> str:
    """Splice the generated table files (written by notebooks 05 and 06, each with its commit and
    date) between the ``results`` markers of ``readme``. Missing files are named in the error."""
    return splice(readme, _read_tables(tables), "results")


def select_columns(table_md: str, columns: tuple[str, ...] = HEADLINE_COLUMNS) -> str:
    """A generated markdown table file (title, stamp line, one pipe table, notes) with only
    ``columns`` of its pipe table kept, in that order; the title becomes its stamp line's prefix.
    A missing column is named in the error."""
    lines = table_md.strip().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        raise ValueError("no markdown table found")
    cells = [[c.strip() for c in lines[i].strip().strip("|").split("|")] for i in rows]
    head = cells[0]
    missing = [c for c in columns if c not in head]
    if missing:
        raise KeyError(f"columns {missing} not in the table (it has {head})")
    idx = [head.index(c) for c in columns]
    out = ["| " + " | ".join(r[i] for i in idx) + " |" if n != 1 else "|" + "---|" * len(idx)
           for n, r in enumerate(cells)]
    title = next((line[2:] for line in lines if line.startswith("# ")), "")
    stamp = next((line for line in lines[:rows[0]] if line and not line.startswith("#")), "")
    return "\n".join([f"*{title}* · {stamp}" if title else stamp, "", *out])


#: what ``make readme`` splices: (target file, marker name, table files under figures/<profile>/)
SPLICES = (
    ("README.md", "headline", ("protocol_table.md",)),
    ("docs/results.md", "results", ("protocol_table.md", "results_table.md", "ablation_table.md")),
    ("docs/benchmark.md", "probe", ("probe_table_synthetic.md",)),
)


def splice_all(profile: str = "quick", root: str | Path | None = None,
               only: tuple[str, ...] | None = None) -> list[str]:
    """``make readme``: every block of :data:`SPLICES` (or the marker names in ``only``) from
    ``figures/<profile>/``; the README headline keeps :data:`HEADLINE_COLUMNS` of the protocol
    table. Returns the files written."""
    from bmglib import paths

    root = Path(root) if root is not None else paths.REPO_ROOT
    fig = root / "figures" / profile
    names = {name for _, name, _ in SPLICES}
    unknown = sorted(set(only or ()) - names)
    if unknown:
        raise ValueError(f"splice_all: unknown block(s) {unknown}; the blocks are {sorted(names)}")
    done = []
    for target, name, files in SPLICES:
        if only is not None and name not in only:
            continue
        blocks = _read_tables([fig / f for f in files])
        if name == "headline":
            blocks = [select_columns(b) for b in blocks]
        splice(root / target, blocks, name)
        done.append(f"{target} ({name})")
    return done


if __name__ == "__main__":  # python -m bmglib.report [--profile quick]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bmglib.report",
                                 description="splice the generated tables into README.md and docs/")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--only", default="", help="comma-separated block names (headline, results, probe); default all")
    a = ap.parse_args()
    for item in splice_all(a.profile, only=tuple(a.only.split(",")) if a.only else None):
        print("spliced", item)
