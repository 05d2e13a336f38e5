"""Hierarchical bootstrap of paired effects Δ = arm − reference (e.g. real+bmg − real-only).

A synthetic arm's classifiers vary by three sources: the generator (one diffusion training seed
makes one augmentation set), the classifier trained on it (its seed) and the test images. The CI
of :func:`paired_effect` covers all three. Each replicate

1. resamples the arm's **generator seeds** with replacement (G of G);
2. within each drawn generator seed, resamples its **classifier seeds** with replacement (C_g of
   C_g), so every replicate keeps each generator's number of classifiers;
3. resamples the **test images within each FST** with replacement (:func:`bootstrap.stratified`:
   every replicate keeps each FST's N): ONE image resample per replicate, applied to the arm and
   to the reference;
4. takes the reference arm at the **same classifier seeds** (arm run (g, c) is paired with the
   reference run c: same seed, same test images), so Δ is read replicate by replicate and its CI
   is not inflated by unpaired noise.

Δ = statistic(arm runs drawn) − statistic(reference runs paired with them). The point estimate is
the same on every run and every image. Resampling every level double-counts the lower levels'
noise a little (each run's mean already carries its images' noise), so the interval errs on the
wide side; with one generator seed step 1 is void and the CI covers classifier seeds and images
only (``variance_sources`` says so).

A statistic maps a :class:`bmglib.metrics.fairness.SeedPredictions` (S runs × N images; ``seeds``
holds the runs' (generator_seed, classifier_seed), repeated when drawn twice) to a float:
:func:`fnr_gap`, :func:`auc_overall`, :func:`es_auc` (each the mean over the S runs). Gaps of the
FST groups follow EDFR: FNR(IV–VI) − FNR(I–III) > 0 when darker skin is missed more, which is the
sensitivity gap light minus dark of :data:`schema.GAP_GROUPS`; a Δ < 0 of it narrows the gap.

:func:`minimal_detectable_effect` turns a CI into the smallest effect the design detects with
80 % power. Random numbers: ``rng`` as in :mod:`bmglib.metrics.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from bmglib.data import schema
from bmglib.metrics import bootstrap
from bmglib.metrics.fairness import SeedPredictions

Statistic = Callable[[SeedPredictions], float]

#: columns of the long prediction table (the image id column is ``id_col``, default ``md5hash``)
COLUMNS = ("arm", "generator_seed", "classifier_seed", "fitzpatrick_scale", "y_true", "y_pred", "p_melanoma")
#: ``generator_seed`` of runs without a generator (the real-only arm; NaN reads the same)
NO_GENERATOR = -1

_LIGHT, _DARK = (schema.FST_GROUPS[g] for g in schema.GAP_GROUPS)


def _in(fst: np.ndarray, levels: tuple) -> np.ndarray:
    """(N,) bool: fst in levels (a bincount-free ``np.isin`` for small ints; inside every replicate)."""
    return (np.asarray(fst)[:, None] == np.asarray(levels)[None, :]).any(1)


# --- statistics of S runs on N images ------------------------------------------------------------


def _auc_rows(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(S,) ROC AUC of each row of ``scores`` (S, N) against ``y_true`` (N,) {0, 1}, as
    :func:`bmglib.metrics.fairness.auc` (Mann–Whitney, ties ½); NaN rows unless both classes."""
    pos = np.asarray(y_true) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(len(scores), np.nan)
    ranks = rankdata(scores, axis=1)
    return (ranks[:, pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def fnr_gap(sp: SeedPredictions) -> float:
    """FNR(IV–VI) − FNR(I–III), the mean over runs: EDFR of ``fairness.edfr`` (missed melanomas;
    > 0 when darker skin is missed more; = sensitivity(I–III) − sensitivity(IV–VI)). NaN without
    melanomas in either group."""
    pos = sp.y_true == 1
    light, dark = pos & _in(sp.fst, _LIGHT), pos & _in(sp.fst, _DARK)
    if not light.any() or not dark.any():
        return float("nan")
    return float(np.mean(sp.y_pred[:, light].mean(1) - sp.y_pred[:, dark].mean(1)))


def auc_overall(sp: SeedPredictions) -> float:
    """ROC AUC of ``p_melanoma`` over all images, the mean over runs."""
    return float(np.mean(_auc_rows(sp.y_true, sp.y_score)))


def es_auc(sp: SeedPredictions) -> float:
    """Equity-scaled AUC over the FST groups I–III, IV–VI (``fairness.es_auc`` per run), the mean
    over runs: AUC_overall / (1 + Σ_g |AUC_g − AUC_overall|)."""
    overall = _auc_rows(sp.y_true, sp.y_score)
    spread = sum(np.abs(_auc_rows(sp.y_true[m], sp.y_score[:, m]) - overall)
                 for m in (_in(sp.fst, _LIGHT), _in(sp.fst, _DARK)))
    return float(np.mean(overall / (1 + spread)))


#: the statistics of a headline table, by name
STATISTICS: dict[str, Statistic] = {"fnr_gap": fnr_gap, "auc_overall": auc_overall, "es_auc": es_auc}


# --- the long table, aligned -------------------------------------------------------------------


def _aligned(preds: pd.DataFrame, roles: dict[str, str], id_col: str, who: str) -> pd.DataFrame:
    """The rows of the arms named in ``roles`` (role → arm, e.g. {"arm": "real+bmg", "reference":
    "real"}), with integer seeds (NaN generator seed → :data:`NO_GENERATOR`), after the checks every
    caller needs: the columns are there, every named arm is, no (run, image) row is duplicated.
    Errors start with ``who``."""
    missing = [c for c in (*COLUMNS, id_col) if c not in preds.columns]
    if missing:
        raise ValueError(f"{who}: preds lacks column(s) {missing}")
    present = set(preds["arm"].unique())
    for role, name in roles.items():
        if name not in present:
            raise ValueError(f"{who}: {role} {name!r} not in preds['arm'] (arms: {sorted(present)})")
    df = preds[preds["arm"].isin(list(roles.values()))]
    df = df.assign(generator_seed=df["generator_seed"].fillna(NO_GENERATOR).astype(int),
                   classifier_seed=df["classifier_seed"].astype(int))
    if df.duplicated(["arm", "generator_seed", "classifier_seed", id_col]).any():
        raise ValueError(f"{who}: duplicate (arm, generator_seed, classifier_seed, {id_col}) rows")
    return df


def _wide(df: pd.DataFrame, id_col: str, who: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``df`` (:func:`_aligned`) as one column per run (arm, generator_seed, classifier_seed; sorted)
    and one row per test image (sorted by id), with the images' y_true (N,) and FST (N,): every run
    must cover the same images, with the same labels."""
    wide = df.pivot(index=id_col, columns=["arm", "generator_seed", "classifier_seed"])
    if wide["y_pred"].isna().any().any():
        names = " and ".join(repr(a) for a in df["arm"].unique())
        raise ValueError(f"{who}: the runs of {names} cover different test images; "
                         "evaluate every run on the same test split")
    for col in ("y_true", "fitzpatrick_scale"):
        values = wide[col].to_numpy()
        if (values != values[:, :1]).any():
            raise ValueError(f"{who}: {col} differs between runs for the same image")
    return wide, wide["y_true"].iloc[:, 0].to_numpy(int), wide["fitzpatrick_scale"].iloc[:, 0].to_numpy(int)


def _runs(preds: pd.DataFrame, arm: str, reference: str, id_col: str):
    """The arm's and the reference's runs aligned on the same test images.

    Returns (y_true (N,), fst (N,), arm (gen (R,), cls (R,), y_pred (R, N), y_score (R, N)),
    ref_row (R,): the reference row paired with each arm run, ref (y_pred, y_score), n_ref)."""
    if arm == reference:
        raise ValueError(f"paired_effect: arm and reference are both {arm!r}")
    df = _aligned(preds, {"arm": arm, "reference": reference}, id_col, "paired_effect")
    ref = df[df["arm"] == reference]
    if ref.groupby("classifier_seed")["generator_seed"].nunique().max() > 1:
        raise ValueError(f"paired_effect: reference {reference!r} has several runs per classifier_seed; "
                         "pairing needs one")
    a = df[df["arm"] == arm]
    unpaired = sorted(set(a["classifier_seed"]) - set(ref["classifier_seed"]))
    if unpaired:
        raise ValueError(f"paired_effect: unpaired classifier seeds: arm {arm!r} has classifier_seed(s) "
                         f"{unpaired} that reference {reference!r} lacks")
    wide, y_true, fst = _wide(df, id_col, "paired_effect")
    keys = wide["y_pred"].columns  # (arm, generator_seed, classifier_seed), sorted
    is_arm = keys.get_level_values(0) == arm
    gen = keys.get_level_values(1)[is_arm].to_numpy(int)
    cls = keys.get_level_values(2)[is_arm].to_numpy(int)
    ref_cls = list(keys.get_level_values(2)[~is_arm])
    ref_row = np.array([ref_cls.index(c) for c in cls])
    pred, score = wide["y_pred"].to_numpy(float).T, wide["p_melanoma"].to_numpy(float).T
    return (y_true, fst, (gen, cls, pred[is_arm].astype(int), score[is_arm]), ref_row,
            (pred[~is_arm].astype(int), score[~is_arm]), len(ref_cls))


def _seed_draws(gen: np.ndarray, n_boot: int, rng: np.random.Generator, generators: bool) -> list[np.ndarray]:
    """Per replicate, the arm runs drawn (indices into ``gen`` (R,)): generator seeds with
    replacement (or each once, ``generators=False``), then each drawn seed's runs with replacement."""
    seeds = np.unique(gen)
    members = [np.flatnonzero(gen == g) for g in seeds]
    sizes = np.array([len(m) for m in members])
    padded = np.array([np.pad(m, (0, sizes.max() - len(m))) for m in members])  # (G, C_max)
    g_idx = (rng.integers(0, len(seeds), (n_boot, len(seeds))) if generators
             else np.broadcast_to(np.arange(len(seeds)), (n_boot, len(seeds))))
    c_idx = np.floor(rng.random((n_boot, len(seeds), sizes.max())) * sizes[g_idx][..., None]).astype(int)
    keep = np.arange(sizes.max()) < sizes[g_idx][..., None]  # (n_boot, G, C_max): C_g draws per slot
    runs = padded[g_idx[..., None], c_idx]
    return [runs[b][keep[b]] for b in range(n_boot)]


def _paired_values(part, runs: np.ndarray, idx: np.ndarray, statistic: Statistic) -> tuple[float, float]:
    """(statistic of the arm runs ``runs``, statistic of the reference runs paired with them), both
    on the test images ``idx``; ``part`` is what :func:`_runs` returns."""
    y_true, fst, (gen, cls, a_pred, a_score), ref_row, (r_pred, r_score), _ = part
    rows, seeds = ref_row[runs], tuple(zip(gen[runs].tolist(), cls[runs].tolist(), strict=True))
    arm_sp = SeedPredictions(y_true[idx], fst[idx], a_pred[np.ix_(runs, idx)], a_score[np.ix_(runs, idx)], seeds)
    ref_sp = SeedPredictions(y_true[idx], fst[idx], r_pred[np.ix_(rows, idx)], r_score[np.ix_(rows, idx)], seeds)
    return statistic(arm_sp), statistic(ref_sp)


def paired_effect(preds: pd.DataFrame, arm: str, reference: str = "real", statistic: Statistic = fnr_gap,
                  n_boot: int = 1000, rng: bootstrap.Rng = 0, level: float = 0.95, *,
                  resample_generators: bool = True, id_col: str = "md5hash") -> dict:
    """Δ = statistic(arm) − statistic(reference) with a hierarchical bootstrap CI (module docstring).

    ``preds``: long table, one row per (arm, generator_seed, classifier_seed, test image) with
    :data:`COLUMNS` and ``id_col``; the reference's ``generator_seed`` is :data:`NO_GENERATOR`
    (-1) or NaN. Every run covers the same test images; every arm classifier seed has a reference
    run (pairing). ``statistic`` maps a ``SeedPredictions`` of S runs to a float (:data:`STATISTICS`).
    ``resample_generators=False`` holds the generator seeds fixed (each once per replicate): the
    CI then ignores the generator's variance (for comparison only).

    Returns ``{"arm", "reference", "statistic", "estimate", "arm_value", "reference_value",
    "ci_low", "ci_high", "level", "p_le_0", "mde", "n_boot", "n_boot_finite",
    "n_generator_seeds", "n_classifier_seeds" (the arm's runs, over all its generator seeds),
    "n_reference_seeds" (reference runs paired), "n_images", "n_pos", "variance_sources"}``;
    ``p_le_0`` is the share of replicates with Δ ≤ 0, ``mde`` :func:`minimal_detectable_effect`
    of the CI.
    """
    if n_boot < 1:
        raise ValueError(f"paired_effect: n_boot must be >= 1, got {n_boot!r}")
    part = _runs(preds, arm, reference, id_col)
    y_true, fst, (gen, _, _, _), ref_row, _, _ = part
    rng = np.random.default_rng(rng)
    n_gen = len(np.unique(gen))

    def delta(runs: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
        return _paired_values(part, runs, idx, statistic)

    arm_value, ref_value = delta(np.arange(len(gen)), np.arange(len(y_true)))
    draws = _seed_draws(gen, n_boot, rng, resample_generators)
    images = bootstrap.stratified(bootstrap.strata_of(fst), n_boot, rng)
    reps = np.array([np.subtract(*delta(runs, idx)) for runs, idx in zip(draws, images, strict=True)])
    lo, hi = bootstrap.percentile_ci(reps, level)
    if n_gen == 1:
        sources = "classifier seeds, test images (within FST); one generator seed: generator variance not covered"
    elif resample_generators:
        sources = "generator seeds, classifier seeds, test images (within FST)"
    else:
        sources = "classifier seeds, test images (within FST); generator seeds held fixed"
    return {"arm": arm, "reference": reference, "statistic": getattr(statistic, "__name__", "statistic"),
            "estimate": float(arm_value - ref_value), "arm_value": float(arm_value),
            "reference_value": float(ref_value), "ci_low": lo, "ci_high": hi, "level": level,
            "p_le_0": float(np.mean(reps[np.isfinite(reps)] <= 0)) if np.isfinite(reps).any() else float("nan"),
            "mde": minimal_detectable_effect(lo, hi, level), "n_boot": n_boot,
            "n_boot_finite": int(np.isfinite(reps).sum()), "n_generator_seeds": n_gen,
            "n_classifier_seeds": len(gen), "n_reference_seeds": len(np.unique(ref_row)),
            "n_images": len(y_true), "n_pos": int(y_true.sum()), "variance_sources": sources}


def paired_effects(preds: pd.DataFrame, arms: Sequence[str], reference: str = "real",
                   statistics: dict[str, Statistic] | None = None, n_boot: int = 1000, rng: int = 0,
                   level: float = 0.95, **kw) -> pd.DataFrame:
    """:func:`paired_effect` for every arm × statistic (default :data:`STATISTICS`), one row each
    (index: arm, statistic); every call starts from the integer seed ``rng``."""
    rows = [paired_effect(preds, a, reference, fn, n_boot, rng, level, **kw) | {"statistic": name}
            for a in arms for name, fn in (statistics or STATISTICS).items()]
    return pd.DataFrame(rows).set_index(["arm", "statistic"])


def minimal_detectable_effect(ci_low: float, ci_high: float, level: float = 0.95, power: float = 0.80) -> float:
    """The smallest true effect this design detects (two-sided test at 1 − ``level``) with
    probability ``power``, from a CI's half-width h = (ci_high − ci_low) / 2:

        SE ≈ h / z_{(1+level)/2},   MDE = (z_{(1+level)/2} + z_power) · SE = h · (z_{(1+level)/2} + z_power) / z_{(1+level)/2}

    i.e. h · (1.96 + 0.84) / 1.96 ≈ 1.43 h at the defaults (normal approximation; z from
    ``scipy.stats.norm``). NaN when the CI is."""
    if not 0 < level < 1 or not 0 < power < 1:
        raise ValueError(f"minimal_detectable_effect: level and power must be in (0, 1), got {level!r}, {power!r}")
    z_a, z_b = norm.ppf((1 + level) / 2), norm.ppf(power)
    return float((ci_high - ci_low) / 2 * (z_a + z_b) / z_a)


def arm_value(preds: pd.DataFrame, arm: str, statistic: Statistic = fnr_gap, n_boot: int = 1000,
              rng: bootstrap.Rng = 0, level: float = 0.95, *, id_col: str = "md5hash") -> dict:
    """``statistic`` of one arm (no reference) with a CI over the same levels as
    :func:`paired_effect`: its generator seeds (if several), classifier seeds within each, test
    images within each FST; e.g. the real-only baseline's FNR gap that the protocol's precondition
    needs. ``preds`` as for :func:`paired_effect`. Returns ``{"arm", "statistic", "estimate",
    "ci_low", "ci_high", "level", "p_le_0", "n_boot", "n_generator_seeds", "n_classifier_seeds",
    "n_images", "n_pos", "variance_sources"}``."""
    wide, y_true, fst = _wide(_aligned(preds, {"arm": arm}, id_col, "arm_value"), id_col, "arm_value")
    gen = wide["y_pred"].columns.get_level_values(1).to_numpy(int)
    pred, score = wide["y_pred"].to_numpy(int).T, wide["p_melanoma"].to_numpy(float).T

    def stat(runs: np.ndarray, idx: np.ndarray) -> float:
        return statistic(SeedPredictions(y_true[idx], fst[idx], pred[np.ix_(runs, idx)], score[np.ix_(runs, idx)],
                                         tuple(runs.tolist())))

    rng = np.random.default_rng(rng)
    draws = _seed_draws(gen, n_boot, rng, True)
    images = bootstrap.stratified(bootstrap.strata_of(fst), n_boot, rng)
    reps = np.array([stat(runs, idx) for runs, idx in zip(draws, images, strict=True)])
    lo, hi = bootstrap.percentile_ci(reps, level)
    n_gen = len(np.unique(gen))
    return {"arm": arm, "statistic": getattr(statistic, "__name__", "statistic"),
            "estimate": stat(np.arange(len(gen)), np.arange(len(y_true))), "ci_low": lo, "ci_high": hi,
            "level": level, "p_le_0": float(np.mean(reps[np.isfinite(reps)] <= 0)), "n_boot": n_boot,
            "n_generator_seeds": n_gen, "n_classifier_seeds": len(gen), "n_images": len(y_true),
            "n_pos": int(y_true.sum()),
            "variance_sources": ("generator seeds, " if n_gen > 1 else "") + "classifier seeds, test images (within FST)"}


def paired_contrast(preds: pd.DataFrame, arm_a: str, arm_b: str, reference: str = "real",
                    statistic: Statistic = fnr_gap, n_boot: int = 1000, rng: bootstrap.Rng = 0,
                    level: float = 0.95, *, id_col: str = "md5hash") -> dict:
    """Δ(arm_a) − Δ(arm_b), each Δ paired with ``reference`` as in :func:`paired_effect`: the
    protocol's "BMG beats standard" (< 0 for the FNR gap: ``arm_a`` narrows it more). Each
    replicate resamples each arm's generator seeds and their classifier seeds independently (they
    are different generators; pairs of their classifier seeds are not kept, which errs wide), and
    one test-image resample (within FST) shared by all three arms. Returns ``{"arm_a", "arm_b", "reference", "statistic", "estimate", "delta_a", "delta_b",
    "ci_low", "ci_high", "level", "p_le_0", "mde", "n_boot", "n_generator_seeds_a",
    "n_generator_seeds_b", "n_images", "variance_sources"}``."""
    if arm_a == arm_b:
        raise ValueError(f"paired_contrast: arm_a and arm_b are both {arm_a!r}")
    parts = [_runs(preds, arm, reference, id_col) for arm in (arm_a, arm_b)]
    y_true, fst = parts[0][0], parts[0][1]
    if not (np.array_equal(y_true, parts[1][0]) and np.array_equal(fst, parts[1][1])):
        raise ValueError(f"paired_contrast: {arm_a!r} and {arm_b!r} cover different test images")
    rng = np.random.default_rng(rng)

    def delta(part, runs: np.ndarray, idx: np.ndarray) -> float:
        return float(np.subtract(*_paired_values(part, runs, idx, statistic)))

    every = np.arange(len(y_true))
    d_a, d_b = (delta(p, np.arange(len(p[2][0])), every) for p in parts)
    draws = [_seed_draws(p[2][0], n_boot, rng, True) for p in parts]
    images = bootstrap.stratified(bootstrap.strata_of(fst), n_boot, rng)
    reps = np.array([delta(parts[0], ra, idx) - delta(parts[1], rb, idx)
                     for ra, rb, idx in zip(*draws, images, strict=True)])
    lo, hi = bootstrap.percentile_ci(reps, level)
    n_gen = [len(np.unique(p[2][0])) for p in parts]
    return {"arm_a": arm_a, "arm_b": arm_b, "reference": reference,
            "statistic": getattr(statistic, "__name__", "statistic"), "estimate": float(d_a - d_b),
            "delta_a": float(d_a), "delta_b": float(d_b), "ci_low": lo, "ci_high": hi, "level": level,
            "p_le_0": float(np.mean(reps[np.isfinite(reps)] <= 0)) if np.isfinite(reps).any() else float("nan"),
            "mde": minimal_detectable_effect(lo, hi, level), "n_boot": n_boot, "n_generator_seeds_a": n_gen[0],
            "n_generator_seeds_b": n_gen[1], "n_images": len(y_true),
            "variance_sources": ("generator seeds, " if min(n_gen) > 1 else "") +
                                "classifier seeds, test images (within FST)"}
