"""Adherence of generated images: do they show the skin type and the lesion that were requested?

FST is scored two ways, never with the network the fairness loss was trained against (that one
is optimised to be fooled): with the ITA estimator (``bmglib.skintone``; a colour statistic) and
with an independently trained CNN, the *auditor* (:func:`bmglib.classifiers.get_fst_auditor`;
wider, another seed, class-balanced). The two can disagree: a generator pushed towards one CNN's
notion of a skin type may move its colour past the ITA threshold (README, "What the fairness loss
does"). Lesion type is scored with a small CNN trained on the real training split
(:func:`bmglib.classifiers.get_lesion_classifier`); no generator is trained against it. This
module only scores: the classifiers are trained (and cached) in ``bmglib.classifiers``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bmglib import skintone
from bmglib.data import schema
from bmglib.data.images import load_tensor
from bmglib.metrics import bootstrap


def estimated_fst(images: torch.Tensor) -> np.ndarray:
    """Hard ITA estimate (1..6) per image. ``images``: (B, 3, H, W) in [-1, 1]."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return np.array([skintone.estimate_fst(a) for a in arr])


def adherence_table(requested: np.ndarray, estimated: np.ndarray) -> pd.DataFrame:
    """Per requested FST (and overall): n, exact share, within-±1 share."""
    requested, estimated = np.asarray(requested), np.asarray(estimated)
    rows = []
    for f in [*sorted(set(requested.tolist())), "overall"]:
        sel = np.ones(len(requested), bool) if f == "overall" else requested == f
        rows.append({"requested_fst": f, "n": int(sel.sum()),
                     "exact": float((estimated[sel] == requested[sel]).mean()),
                     "within_1": float((np.abs(estimated[sel] - requested[sel]) <= 1).mean())})
    return pd.DataFrame(rows).set_index("requested_fst")


def ita_ceiling(real_df: pd.DataFrame, size: int, max_size: int = 128) -> pd.DataFrame:
    """:func:`adherence_table` of the ITA estimator on *real* images against their FST labels: what
    a perfect generator would score, since ITA reads neighbouring types (IV/V above all) as each
    other on real skin too. Images are read at ``min(size, max_size)`` px: ITA is a colour
    statistic, and a paper-size test split at 512 px would not fit in memory."""
    if "fitzpatrick_scale" not in real_df.columns:
        raise KeyError("ita_ceiling: the real table has no 'fitzpatrick_scale' column")
    x = load_tensor(real_df, min(size, max_size), progress=False)
    return adherence_table(real_df["fitzpatrick_scale"].to_numpy(), estimated_fst(x))


@torch.no_grad()
def audit_fst(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The auditor's FST (1..6) per image. ``x``: (N, 3, H, W) in [-1, 1]."""
    model.eval()
    return torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy() + 1


def fst_adherence(requested, ita_estimated, x: torch.Tensor, auditor: torch.nn.Module,
                  auditor_ceiling: pd.DataFrame, test_df: pd.DataFrame, size: int):
    """FST adherence by both judges, side by side: ITA (``ita_estimated``, e.g. a manifest's
    ``estimated_fst``) and the auditor CNN (``auditor``, ``auditor_ceiling``: what
    :func:`bmglib.classifiers.get_fst_auditor` returns) on the images ``x`` (N, 3, H, W) in
    [-1, 1], each joined with its ceiling on the real test split (``real_*`` columns).

    Returns ``(table with column groups "ITA" and "auditor CNN", the auditor's FST per image)``.
    """
    audited = audit_fst(auditor, x)
    table = pd.concat({
        "ITA": adherence_table(requested, ita_estimated).join(ita_ceiling(test_df, size).add_prefix("real_")),
        "auditor CNN": adherence_table(requested, audited).join(auditor_ceiling.add_prefix("real_")),
    }, axis=1)
    return table, audited


def confusion(requested: np.ndarray, estimated: np.ndarray) -> pd.DataFrame:
    """Requested (rows) × estimated (columns) counts, FST 1..6."""
    t = pd.crosstab(pd.Series(requested, name="requested"), pd.Series(estimated, name="estimated"))
    return t.reindex(index=range(1, 7), columns=range(1, 7), fill_value=0)


def fst_distribution(estimated: np.ndarray) -> pd.DataFrame:
    """What a model draws when FST is not requested: n and share per ITA-estimated FST 1..6."""
    counts = pd.Series(np.asarray(estimated)).value_counts().reindex(range(1, 7), fill_value=0)
    return pd.DataFrame({"n": counts, "share": counts / max(int(counts.sum()), 1)}).rename_axis("estimated_fst")


# --- lesion adherence: does the image show the lesion type that was requested? ---------------


@torch.no_grad()
def predict_lesion(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Predicted lesion index (N,) for images (N, 3, H, W) in [-1, 1]."""
    model.eval()
    return torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()


def lesion_adherence_table(requested: np.ndarray, predicted: np.ndarray,
                           fst: np.ndarray) -> pd.DataFrame:
    """Share of images classified as the requested lesion, per FST (rows) × lesion (columns) and
    overall, with ``n`` per row; chance is 1/len(LESIONS)."""
    requested, predicted, fst = map(np.asarray, (requested, predicted, fst))
    hit = requested == predicted
    rows = {}
    for f in [*sorted(set(fst.tolist())), "overall"]:
        sel = np.ones(len(hit), bool) if f == "overall" else fst == f
        row = {"n": int(sel.sum()), "all": float(hit[sel].mean()) if sel.any() else np.nan}
        for k, name in enumerate(schema.LESIONS):
            m = sel & (requested == k)
            row[name] = float(hit[m].mean()) if m.any() else np.nan
        rows[f] = row
    out = pd.DataFrame(rows).T.rename_axis("fst")
    return out.astype({"n": int})


def share_ci(hits, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Share of true values in ``hits`` (0/1 per image) with a bootstrap percentile CI over
    images: ``{"n", "share", "ci_low", "ci_high"}`` (NaNs when empty)."""
    hit = np.asarray(hits, dtype=float)
    if len(hit) == 0:
        return {"n": 0, "share": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    lo, hi = bootstrap.percentile_ci(bootstrap.mean_replicates(hit, n_boot, seed), level)
    return {"n": int(len(hit)), "share": float(hit.mean()), "ci_low": lo, "ci_high": hi}


def light_share(estimated: np.ndarray, requested: np.ndarray | None = None, n_boot: int = 2000,
                seed: int = 0, level: float = 0.95) -> dict:
    """The seed paper's ablation claim: the share of images that come out as FST II–III when V–VI
    was requested (">90% without FST conditioning"). For a model not conditioned on FST
    (``requested`` None or all -1) nothing can be requested: the share over all its images.

    Returns ``{"n", "share", "ci_low", "ci_high", "over"}`` with a bootstrap percentile CI.
    """
    estimated = np.asarray(estimated)
    if requested is None or (np.asarray(requested) <= 0).all():
        sel, over = np.ones(len(estimated), bool), "all samples (FST not requested)"
    else:
        sel, over = np.isin(np.asarray(requested), (5, 6)), "samples requested as V-VI"
    return {**share_ci(np.isin(estimated[sel], (2, 3)), n_boot, seed, level), "over": over}
