"""Measures of the diffusion variants' sample sets, shared by notebooks 04 and 06: each variant's
balanced evaluation set (03) against the real test split.

    evalsets = load("quick", "bmg,standard", "eval")              # variant → manifest
    quality = image_quality(test_df, evalsets, cfg.metrics)       # FID/KID per FST at equal N
    light_shares(evalsets, seed=cfg.metrics.seed)                 # II–III share when V–VI asked
    adh = adherence_shares(evalsets, train_df, test_df, size)     # ITA, auditor CNN, lesion (06)
    memo = memorisation(train_df, quality, evalsets, cfg.metrics) # nearest real training image (04)

A variant without FST conditioning (``fst_estimated`` in its manifest) could not be asked for an
FST: its FST adherence is undefined (None) and its II–III share is over all its draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bmglib import classifiers, paths, report
from bmglib.config import ImageMetricsConfig
from bmglib.data import schema
from bmglib.data.images import LESION_INDEX, load_tensor
from bmglib.diffusion import balance, sample
from bmglib.metrics import adherence, bootstrap, image


def parse_variants(variants: str | Sequence[str]) -> list[str]:
    """``"bmg, standard"`` (a notebook parameter) or a sequence → ``["bmg", "standard"]``."""
    items = variants.split(",") if isinstance(variants, str) else variants
    return [v.strip() for v in items if v.strip()]


def load(profile: str, variants: str | Sequence[str], purpose: str, seed: int = 0) -> dict[str, pd.DataFrame]:
    """variant → manifest of its ``purpose`` sample set (``eval`` or ``augment``, notebook 03) from
    the generator of diffusion training seed ``seed``."""
    return {v: sample.load_manifest(paths.samples_dir(profile, v, purpose, seed)) for v in parse_variants(variants)}


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """Generator seeds given as ``"0,1,2"`` (a notebook parameter) or a sequence, as ints."""
    return [int(x) for x in seeds.split(",") if x.strip()] if isinstance(seeds, str) else [int(x) for x in seeds]


def load_seeds(profile: str, variants: str | Sequence[str], purpose: str, seeds: str | Sequence[int]) -> dict:
    """``{generator seed: {variant: manifest}}`` (:func:`load`) for each generator seed in ``seeds``
    (e.g. ``"0,1,2"`` or ``[0, 1, 2]``); a missing set names its folder (``<variant>_seed<k>``) and
    notebook 03."""
    seeds = parse_seeds(seeds)
    if not seeds:
        raise ValueError("load_seeds: no generator seeds given")
    return {g: load(profile, variants, purpose, g) for g in seeds}


def conditioned(manifest: pd.DataFrame) -> bool:
    """Whether the set was drawn by an FST-conditioned model (its FSTs were requested)."""
    return not manifest["fst_estimated"].any()


def describe(sets: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per variant: images in the set and whether it is FST-conditioned."""
    return pd.DataFrame({v: {"images": len(e), "FST conditioned": conditioned(e)} for v, e in sets.items()}).T


# --- image quality -----------------------------------------------------------------------------------


@dataclass
class ImageQuality:
    """FID/KID of every variant's evaluation set against the same real test reference."""

    reference: pd.DataFrame  # the real test rows of the reference (≤ real_per_cell per cell)
    real_feats: np.ndarray  # (N_r, 2048) Inception features of ``reference``
    synth_feats: dict[str, np.ndarray]  # variant → (N_v, 2048)
    metrics: pd.DataFrame  # image.group_image_metrics rows of every variant, with ``variant``
    spread: pd.DataFrame  # one row per variant: image.fst_spread (+ ratio columns, see below)
    n_fst: int  # the equal N per FST (real and synthetic)


def image_quality(test_df: pd.DataFrame, evalsets: dict[str, pd.DataFrame], cfg: ImageMetricsConfig,
                  reference: str | None = None, extractor: image.Extractor | None = None,
                  progress: bool = True) -> ImageQuality:
    """FID and KID per FST, FST group and overall of each set against the real test split at
    equal N (synthetic images grouped by the plan's FST, ``plan_fst``), and the spread of FID over
    the six FSTs. With a ``reference`` variant, ``spread`` also holds ``fid_var_ratio`` (FID
    variance over FST ÷ the reference's) with ``ratio_low``/``ratio_high``, the 95% interval of
    the ratio over paired bootstrap replicates (:func:`image.fst_spread_bootstrap`; the real
    resamples are shared). An FST compared at an N other than the common one is an error.
    ``extractor``: the feature extractor (default ``cfg.extractor``; see :func:`image.image_features`)."""
    if reference is not None and reference not in evalsets:
        raise ValueError(f"reference variant {reference!r} must be one of {list(evalsets)}")
    real_ref = balance.per_cell_subset(test_df, cfg.real_per_cell, seed=cfg.seed)
    real_fst = real_ref["fitzpatrick_scale"]
    extractor = cfg.extractor if extractor is None else extractor
    real_feats = image.image_features(real_ref["image_path"].tolist(), extractor, progress=progress)
    synth_feats = {v: image.image_features(e["image_path"].tolist(), extractor, progress=progress)
                   for v, e in evalsets.items()}
    n_fst = image.equal_n(real_fst, *[e["plan_fst"] for e in evalsets.values()])
    metrics = pd.concat([image.group_image_metrics(real_feats, real_fst, synth_feats[v], e["plan_fst"],
                                                   n_boot=cfg.n_boot, seed=cfg.seed).assign(variant=v)
                         for v, e in evalsets.items()], ignore_index=True)
    per_fst = metrics[metrics["level"] == "fst"]
    if not (per_fst["n_used"] == n_fst).all():
        raise ValueError(f"unequal N across variants: every FST should be compared at n={n_fst}, got "
                         f"{per_fst.groupby('variant')['n_used'].unique().to_dict()}")
    spread = pd.DataFrame({v: image.fst_spread(metrics[metrics["variant"] == v]) for v in evalsets}).T
    if reference is not None:
        boot = {v: image.fst_spread_bootstrap(real_feats, real_fst, synth_feats[v], e["plan_fst"], n=n_fst,
                                              n_boot=cfg.n_boot, seed=cfg.seed) for v, e in evalsets.items()}
        ratio = {v: boot[v]["fid_var"] / boot[reference]["fid_var"] for v in evalsets}
        spread["fid_var_ratio"] = spread["fid_var"] / spread.loc[reference, "fid_var"]
        spread[["ratio_low", "ratio_high"]] = [bootstrap.percentile_ci(ratio[v], 0.95) for v in evalsets]
    return ImageQuality(real_ref, real_feats, synth_feats, metrics, spread, n_fst)


def fidelity_diversity(quality: ImageQuality, evalsets: dict[str, pd.DataFrame], k: int = 5,
                       seed: int = 0) -> pd.DataFrame:
    """Precision, recall, density and coverage (Naeem et al. 2020; :func:`image.prdc_per_group`)
    of every variant per FST group and per FST, from the features :func:`image_quality` computed:
    fidelity (precision, density) and diversity (recall, coverage) separately, where FID mixes
    them. Every row of a level is compared at the same N across variants (the smallest over
    variants and groups with more than ``k`` images, ``n_used``); the reference is the same real
    test subset. Columns: variant + those of :func:`image.prdc_per_group`."""
    real_fst = quality.reference["fitzpatrick_scale"].to_numpy()
    levels = {"fst_group": lambda f: np.array([schema.fst_group(int(x)) for x in f]), "fst": lambda f: np.asarray(f)}
    rows = []
    for level, key in levels.items():
        real_groups = pd.Series(key(real_fst)).value_counts()
        counts = [pd.concat([real_groups, pd.Series(key(e["plan_fst"].to_numpy())).value_counts()], axis=1)
                  .min(axis=1) for e in evalsets.values()]
        usable = [c[c > k] for c in counts]
        n = int(min(c.min() for c in usable)) if all(len(c) for c in usable) else None
        for v, e in evalsets.items():
            t = image.prdc_per_group(quality.real_feats, real_fst, quality.synth_feats[v], e["plan_fst"].to_numpy(),
                                     k=k, n=n, seed=seed)
            rows.append(t[t["level"] == level].assign(variant=v))
    out = pd.concat(rows, ignore_index=True)
    return out[["variant", *[c for c in out.columns if c != "variant"]]]


# --- adherence -----------------------------------------------------------------------------------------


def light_shares(evalsets: dict[str, pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """Per variant: the share of images ITA reads as II–III when V–VI was asked (over all draws
    for a variant without FST conditioning), with its bootstrap CI, n and ``over``."""
    rows = [{"variant": v, **adherence.light_share(e["estimated_fst"].to_numpy(),
                                                    e["requested_fst"].to_numpy() if conditioned(e) else None,
                                                    seed=seed)}
            for v, e in evalsets.items()]
    return pd.DataFrame(rows).set_index("variant")


def plot_fst_confusions(evalsets: dict[str, pd.DataFrame], save_pattern: str | None = None) -> list:
    """Requested × ITA-estimated FST of every FST-conditioned set, one figure each; ``save_pattern``
    with ``{variant}`` (e.g. ``".../04_adherence_{variant}.png"``) names the files."""
    return [report.plot_confusion(adherence.confusion(e["requested_fst"], e["estimated_fst"]),
                                  f"FST adherence · {v} (n={len(e)})", "ITA-estimated FST", "requested FST",
                                  save_to=save_pattern.format(variant=v) if save_pattern else None)
            for v, e in evalsets.items() if conditioned(e)]


#: the shares of :func:`adherence_shares`, per variant
ADHERENCE = ("fst", "fst_v_vi", "fst_audit", "fst_audit_v_vi", "light", "lesion")


def _cell(d: dict | None) -> str:
    return "—" if d is None else f"{d['share']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}] (n={d['n']})"


@dataclass
class Adherence:
    """Adherence of every variant's evaluation set, and the estimators' ceilings on real images."""

    shares: dict[str, dict[str, dict | None]]  # variant → ADHERENCE key → adherence.share_ci dict
    ita_ceiling: pd.DataFrame  # adherence.ita_ceiling on the real test split
    auditor_ceiling: pd.DataFrame  # the auditor CNN's adherence_table on the real test split
    lesion_accuracy: pd.DataFrame  # the lesion classifier's accuracy per FST on the real test split

    def table(self) -> pd.DataFrame:
        """variant × share: ``"share [ci_low, ci_high] (n=…)"``, "—" where undefined."""
        return pd.DataFrame({v: {k: _cell(d) for k, d in a.items()} for v, a in self.shares.items()}).T

    def ceilings(self) -> str:
        """The ceilings, one line per estimator: what a perfect generator would score."""
        lesion = self.lesion_accuracy.loc["overall"]
        return "\n".join([
            "FST ceiling, ITA on the real test images (exact share): "
            + ", ".join(f"{f}: {r.exact:.3f} (n={int(r.n)})" for f, r in self.ita_ceiling.iterrows()),
            "FST ceiling, auditor CNN on the real test images (exact share): "
            + ", ".join(f"{f}: {r.exact:.3f} (n={int(r.n)})" for f, r in self.auditor_ceiling.iterrows()),
            f"lesion classifier ceiling (real test split, n={int(lesion['n'])}): {lesion['all']:.3f}"])


def adherence_shares(evalsets: dict[str, pd.DataFrame], train_df: pd.DataFrame, test_df: pd.DataFrame,
                     size: int, model_seed: int = 0, seed: int = 0) -> Adherence:
    """FST adherence (exact share, overall and for V–VI requests) by ITA and by the auditor CNN,
    the II–III share when V–VI was asked, and lesion adherence (the real-data lesion classifier),
    each with a bootstrap CI over images (``seed``). The auditor and lesion classifier are trained
    on the real training split with ``model_seed`` (cached). Images are read at ``size`` px."""
    lesion_clf, lesion_report = classifiers.get_lesion_classifier(train_df, test_df, size, seed=model_seed)
    auditor, audit_report = classifiers.get_fst_auditor(train_df, test_df, size, seed=model_seed)
    shares = {}
    for v, e in evalsets.items():
        cond = conditioned(e)
        req, est = e["requested_fst"].to_numpy(), e["estimated_fst"].to_numpy()
        x = load_tensor(e, size, progress=False)
        predicted = adherence.predict_lesion(lesion_clf, x)
        hit, audit_hit = est == req, adherence.audit_fst(auditor, x) == req
        v_vi = np.isin(req, (5, 6))
        shares[v] = {"fst": adherence.share_ci(hit, seed=seed) if cond else None,
                     "fst_v_vi": adherence.share_ci(hit[v_vi], seed=seed) if cond else None,
                     "fst_audit": adherence.share_ci(audit_hit, seed=seed) if cond else None,
                     "fst_audit_v_vi": adherence.share_ci(audit_hit[v_vi], seed=seed) if cond else None,
                     "light": adherence.light_share(est, req if cond else None, seed=seed),
                     "lesion": adherence.share_ci(predicted == e["lesion"].map(LESION_INDEX).to_numpy(), seed=seed)}
    return Adherence(shares, adherence.ita_ceiling(test_df, size), audit_report["ceiling"],
                     lesion_report["accuracy"])


# --- memorisation ----------------------------------------------------------------------------------


@dataclass
class MemorisationStudy:
    """Nearest real training image of every synthetic image, per variant, and the calibration."""

    calibration: image.Memorisation  # the real test reference checked the same way: false positives
    per_variant: dict[str, image.Memorisation]
    cells: pd.DataFrame  # per variant × FST × lesion cell (image.Memorisation.per_cell rows)

    def summary(self) -> pd.DataFrame:
        """Per variant: n, near-copy share (overall and in rare cells), median distance ratio."""
        out = {}
        for v, r in self.per_variant.items():
            rare = r.per_image.merge(r.per_cell["rare"].reset_index(), on=["fitzpatrick_scale", "lesion"])
            out[v] = {"n": len(r.per_image), "near_copy_share": r.per_image["near_copy"].mean(),
                      "median_ratio": r.per_image["ratio"].median(),
                      "near_copy_share_rare_cells": rare.query("rare")["near_copy"].mean()}
        return pd.DataFrame(out).T

    def rare_cells(self, k: int = 12) -> pd.DataFrame:
        """The ``k`` rare cells with the largest near-copy share."""
        return self.cells[self.cells["rare"]].sort_values("near_copy_share", ascending=False).head(k)


def memorisation(train_df: pd.DataFrame, quality: ImageQuality, evalsets: dict[str, pd.DataFrame],
                 cfg: ImageMetricsConfig, extractor: image.Extractor | None = None,
                 progress: bool = True) -> MemorisationStudy:
    """:func:`image.memorisation` of each set against at most ``cfg.train_per_cell`` training
    images per cell, and of the real test reference (the calibration of the threshold), with the
    features of ``quality``; ``extractor`` (default ``cfg.extractor``) reads the training images."""
    train_ref = balance.per_cell_subset(train_df, cfg.train_per_cell, seed=cfg.seed)
    extractor = cfg.extractor if extractor is None else extractor
    train_feats = image.image_features(train_ref["image_path"].tolist(), extractor, progress=progress)
    kw = {"threshold": cfg.near_copy, "seed": cfg.seed}
    calib = image.memorisation(quality.real_feats, train_feats, quality.reference, train_ref, **kw)
    memo = {v: image.memorisation(quality.synth_feats[v], train_feats, e, train_ref, **kw)
            for v, e in evalsets.items()}
    cells = pd.concat({v: r.per_cell for v, r in memo.items()}, names=["variant"]).reset_index()
    return MemorisationStudy(calib, memo, cells)


def plot_pairs(memo: MemorisationStudy, size: int, save_pattern: str | None = None, k: int = 10) -> list:
    """The ``k`` closest synthetic–real training pairs of every variant, one figure each."""
    return [report.plot_pairs(r.top_pairs.head(k), size,
                              f"closest synthetic–real training pairs · {v} (distance / median real–real NN distance)",
                              save_to=save_pattern.format(variant=v) if save_pattern else None)
            for v, r in memo.per_variant.items()]
