"""Figures shared by the notebooks (training curves, sample grids, confusion matrices).

Every function returns its Figure and, given ``save_to``, writes a PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from bmglib.data import schema


def save(fig, save_to: Path | None):
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=120, bbox_inches="tight")
    return fig


def plot_training_log(log: pd.DataFrame, title: str, window: int = 25, save_to=None):
    """Denoising and fairness losses per step (light) with a running mean (dark)."""
    cols = [c for c in ("denoise", "fair_kl", "fair_ce") if c in log and log[c].abs().sum() > 0]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3), squeeze=False)
    for ax, c in zip(axes[0], cols, strict=True):
        ax.plot(log["step"], log[c], color="#9ecae1", lw=0.6)
        ax.plot(log["step"], log[c].rolling(window, min_periods=1).mean(), color="#08519c")
        ax.set(xlabel="step", title=c, yscale="log" if c == "denoise" else "linear")
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
    share = table.div(table.sum(1).replace(0, np.nan), axis=0)
    sns.heatmap(share, annot=table, fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return save(fig, save_to)
