"""The VAE fairness audit of notebook 07 (López-Pérez et al. 2025): per-FST reconstruction of VAEs
trained on FST mixes, the Laplace score against the encoder variance, artefact pixel AUROC and
the real ISIC-2017 images — as tables (one dataclass per step) and figures.

    data = load_data(cfg, "synthetic")                   # splits and the test images
    mixes = train_models(data, cfg.vae)                  # feature CNN + one VAE per mix (cached)
    rec = reconstruction(mixes, data, cfg.vae)           # per FST, gaps, representation curve
    unc = uncertainty(mixes, data, rec, cfg.vae)         # encoder variance vs Laplace (natural mix)
    art = artefacts(mixes, data, unc, cfg.vae)           # pixel maps vs the generator's masks
    isic = isic_study(mixes, unc, cfg.vae)               # ISIC-2017 (None where it is absent)
    result = AuditResult(rec, unc, art, isic)
    write_report(fig_dir, result, cfg, data, mixes)      # vae_audit_table.md + provenance

Every interval is a 95% percentile bootstrap CI from :mod:`bmglib.vae.laplace`'s helpers; every
row carries its N. Figures are written through :func:`bmglib.report.save`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from PIL import Image

from bmglib import config, paths, report
from bmglib.config import VAEConfig
from bmglib.data import images, prepare, schema, sources, synthetic
from bmglib.vae import laplace, model

ARTEFACTS = ("ruler", "ink", "patch")
METRICS = ("mse", "perceptual", "ssim")  # reconstruction metrics per image (lower, lower, higher = better)
COMPARED = ("natural", "balanced")  # the two mixes shown side by side


# --- data and models ------------------------------------------------------------------------------


@dataclass
class AuditData:
    """The splits of one prepared dataset and its test images."""

    dataset: str
    profile: str
    metadata: pd.DataFrame  # every usable row, with ``split``
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    x_test: torch.Tensor  # (N, 3, S, S) float in [-1, 1], rows of ``test``
    fst_test: np.ndarray  # (N,) int in 1..6

    @property
    def tag(self) -> str:
        return f"{self.dataset} · {self.profile}"

    def sizes(self) -> pd.DataFrame:
        """Rows per split and, per split, per FST (the test split is FST-balanced)."""
        parts = {"train": self.train, "val": self.val, "test": self.test}
        counts = pd.DataFrame({k: df["fitzpatrick_scale"].value_counts() for k, df in parts.items()}).T
        counts = counts.reindex(columns=schema.FST_LEVELS, fill_value=0).fillna(0).astype(int)
        counts = counts.rename(columns=schema.FST_ROMAN).rename_axis(index="split", columns="FST")
        return counts.assign(n=[len(df) for df in parts.values()])


def audit_data(metadata: pd.DataFrame, image_size: int, dataset: str = "synthetic",
               profile: str = "") -> AuditData:
    """:class:`AuditData` of a table with ``split`` (train/val/test) and ``image_path`` columns."""
    train, val, test = (metadata[metadata["split"] == s] for s in ("train", "val", "test"))
    if test.empty or train.empty:
        raise ValueError(f"{dataset}: the VAE audit needs train and test rows, got "
                         f"{metadata['split'].value_counts().to_dict()}")
    return AuditData(dataset, profile, metadata, train, val, test,
                     images.load_tensor(test, image_size, progress=False),
                     test["fitzpatrick_scale"].to_numpy())


def load_data(cfg: config.Config, dataset: str = "synthetic") -> AuditData:
    """Prepare ``dataset`` (notebook 01's step, read back when done) and load its test images at
    ``cfg.vae.image_size``. A dataset without image files is an error."""
    data = prepare.prepare(cfg, dataset, progress=False)
    if not data.has_images:
        raise ValueError(f"{dataset}: the VAE audit needs image files (metadata only was prepared)")
    return audit_data(data.metadata, cfg.vae.image_size, dataset, cfg.profile)


@dataclass
class Mixes:
    """The perceptual feature CNN and one trained VAE per training mix (:func:`model.mix_names`)."""

    features: model.CNNFeatures
    feature_report: dict  # validation accuracies of the feature CNN, with n_val
    perceptual: model.FeatureDistance
    runs: dict[str, model.VAERun]

    def last_epoch(self) -> pd.DataFrame:
        """The last epoch's training losses, one row per mix."""
        return pd.DataFrame({mix: run.history.iloc[-1] for mix, run in self.runs.items()}).T


def train_models(data: AuditData, vcfg: VAEConfig, progress: bool = True) -> Mixes:
    """Train (or read from the cache) the feature CNN on the natural training split, then one
    VAE per mix with the same N, steps and seed."""
    features, feature_report = model.get_feature_net(data.train, data.val, vcfg, progress=progress)
    perceptual = model.FeatureDistance(features)
    runs = model.train_mixes(data.train, vcfg, perceptual, features.key, progress=progress)
    return Mixes(features, feature_report, perceptual, runs)


# --- table helpers (one row per group / pair, every row with its N) --------------------------------


def training_share(table: pd.DataFrame, fst) -> np.ndarray:
    """(N,) the share of each image's FST (``fst``, (N,)) among the rows of a training table."""
    share = table["fitzpatrick_scale"].value_counts(normalize=True)
    return share.reindex(np.asarray(fst), fill_value=0.0).to_numpy()


def score_correlations(scores: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                       n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Spearman ρ (bootstrap CI, n) of every score with every target: one row per pair."""
    rows = [{"score": s, "target": t, **laplace.spearman_ci(a, b, n_boot, seed)}
            for s, a in scores.items() for t, b in targets.items()]
    return pd.DataFrame(rows)


def per_fst_table(per_image: dict[str, pd.DataFrame], fst, metrics=METRICS,
                  n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table: mix × metric × group (FST I..VI, I-III, IV-VI, overall) with n, mean, CI.

    ``per_image[mix]``: per-image metrics of the same images, whose FSTs are ``fst`` (N,).
    """
    parts = [laplace.group_means(df[m].to_numpy(), fst, n_boot, seed).reset_index().assign(mix=mix, metric=m)
             for mix, df in per_image.items() for m in metrics]
    return pd.concat(parts, ignore_index=True)[["mix", "metric", "group", "n", "mean", "ci_low", "ci_high"]]


def fst_gaps(per_image: dict[str, pd.DataFrame], fst, metrics=METRICS,
             n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per mix and metric: gap = mean(I–III) − mean(IV–VI) (:data:`schema.GAP_GROUPS`, the
    default of :func:`laplace.mean_gap`) with a bootstrap CI and the Ns (``n_a``: I–III).

    For mse/perceptual a gap < 0 means darker skin is reconstructed worse; for ssim, better.
    """
    rows = [{"mix": mix, "metric": m, **laplace.mean_gap(df[m].to_numpy(), fst, n_boot=n_boot, seed=seed)}
            for mix, df in per_image.items() for m in metrics]
    return pd.DataFrame(rows)


def read_gaps(gaps: pd.DataFrame) -> pd.DataFrame:
    """:func:`fst_gaps` with a ``reading`` column: whether IV–VI is reconstructed worse or better
    than I–III (lower mse/perceptual, higher ssim is better), and whether the CI includes 0."""
    worse = (gaps["gap"] < 0) == (gaps["metric"] != "ssim")  # gap = I–III − IV–VI
    sure = (gaps["ci_low"] > 0) | (gaps["ci_high"] < 0)
    reading = np.where(worse, "IV-VI worse", "IV-VI better")
    return gaps.assign(reading=[r + ("" if s else " (CI includes 0)") for r, s in zip(reading, sure, strict=True)])


def representation_curve(runs: dict[str, model.VAERun], per_image: dict[str, pd.DataFrame],
                         fst: np.ndarray, metric: str = "mse", n_boot: int = 1000,
                         seed: int = 0) -> pd.DataFrame:
    """One row per (mix, FST): the FST's share of the training draws and unique training images,
    and the test ``metric`` of that FST (mean, bootstrap CI, n_test).

    ``per_image[mix]``: :func:`model.reconstruction_metrics` of the same test images, whose FSTs
    are ``fst`` (N,).
    """
    rows = []
    for mix, run in runs.items():
        table = laplace.group_means(per_image[mix][metric].to_numpy(), fst, n_boot, seed)
        tf = run.table["fitzpatrick_scale"]
        for f in schema.FST_LEVELS:
            r = table.loc[schema.FST_ROMAN[f]]
            rows.append({"mix": mix, "fitzpatrick_scale": f, "share": float((tf == f).mean()),
                         "n_train_draws": int((tf == f).sum()),
                         "n_train_unique": int(run.table.loc[tf == f, "md5hash"].nunique()),
                         "n_test": int(r["n"]), metric: r["mean"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"]})
    return pd.DataFrame(rows)


def ci_table(long: pd.DataFrame, index: str, columns, value: str = "mean",
             digits: int = 3) -> pd.DataFrame:
    """Wide display of a long table: cells ``"value [ci_low, ci_high]"``; the n of each row of
    ``index`` (its largest n over the columns) in an ``n`` column."""
    cell = [f"{v:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"
            for v, lo, hi in zip(long[value], long["ci_low"], long["ci_high"], strict=True)]
    wide = long.assign(cell=cell).pivot_table(index=index, columns=columns, values="cell",
                                              aggfunc="first", sort=False)
    wide.insert(0, "n", long.groupby(index, sort=False)["n"].max())
    return wide


def _by_group(values: dict[str, np.ndarray], fst: np.ndarray, name: str, n_boot: int,
              seed: int) -> pd.DataFrame:
    """Long table of :func:`laplace.group_means` of each named (N,) array, names in ``name``."""
    return pd.concat({k: laplace.group_means(v, fst, n_boot, seed) for k, v in values.items()},
                     names=[name]).reset_index()


# --- study 1: reconstruction quality per FST --------------------------------------------------------


@dataclass
class Reconstruction:
    """Test reconstruction of every mix, per FST; ``gaps`` and the markdown cover :data:`COMPARED`."""

    per_image: dict[str, pd.DataFrame]  # mix → model.reconstruction_metrics rows (test order)
    per_fst: pd.DataFrame  # per_fst_table of every mix
    gaps: pd.DataFrame  # fst_gaps of the compared mixes
    curves: dict[str, pd.DataFrame]  # "mse" / "ssim" → representation_curve
    sweep_change: pd.DataFrame  # group_means of the paired MSE change across the V-VI sweep

    def compared(self) -> pd.DataFrame:
        """``per_fst`` of the natural and balanced mixes only."""
        return self.per_fst[self.per_fst["mix"].isin(COMPARED)]

    def shares(self) -> pd.DataFrame:
        """The FST shares of the training draws: FST (rows) × mix (columns)."""
        return self.curves["mse"].pivot_table(index="fitzpatrick_scale", columns="mix", values="share",
                                              sort=False)


def reconstruction(mixes: Mixes, data: AuditData, vcfg: VAEConfig) -> Reconstruction:
    """Per-image metrics of every mix on the test images, their per-FST means, the I–III − IV–VI
    gaps of the compared mixes, the representation curves and the paired change of test MSE from
    the smallest to the largest V–VI share of the sweep (> 0: more V–VI data lowered the error)."""
    fst, kw = data.fst_test, {"n_boot": vcfg.n_boot, "seed": vcfg.seed}
    per_image = {mix: model.reconstruction_metrics(run.model, data.x_test, mixes.perceptual)
                 for mix, run in mixes.runs.items()}
    names = model.mix_names(vcfg)
    lo_mix, hi_mix = names[2], names[-1]
    change = laplace.group_means(per_image[lo_mix]["mse"] - per_image[hi_mix]["mse"], fst,
                                 vcfg.n_boot, vcfg.seed).assign(change=f"{lo_mix} - {hi_mix}")
    return Reconstruction(
        per_image, per_fst_table(per_image, fst, **kw),
        fst_gaps({m: per_image[m] for m in COMPARED}, fst, **kw),
        {m: representation_curve(mixes.runs, per_image, fst, m, vcfg.n_boot, vcfg.seed)
         for m in ("mse", "ssim")},
        change)


# --- study 2: uncertainty scores ----------------------------------------------------------------------

LAPLACE_FITS = {"Laplace (decoder)": None, "Laplace (last layer)": 1}  # name → n_layers (None: cfg's)


@dataclass
class Uncertainty:
    """Per-image uncertainty scores of the natural mix's VAE on the test images."""

    posteriors: dict[str, laplace.LaplacePosterior]  # name → posterior (see LAPLACE_FITS)
    predictive: dict[str, laplace.PredictiveVariance]  # name → scores and per-pixel maps
    scores: dict[str, np.ndarray]  # "encoder variance" and each Laplace score: (N,)
    targets: dict[str, np.ndarray]  # mse, perceptual, FST share in training: (N,)
    correlations: pd.DataFrame  # score_correlations(scores, targets)
    by_fst: pd.DataFrame  # group_means of each score, long (column ``score``)

    def posterior_summary(self) -> pd.DataFrame:
        """Per posterior: σ² of the likelihood, images it was fitted on, and the median relative
        Hutchinson standard error of the per-image score (with the probes and n behind it)."""
        return pd.DataFrame({k: {"sigma2": p.sigma2, "n_fit": p.n_fit,
                                 "median_relative_se": float(np.median(self.predictive[k].se / self.predictive[k].score)),
                                 "n": len(self.predictive[k].score)}
                             for k, p in self.posteriors.items()}).T


def uncertainty(mixes: Mixes, data: AuditData, rec: Reconstruction, vcfg: VAEConfig,
                progress: bool = True) -> Uncertainty:
    """Fit the Laplace posteriors of the natural mix's VAE (whole decoder per ``laplace_layers``,
    and its last layer), score the test images, and correlate every score with the
    reconstruction error and the FST's share of the training draws (Spearman, bootstrap CI)."""
    run = mixes.runs["natural"]
    posts = {k: model.fit_run_laplace(run, vcfg, n_layers=n, progress=progress) for k, n in LAPLACE_FITS.items()}
    pv = {k: laplace.predictive_variance(run.model, p, data.x_test, vcfg.score_probes, vcfg.seed)
          for k, p in posts.items()}
    natural = rec.per_image["natural"]
    scores = {"encoder variance": natural["enc_var"].to_numpy(), **{k: v.score for k, v in pv.items()}}
    targets = {"mse": natural["mse"].to_numpy(), "perceptual": natural["perceptual"].to_numpy(),
               "FST share in training": training_share(run.table, data.fst_test)}
    return Uncertainty(posts, pv, scores, targets,
                       score_correlations(scores, targets, vcfg.n_boot, vcfg.seed),
                       _by_group(scores, data.fst_test, "score", vcfg.n_boot, vcfg.seed))


# --- artefact pixels -------------------------------------------------------------------------------


def artefact_masks(df: pd.DataFrame, size: int, verify: int = 0) -> dict[str, np.ndarray]:
    """Re-render the generator's ruler/ink/patch masks of synthetic rows at ``size`` pixels.

    Each row is re-rendered from ``(seed, stream, index)`` at its own ``size`` and its masks are
    area-averaged to ``size`` (≥ half covered → True), as the images are resized on loading.
    Returns ``{"ruler"|"ink"|"patch"|"any": (N, size, size) bool}``. ``verify``: check that the
    first ``verify`` re-rendered images equal the stored PNGs (ValueError otherwise).
    """
    out = {k: np.zeros((len(df), size, size), bool) for k in (*ARTEFACTS, "any")}
    for n, row in enumerate(df.to_dict("records")):
        if n >= verify and not any(bool(row[k]) for k in ARTEFACTS):
            continue
        rng = synthetic.image_rng(int(row["seed"]), str(row["stream"]), int(row["index"]))
        sample = synthetic.render(int(row["fitzpatrick_scale"]), row["lesion"], int(row["size"]), rng)
        if n < verify and not np.array_equal(sample.image, np.asarray(Image.open(row["image_path"]))):
            raise ValueError(f"re-rendered image {row['image_path']} differs from the stored PNG")
        for k, m in sample.masks.items():
            if k in ARTEFACTS:
                small = Image.fromarray(m.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
                out[k][n] = np.asarray(small) >= 0.5
                out["any"][n] |= out[k][n]
    return out


def pick_examples(masks: dict[str, np.ndarray], per_kind: int = 1) -> list[int]:
    """Row indices of ``per_kind`` distinct images per artefact kind (ruler, ink, patch)."""
    rows: list[int] = []
    for kind in ARTEFACTS:
        found = [int(i) for i in np.flatnonzero(masks[kind].any((1, 2))) if i not in rows]
        rows += found[:per_kind]
    return rows


def artefact_aurocs(maps: dict[str, torch.Tensor], masks: dict[str, np.ndarray],
                    n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Pixel AUROC of each map (N,H,W) for each artefact mask (N,H,W), pooled over the images
    that contain that artefact (the other pixels of those images are the negatives)."""
    rows = []
    for kind, mask in masks.items():
        has = mask.any((1, 2))
        if not has.any():
            continue
        for name, m in maps.items():
            rows.append({"map": name, "artefact": kind,
                         **laplace.pixel_auroc(np.asarray(m)[has], mask[has], n_boot, seed)})
    return pd.DataFrame(rows)


@dataclass
class Artefacts:
    """Per-pixel maps of the test images against the generator's artefact masks."""

    masks: dict[str, np.ndarray]  # artefact_masks: (N, S, S) bool per kind and "any"
    pixel_maps: dict[str, torch.Tensor]  # each Laplace map and the squared error: (N, S, S)
    auroc: pd.DataFrame  # artefact_aurocs
    recon: torch.Tensor  # (N, 3, S, S) in [-1, 1]: the natural mix's reconstructions


def artefacts(mixes: Mixes, data: AuditData, unc: Uncertainty, vcfg: VAEConfig,
              verify: int = 3) -> Artefacts | None:
    """Pixel AUROC of the Laplace maps and of the squared reconstruction error for the ruler,
    ink and patch masks, re-rendered from the synthetic test rows (the first ``verify`` checked
    against the stored PNGs). None for a dataset other than ``synthetic`` (no masks exist)."""
    if data.dataset != "synthetic":
        return None
    vae = mixes.runs["natural"].model
    masks = artefact_masks(data.test, vcfg.image_size, verify=verify)
    pixel_maps = {**{k: v.maps for k, v in unc.predictive.items()},
                  "reconstruction error": model.error_maps(vae, data.x_test)}
    return Artefacts(masks, pixel_maps, artefact_aurocs(pixel_maps, masks, vcfg.n_boot, vcfg.seed),
                     model.reconstruct(vae, data.x_test)[0])


# --- the ISIC-2017 images ------------------------------------------------------------------------


def ood_aurocs(inside: dict[str, np.ndarray], outside: dict[str, np.ndarray], n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """AUROC of each per-image score for telling ``outside`` images (positives) from ``inside``."""
    rows = [{"score": k, **laplace.auroc_ci(np.r_[inside[k], outside[k]],
                                            np.r_[np.zeros(len(inside[k]), bool), np.ones(len(outside[k]), bool)],
                                            n_boot, seed)} for k in inside]
    return pd.DataFrame(rows)


@dataclass
class Isic:
    """The natural mix's VAE on real ISIC-2017 images (FST estimated from ITA, no masks)."""

    table: pd.DataFrame  # the images' rows (fitzpatrick_scale: ITA estimate)
    x: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    metrics: pd.DataFrame  # model.reconstruction_metrics
    predictive: dict[str, laplace.PredictiveVariance]
    by_ita: pd.DataFrame  # group_means of each score and of mse, long (column ``quantity``)
    correlations: pd.DataFrame  # each score vs mse
    ood: pd.DataFrame  # AUROC of each score (and mse): ISIC positive, synthetic test negative

    @property
    def fst(self) -> np.ndarray:
        return self.table["fitzpatrick_scale"].to_numpy()

    def by_ita_present(self) -> pd.DataFrame:
        """``by_ita`` without the ITA groups that hold no image."""
        return self.by_ita[self.by_ita["n"] > 0]


def isic_study(mixes: Mixes, unc: Uncertainty, vcfg: VAEConfig,
               table: pd.DataFrame | None = None) -> Isic | None:
    """Scores of up to ``vcfg.n_isic`` ISIC-2017 images per ITA-estimated FST group, their
    correlation with the reconstruction error, and how well each score (and the error) separates
    them from the synthetic test images. ``table``: rows with ``image_path`` and
    ``fitzpatrick_scale`` (default: ``isic2017`` from the shared real data, FST estimated; None
    is returned when that folder is absent)."""
    if table is None:
        if not (paths.SHARED_REAL / "isic2017").exists():
            return None
        table = sources.load_source("isic2017", estimate_fst=True)
    table = table.head(vcfg.n_isic)
    vae, kw = mixes.runs["natural"].model, (vcfg.n_boot, vcfg.seed)
    x = images.load_tensor(table, vcfg.image_size, progress=False)
    fst = table["fitzpatrick_scale"].to_numpy()
    metrics = model.reconstruction_metrics(vae, x, mixes.perceptual)
    pv = {k: laplace.predictive_variance(vae, p, x, vcfg.score_probes, vcfg.seed)
          for k, p in unc.posteriors.items()}
    scores = {"encoder variance": metrics["enc_var"].to_numpy(), **{k: v.score for k, v in pv.items()}}
    mse = metrics["mse"].to_numpy()
    return Isic(table, x, metrics, pv, _by_group({**scores, "mse": mse}, fst, "quantity", *kw),
                score_correlations(scores, {"mse": mse}, *kw),
                ood_aurocs({**unc.scores, "mse": unc.targets["mse"]}, {**scores, "mse": mse}, *kw))


# --- the result and its report -----------------------------------------------------------------------


@dataclass
class AuditResult:
    """Every table of the audit; ``artefacts`` / ``isic`` None where the data has no masks / images."""

    reconstruction: Reconstruction
    uncertainty: Uncertainty
    artefacts: Artefacts | None
    isic: Isic | None

    def sections(self) -> dict[str, pd.DataFrame]:
        """The tables of ``vae_audit_table.md``, by heading (empty where a part was skipped)."""
        rec, unc, isic = self.reconstruction, self.uncertainty, self.isic
        return {
            "Reconstruction per FST (test split; natural and balanced mixes)": rec.compared(),
            "Gap mean({}) - mean({})".format(*schema.GAP_GROUPS): rec.gaps,
            "Representation curve (test MSE of each FST vs its training share)": rec.curves["mse"],
            "Paired change of test MSE across the V-VI sweep (smallest minus largest share)":
                rec.sweep_change,
            "Score correlations (natural mix, test split, Spearman)": unc.correlations,
            "Scores per FST (natural mix, test split)": unc.by_fst,
            "Artefact pixel AUROC (synthetic test images with the artefact)":
                self.artefacts.auroc if self.artefacts else pd.DataFrame(),
            "ISIC-2017: per estimated-FST (ITA) group": isic.by_ita_present() if isic else pd.DataFrame(),
            "ISIC-2017: score vs reconstruction error (Spearman)": isic.correlations if isic else pd.DataFrame(),
            "OOD: ISIC-2017 (positive) vs synthetic test (negative), AUROC": isic.ood if isic else pd.DataFrame(),
        }


def audit_markdown(title: str, sections: dict[str, pd.DataFrame], notes: list[str]) -> str:
    """A markdown report: a title, notes (provenance, caveats), then one table per section."""
    parts = [f"# {title}", "", *[f"* {n}" for n in notes]]
    for name, df in sections.items():
        parts += ["", f"## {name}", "", report.to_markdown(df)]
    return "\n".join(parts) + "\n"


def write_report(out_dir: Path, result: AuditResult, cfg: config.Config, data: AuditData,
                 mixes: Mixes) -> Path:
    """Write ``vae_audit_table.md`` (every table of ``result``, with provenance and caveats) and
    ``vae_audit_provenance.json`` (config, git commit, dataset hash, seed, feature net, run keys)
    to ``out_dir``; returns the markdown's path."""
    vcfg = cfg.vae
    stamp = config.provenance(cfg, dataset_hash=config.hash_table(data.metadata), seed=vcfg.seed,
                              feature_net=mixes.feature_report, runs={m: r.key for m, r in mixes.runs.items()})
    config.write_provenance(Path(out_dir) / "vae_audit_provenance.json", stamp)
    notes = [f"profile {data.profile}, dataset {data.dataset}, git {stamp['git_commit']}, "
             f"dataset hash {stamp['dataset_hash']}, seed {vcfg.seed}",
             f"test n={len(data.test)}; each mix n_train={vcfg.n_train}, {vcfg.epochs} epochs; "
             f"95% percentile bootstrap CIs, {vcfg.n_boot} resamples; one training seed per mix",
             "ISIC FST is estimated from ITA, not annotated; ISIC images are out of distribution"]
    path = Path(out_dir) / "vae_audit_table.md"
    path.write_text(audit_markdown(f"VAE fairness audit · {data.tag}", result.sections(), notes))
    return path


# --- figures ---------------------------------------------------------------------------------------


def _show(ax, img, title: str = ""):
    """imshow a (3,H,W) image in [-1,1] or an (H,W) map, no ticks."""
    a = np.asarray(img)
    ax.imshow(((a.transpose(1, 2, 0) + 1) / 2).clip(0, 1) if a.ndim == 3 else a, cmap="magma")
    ax.set(xticks=[], yticks=[], title=title)


def plot_recon_per_fst(rec: Reconstruction, title: str, save_to=None):
    """Test MSE, perceptual distance and SSIM per FST of the natural and balanced mixes, 95% CIs."""
    fst_rows = rec.per_fst[rec.per_fst["group"].isin([schema.FST_ROMAN[f] for f in schema.FST_LEVELS])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, metric in zip(axes, METRICS, strict=True):
        for k, mix in enumerate(COMPARED):
            t = fst_rows[(fst_rows["mix"] == mix) & (fst_rows["metric"] == metric)]
            ax.errorbar(np.arange(6) + 0.12 * (k - 0.5), t["mean"], fmt="o", capsize=3, label=mix,
                        yerr=[t["mean"] - t["ci_low"], t["ci_high"] - t["mean"]])
        ax.set(xticks=range(6), xticklabels=t["group"], xlabel="FST", title=metric)
    axes[0].legend()
    fig.suptitle(f"test reconstruction per FST · {title} (n per FST = {int(t['n'].iloc[0])})")
    fig.tight_layout()
    return report.save(fig, save_to)


def plot_representation(rec: Reconstruction, save_to=None):
    """Test MSE and SSIM of each FST against its share of the training draws, one line per FST."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (metric, curve) in zip(axes, rec.curves.items(), strict=True):
        for f, g in curve.groupby("fitzpatrick_scale"):
            g = g.sort_values("share")
            ax.errorbar(g["share"], g[metric], yerr=[g[metric] - g["ci_low"], g["ci_high"] - g[metric]],
                        marker="o", capsize=2, label=schema.FST_ROMAN[f])
        ax.set(xscale="log", xlabel="FST share of training draws", ylabel=f"test {metric} of that FST",
               title=f"{metric} vs representation ({len(rec.per_image)} mixes)")
    axes[0].legend(title="FST", ncol=2, fontsize=8)
    fig.tight_layout()
    return report.save(fig, save_to)


def plot_score_vs_error(unc: Uncertainty, fst: np.ndarray, title: str, save_to=None):
    """Each score against the test MSE (log-log), coloured by FST, with its Spearman ρ."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    corr = unc.correlations
    for ax, (name, s) in zip(axes, unc.scores.items(), strict=True):
        sc = ax.scatter(unc.targets["mse"], s, c=fst, cmap="copper_r", s=8, vmin=1, vmax=6)
        r = corr[(corr["score"] == name) & (corr["target"] == "mse")].iloc[0]
        ax.set(xscale="log", yscale="log", xlabel="test MSE", ylabel=name,
               title=f"ρ = {r.rho:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}], n = {r.n}")
    fig.colorbar(sc, ax=axes, label="FST")
    fig.suptitle(f"uncertainty score vs reconstruction error · natural mix · {title}")
    return report.save(fig, save_to)


def plot_artefact_maps(art: Artefacts, data: AuditData, save_to=None):
    """One test image per artefact kind: image, reconstruction, error², both Laplace maps, mask."""
    rows = pick_examples(art.masks)
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 6, figsize=(10, 1.8 * n), squeeze=False)
    for ax_row, i in zip(axes, rows, strict=False):  # no row: one empty panel row
        _show(ax_row[0], data.x_test[i], f"FST {data.fst_test[i]}")
        _show(ax_row[1], art.recon[i], "reconstruction")
        _show(ax_row[2], art.pixel_maps["reconstruction error"][i], "error²")
        _show(ax_row[3], art.pixel_maps["Laplace (decoder)"][i], "Laplace (decoder)")
        _show(ax_row[4], art.pixel_maps["Laplace (last layer)"][i], "Laplace (last)")
        _show(ax_row[5], art.masks["any"][i], "artefact mask")
    fig.tight_layout()
    return report.save(fig, save_to)


def plot_isic_maps(isic: Isic, vae: model.ConvVAE, save_to=None):
    """The two lightest and two darkest ITA estimates: image, reconstruction, both Laplace maps."""
    order = np.argsort(isic.fst, kind="stable")
    picks = list(order[:2]) + list(order[-2:])
    recon, _ = model.reconstruct(vae, isic.x)
    fig, axes = plt.subplots(len(picks), 4, figsize=(7, 1.8 * len(picks)), squeeze=False)
    for ax_row, i in zip(axes, picks, strict=True):
        _show(ax_row[0], isic.x[i], f"ITA-FST {isic.fst[i]}")
        _show(ax_row[1], recon[i], "reconstruction")
        _show(ax_row[2], isic.predictive["Laplace (decoder)"].maps[i], "Laplace (decoder)")
        _show(ax_row[3], isic.predictive["Laplace (last layer)"].maps[i], "Laplace (last)")
    fig.tight_layout()
    return report.save(fig, save_to)
