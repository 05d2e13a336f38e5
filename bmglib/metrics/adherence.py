"""FST adherence of generated images: does the image show the skin type that was requested?

Scored with the ITA estimator (``bmglib.skintone``), never with the network the fairness loss
was trained against (that one is optimised to be fooled).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bmglib import skintone


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


def confusion(requested: np.ndarray, estimated: np.ndarray) -> pd.DataFrame:
    """Requested (rows) × estimated (columns) counts, FST 1..6."""
    t = pd.crosstab(pd.Series(requested, name="requested"), pd.Series(estimated, name="estimated"))
    return t.reindex(index=range(1, 7), columns=range(1, 7), fill_value=0)


def fst_distribution(estimated: np.ndarray) -> pd.DataFrame:
    """What a model draws when FST is not requested: n and share per ITA-estimated FST 1..6."""
    counts = pd.Series(np.asarray(estimated)).value_counts().reindex(range(1, 7), fill_value=0)
    return pd.DataFrame({"n": counts, "share": counts / max(int(counts.sum()), 1)}).rename_axis("estimated_fst")
