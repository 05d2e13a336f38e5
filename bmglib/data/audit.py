"""The data audit of notebook 01: what is in a dataset, per FST × lesion, as tables and figures.

Every figure function returns its ``matplotlib`` Figure and, given ``save_to``, writes a PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from tqdm.auto import tqdm

from bmglib import skintone
from bmglib.data import images, schema
from bmglib.report import save

ROMAN = [schema.FST_ROMAN[f] for f in schema.FST_LEVELS]


def plot_cell_table(table: pd.DataFrame, ratios: pd.Series, title: str, save_to=None):
    """Heatmap of FST × lesion counts (log colour scale), imbalance ratios in the column labels."""
    fig, ax = plt.subplots(figsize=(7, 4))
    cols = [f"{c}\n(max/min {ratios.get(c, np.nan):.1f}×)" for c in table.columns]
    data = table.set_axis(cols, axis=1).set_axis([schema.FST_ROMAN[i] for i in table.index], axis=0)
    sns.heatmap(np.log10(data.clip(lower=1)), annot=data, fmt="d", cmap="mako_r", cbar=False, ax=ax)
    ax.set(xlabel="lesion", ylabel="Fitzpatrick skin type", title=title)
    return save(fig, save_to)


def melanoma_by_fst(df: pd.DataFrame) -> pd.DataFrame:
    """Per FST: n images, n melanoma, melanoma share of the FST, share of all melanomas."""
    known = df[df["fitzpatrick_scale"] > 0]
    g = known.groupby("fitzpatrick_scale")
    out = pd.DataFrame({"n": g.size(), "n_melanoma": g["lesion"].apply(lambda s: (s == "melanoma").sum())})
    out = out.reindex(schema.FST_LEVELS, fill_value=0)
    out["melanoma_share_of_fst"] = out["n_melanoma"] / out["n"].where(out["n"] > 0)
    out["share_of_all_melanomas"] = out["n_melanoma"] / max(out["n_melanoma"].sum(), 1)
    out.index.name = "fitzpatrick_scale"
    return out


def plot_melanoma_by_fst(table: pd.DataFrame, title: str, save_to=None):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(ROMAN, table["n_melanoma"], color="#7b3f61")
    for i, (n, m) in enumerate(zip(table["n"], table["n_melanoma"], strict=True)):
        ax.annotate(f"{m}/{n}", (i, m), ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="FST", ylabel="melanoma images", title=title)
    return save(fig, save_to)


def ita_table(df: pd.DataFrame, per_fst: int = 60, size: int = 128, seed: int = 0,
              progress: bool = True) -> pd.DataFrame:
    """ITA and ITA-estimated FST for up to ``per_fst`` images of each labelled FST."""
    rows = []
    known = df[df["fitzpatrick_scale"] > 0]
    sample = known.sample(frac=1.0, random_state=seed).groupby("fitzpatrick_scale").head(per_fst)
    for r in tqdm(sample.itertuples(), total=len(sample), desc="ITA", disable=not progress, leave=False):
        a = skintone.estimate_ita(images.load_image(r.image_path, size))
        rows.append({"md5hash": r.md5hash, "fitzpatrick_scale": r.fitzpatrick_scale, "ita": a,
                     "fst_ita": skintone.ita_to_fst(a)})
    return pd.DataFrame(rows)


def plot_ita_by_fst(ita: pd.DataFrame, title: str, save_to=None):
    """ITA per labelled FST (boxes) against the Kinyanjui/Groh thresholds (dashed)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    sns.boxplot(data=ita, x="fitzpatrick_scale", y="ita", color="#d9b38c", ax=ax)
    for t in skintone.ITA_THRESHOLDS:
        ax.axhline(t, ls="--", lw=0.8, color="grey")
    ax.set_xticks(range(len(ROMAN)), ROMAN)
    exact = (ita["fst_ita"] == ita["fitzpatrick_scale"]).mean()
    near = ((ita["fst_ita"] - ita["fitzpatrick_scale"]).abs() <= 1).mean()
    ax.set(xlabel="labelled FST", ylabel="ITA (°)",
           title=f"{title}\nITA→FST exact {exact:.0%}, ±1 {near:.0%} (n={len(ita)})")
    return save(fig, save_to)


def image_grid(df: pd.DataFrame, per_cell: int = 2, size: int = 64, seed: int = 0, save_to=None):
    """Grid of images: rows FST I..VI, columns lesion × ``per_cell`` examples (blank if none)."""
    lesions = [les for les in schema.LESIONS if (df["lesion"] == les).any()]
    fig, axes = plt.subplots(6, len(lesions) * per_cell, figsize=(1.2 * len(lesions) * per_cell, 7.6),
                             squeeze=False)
    for i, fst in enumerate(schema.FST_LEVELS):
        for j, les in enumerate(lesions):
            cell = df[(df["fitzpatrick_scale"] == fst) & (df["lesion"] == les)]
            picks = cell.sample(min(len(cell), per_cell), random_state=seed)
            for k in range(per_cell):
                ax = axes[i, j * per_cell + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(picks):
                    ax.imshow(images.load_image(picks.iloc[k]["image_path"], size))
                if i == 0 and k == 0:
                    ax.set_title(les.replace("_", "\n"), fontsize=8, loc="left")
                if j == 0 and k == 0:
                    ax.set_ylabel(schema.FST_ROMAN[fst])
    fig.tight_layout(pad=0.2)
    return save(fig, save_to)


def annotator_agreement(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Fitzpatrick17k: ``fitzpatrick_scale`` vs ``fitzpatrick_centaur`` crosstab and agreement."""
    both = df[(df["fitzpatrick_scale"] > 0) & (df["fitzpatrick_centaur"] > 0)]
    diff = (both["fitzpatrick_scale"] - both["fitzpatrick_centaur"]).abs()
    summary = {"n": len(both), "exact": float((diff == 0).mean()), "within_1": float((diff <= 1).mean())}
    table = pd.crosstab(both["fitzpatrick_scale"], both["fitzpatrick_centaur"])
    return table, summary


def plot_agreement(table: pd.DataFrame, summary: dict, save_to=None):
    fig, ax = plt.subplots(figsize=(4.8, 4))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set(xlabel="fitzpatrick_centaur", ylabel="fitzpatrick_scale",
           title=f"FST annotations agree: exact {summary['exact']:.0%}, ±1 {summary['within_1']:.0%}"
                 f" (n={summary['n']})")
    return save(fig, save_to)


def plot_probe(per_fst: pd.DataFrame, gap: dict, title: str, save_to=None):
    """Melanoma sensitivity per FST with bootstrap 95% CIs, and the I–III vs IV–VI gap."""
    t = per_fst.drop(index="overall").sort_index()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    err = np.vstack([t["sensitivity"] - t["sensitivity_ci_low"], t["sensitivity_ci_high"] - t["sensitivity"]])
    ax.bar([schema.FST_ROMAN[int(i)] for i in t.index], t["sensitivity"], yerr=err, capsize=3, color="#5b8db8")
    for i, n in enumerate(t["n_pos"]):
        ax.annotate(f"n={n}", (i, 0.02), ha="center", fontsize=8, color="white")
    ax.set(ylim=(0, 1.05), xlabel="FST", ylabel="melanoma sensitivity",
           title=f"{title}\ngap I–III − IV–VI = {gap['gap']:+.3f} "
                 f"[{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}] (melanomas {gap['n_pos_a']} vs {gap['n_pos_b']})")
    return save(fig, save_to)


def folder_ita(image_dir, n: int | None = None, size: int = 256) -> np.ndarray:
    """ITA (degrees) of the first ``n`` (all: None) ``*.jpg`` images of a folder, sorted by name,
    each read at ``size`` px: (n,) float."""
    files = sorted(Path(image_dir).glob("*.jpg"))[:n]
    return np.array([skintone.estimate_ita(images.load_image(f, size)) for f in files], dtype=float)


def plot_ita_histogram(ita: np.ndarray, title: str, save_to=None):
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(ita, bins=30, color="#c49a6c")
    for t in skintone.ITA_THRESHOLDS:
        ax.axvline(t, ls="--", lw=0.8, color="grey")
    fst = skintone.ita_to_fst(ita)
    counts = ", ".join(f"{schema.FST_ROMAN[f]}:{int((fst == f).sum())}" for f in schema.FST_LEVELS)
    ax.set(xlabel="ITA (°)", ylabel="images", title=f"{title} (n={len(ita)})\nITA-estimated FST {counts}")
    return save(fig, save_to)
