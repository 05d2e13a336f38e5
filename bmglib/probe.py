"""The bias probe: does a dataset reproduce the real problem?

A small CNN (``classify.SmallCNN``) is trained melanoma-vs-rest on the natural
(Fitzpatrick17k-proportioned) training split, the validation split chooses the epoch, and the
FST-balanced test split measures melanoma sensitivity per FST and per group (I–III vs IV–VI) with
bootstrap CIs. A benchmark worth using shows a lower sensitivity on IV–VI.

Results are cached under a key of all inputs (dataset hash, probe config), so re-running a
notebook does not retrain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bmglib import classify, config, paths
from bmglib.data import images, schema
from bmglib.metrics import fairness


@dataclass
class ProbeResult:
    per_fst: pd.DataFrame  # group_metrics by FST 1..6 (+ overall)
    per_group: pd.DataFrame  # group_metrics by I-III / IV-VI (+ overall)
    gap: dict  # sensitivity(I-III) − sensitivity(IV-VI) with CI and Ns
    history: pd.DataFrame  # epoch, loss, val_auc
    predictions: pd.DataFrame  # test rows: md5hash, fitzpatrick_scale, melanoma, p_melanoma
    cache_key: str


def load_tensor(df: pd.DataFrame, size: int, progress: bool = True) -> torch.Tensor:
    """Images of a table as (N, 3, size, size) float32 in [-1, 1]."""
    arr = np.stack([images.load_image(p, size) for p in tqdm(df["image_path"], desc="loading images",
                                                             disable=not progress, leave=False)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def run_bias_probe(meta: pd.DataFrame, cfg: config.ProbeConfig, progress: bool = True,
                   use_cache: bool = True) -> ProbeResult:
    """Train on ``split == train``, select on ``val``, report on ``test`` (see module doc)."""
    key = config.cache_key(data=config.hash_table(meta, ("md5hash", "fitzpatrick_scale", "label", "split")),
                           probe=vars(cfg), version=1)
    cache = paths.cache_dir() / f"probe_{key}"
    if use_cache and (cache / "predictions.csv").exists():
        preds = pd.read_csv(cache / "predictions.csv")
        history = pd.read_csv(cache / "history.csv")
    else:
        preds, history = _train_and_predict(meta, cfg, progress)
        cache.mkdir(parents=True, exist_ok=True)
        preds.to_csv(cache / "predictions.csv", index=False)
        history.to_csv(cache / "history.csv", index=False)
        (cache / "config.json").write_text(json.dumps(vars(cfg)))
    y, yhat = preds["melanoma"].to_numpy(), (preds["p_melanoma"] >= 0.5).astype(int).to_numpy()
    fst = preds["fitzpatrick_scale"].to_numpy()
    group = np.array([schema.fst_group(f) for f in fst])
    per_fst = fairness.group_metrics(y, yhat, fst, n_boot=cfg.n_boot, seed=cfg.seed)
    per_group = fairness.group_metrics(y, yhat, group, n_boot=cfg.n_boot, seed=cfg.seed)
    gap = fairness.gap(y, yhat, group, "I-III", "IV-VI", n_boot=cfg.n_boot, seed=cfg.seed)
    return ProbeResult(per_fst, per_group, gap, history, preds, key)


def _train_and_predict(meta, cfg, progress):
    parts = {s: meta[meta["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    for name, part in parts.items():
        if part.empty:
            raise ValueError(f"the {name} split is empty: the bias probe needs train, val and test images")
    x = {s: load_tensor(p, cfg.image_size, progress) for s, p in parts.items()}
    y = {s: torch.tensor((p["lesion"] == "melanoma").to_numpy(), dtype=torch.long) for s, p in parts.items()}
    res = classify.train_classifier(x["train"], y["train"], x["val"], y["val"], epochs=cfg.epochs,
                                    batch_size=cfg.batch_size, lr=cfg.lr, width=cfg.width,
                                    seed=cfg.seed, progress=progress)
    test = parts["test"]
    preds = pd.DataFrame({"md5hash": test["md5hash"], "fitzpatrick_scale": test["fitzpatrick_scale"],
                          "lesion": test["lesion"], "melanoma": y["test"].numpy(),
                          "p_melanoma": classify.predict_proba(res.model, x["test"])})
    history = pd.DataFrame(res.history).assign(best=lambda h: h["epoch"] == res.best_epoch)
    return preds, history
