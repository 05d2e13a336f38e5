"""The bias probe: does a dataset reproduce the real problem?

A small CNN (``classifiers.SmallCNN``) is trained melanoma-vs-rest on the natural
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

from bmglib import classifiers, config, paths
from bmglib.data import images, schema
from bmglib.metrics import fairness


@dataclass
class ProbeResult:
    """Image-level bootstrap CIs are for the first seed; ``over_seeds`` has every seed's gap."""

    per_fst: pd.DataFrame  # group_metrics by FST 1..6 (+ overall), first seed
    per_group: pd.DataFrame  # group_metrics by I-III / IV-VI (+ overall), first seed
    gap: dict  # sensitivity(I-III) − sensitivity(IV-VI) with CI and Ns, first seed
    over_seeds: pd.DataFrame  # one row per training seed: sensitivities, gap and its CI
    history: pd.DataFrame  # epoch, loss, val_auc, best (first seed)
    predictions: pd.DataFrame  # test rows: md5hash, fitzpatrick_scale, melanoma, p_melanoma
    cache_key: str

    def seed_summary(self) -> dict:
        """Mean, standard deviation, min and max of the gap over training seeds."""
        g = self.over_seeds["gap"]
        return {"seeds": len(g), "gap_mean": float(g.mean()), "gap_sd": float(g.std(ddof=1)) if len(g) > 1
                else float("nan"), "gap_min": float(g.min()), "gap_max": float(g.max())}


def run_bias_probe(meta: pd.DataFrame, cfg: config.ProbeConfig, progress: bool = True,
                   use_cache: bool = True) -> ProbeResult:
    """Train on ``split == train``, select on ``val``, report on ``test``, for ``cfg.seeds`` seeds."""
    data_hash = config.hash_table(meta, ("md5hash", "fitzpatrick_scale", "label", "split"))
    rows, first = [], None
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        run_cfg = {**vars(cfg), "seed": seed, "seeds": None, "n_boot": None}  # what training depends on
        key = config.cache_key(data=data_hash, probe=run_cfg, version=1)
        preds, history = _cached_run(meta, cfg, seed, key, progress, use_cache)
        y, yhat, group = _outcomes(preds)
        gap = fairness.gap(y, yhat, group, n_boot=cfg.n_boot, seed=seed)  # I–III − IV–VI
        rows.append({"seed": seed, "sensitivity_I-III": fairness.sensitivity(y[group == "I-III"], yhat[group == "I-III"]),
                     "sensitivity_IV-VI": fairness.sensitivity(y[group == "IV-VI"], yhat[group == "IV-VI"]),
                     **{k: gap[k] for k in ("gap", "ci_low", "ci_high")}, "best_epoch": int(history["best"].idxmax()) + 1})
        if first is None:
            first = (preds, history, key, gap)
    preds, history, key, gap = first
    y, yhat, group = _outcomes(preds)
    fst = preds["fitzpatrick_scale"].to_numpy()
    per_fst = fairness.group_metrics(y, yhat, fst, n_boot=cfg.n_boot, seed=cfg.seed)
    per_group = fairness.group_metrics(y, yhat, group, n_boot=cfg.n_boot, seed=cfg.seed)
    return ProbeResult(per_fst, per_group, gap, pd.DataFrame(rows), history, preds, key)


def _outcomes(preds: pd.DataFrame):
    y = preds["melanoma"].to_numpy()
    yhat = (preds["p_melanoma"] >= 0.5).astype(int).to_numpy()
    group = np.array([schema.fst_group(f) for f in preds["fitzpatrick_scale"]])
    return y, yhat, group


def _cached_run(meta, cfg, seed, key, progress, use_cache):
    cache = paths.cache_dir() / f"probe_{key}"
    if use_cache and (cache / "predictions.csv").exists():
        return pd.read_csv(cache / "predictions.csv"), pd.read_csv(cache / "history.csv")
    preds, history = _train_and_predict(meta, cfg, seed, progress)
    cache.mkdir(parents=True, exist_ok=True)
    preds.to_csv(cache / "predictions.csv", index=False)
    history.to_csv(cache / "history.csv", index=False)
    (cache / "config.json").write_text(json.dumps({**vars(cfg), "seed": seed}))
    return preds, history


def _train_and_predict(meta, cfg, seed, progress):
    parts = {s: meta[meta["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    for name, part in parts.items():
        if part.empty:
            raise ValueError(f"the {name} split is empty: the bias probe needs train, val and test images")
    x = {s: images.load_tensor(p, cfg.image_size, progress) for s, p in parts.items()}
    y = {s: torch.tensor((p["lesion"] == "melanoma").to_numpy(), dtype=torch.long) for s, p in parts.items()}
    res = classifiers.train_classifier(x["train"], y["train"], x["val"], y["val"], epochs=cfg.epochs,
                                    batch_size=cfg.batch_size, lr=cfg.lr, width=cfg.width,
                                    seed=seed, progress=progress)
    test = parts["test"]
    preds = pd.DataFrame({"md5hash": test["md5hash"], "fitzpatrick_scale": test["fitzpatrick_scale"],
                          "lesion": test["lesion"], "melanoma": y["test"].numpy(),
                          "p_melanoma": classifiers.predict_proba(res.model, x["test"])})
    history = pd.DataFrame(res.history).assign(best=lambda h: h["epoch"] == res.best_epoch)
    return preds, history


def probe_markdown(result: ProbeResult, meta: pd.DataFrame, title: str) -> str:
    """The bias probe as the markdown table ``make readme`` splices into docs/benchmark.md: one row
    per training seed (sensitivity per group at p ≥ 0.5, the gap I–III − IV–VI with its
    image-level bootstrap 95% CI), the training/test composition, and the commit and date."""
    train, test = meta[meta["split"] == "train"], meta[meta["split"] == "test"]
    mel = train[train["lesion"] == "melanoma"]
    n_dark = int(mel["fitzpatrick_scale"].isin(schema.FST_GROUPS["IV-VI"]).sum())
    test_mel = test[test["lesion"] == "melanoma"].groupby(
        test["fitzpatrick_scale"].map(schema.fst_group)).size().to_dict()
    s = result.seed_summary()
    stamp = config.provenance()
    lines = [f"# {title}", "",
             f"commit {stamp['git_commit']} · {stamp['created_utc']} · training {len(train)} images "
             f"({len(mel)} melanomas, {n_dark} on IV–VI) · test {len(test)} images "
             f"({test_mel.get('I-III', 0)} / {test_mel.get('IV-VI', 0)} melanomas on I–III / IV–VI)", "",
             "| training seed | sensitivity I–III | sensitivity IV–VI | gap I–III − IV–VI [95% CI] |",
             "|---|---|---|---|"]
    for _, r in result.over_seeds.iterrows():
        lines.append(f"| {int(r['seed'])} | {r['sensitivity_I-III']:.3f} | {r['sensitivity_IV-VI']:.3f} | "
                     f"{r['gap']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] |")
    lines += ["", f"Gap over seeds {s['gap_mean']:+.3f} ± {s['gap_sd']:.3f} (SD, n={s['seeds']} seeds)."]
    return "\n".join(lines) + "\n"
