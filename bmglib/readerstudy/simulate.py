"""Simulated readers: what CI and the tests rate studies with, since there are no dermatologists.

Every simulated number is a consequence of :class:`ReaderModel`'s parameters, never a finding
about images. Each image ``i`` gets a known **quality signal** ``q_i ~ N(μ(source, group),
sd_image²)`` (on the 1–5 scale); reader ``r`` (leniency ``b_r``, criterion ``c_r``) then answers

* realism ``= clip(round(q_i + b_r + ε), 1, 5)``, ``ε ~ N(0, sd_noise²)``;
* real-or-synthetic from the evidence ``e = slope·(μ(real, group) − q_i) + c_r + η``,
  ``η ~ N(0, sd_detect²)``, cut at −4, −3, …, 4 into the 1..10 score of
  :func:`bmglib.readerstudy.store.synthetic_score` (≥ 6: "synthetic", confidence = distance);
* lesion type (share ``p_lesion``), right with probability ``0.25 + 0.7·Φ((q_i − 3)/0.8)``,
  else one of the three wrong types; skin type (share ``p_fst``) ``round(FST + N(0, sd_fst²))``.

:func:`expected` gives the population values these parameters imply (mean realism, share ≥ 4,
reader-averaged ROC AUC against the real images of the same level, lesion accuracy) in closed form
or by quadrature, so a test can check that the analysis recovers them within its intervals.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from bmglib import paths
from bmglib.data import schema
from bmglib.readerstudy import analysis, design, store

THRESHOLDS = np.arange(-4, 5)  # evidence cut points of the 1..10 "synthetic" score
REALISM_CUTS = np.array([1.5, 2.5, 3.5, 4.5])


@dataclass(frozen=True)
class ReaderModel:
    """The simulated readers' parameters (all known: the truth the analysis must recover)."""

    n_readers: int = 3
    #: mean quality signal per source: (FST I–III, FST IV–VI); sources not listed use ``quality_other``
    quality: dict = field(default_factory=lambda: {"real": (4.4, 4.4), "bmg": (4.2, 3.8),
                                                   "standard": (4.0, 2.6)})
    quality_other: tuple = (3.9, 3.4)
    sd_image: float = 0.6  # spread of the quality signal between images of one cell
    sd_reader: float = 0.3  # reader leniency
    sd_noise: float = 0.5  # realism rating noise
    slope: float = 1.0  # "synthetic" evidence per point of quality below the real images' mean
    sd_criterion: float = 0.4  # reader bias towards answering "synthetic"
    sd_detect: float = 1.0  # evidence noise
    p_lesion: float = 0.8
    p_fst: float = 0.6
    sd_fst: float = 0.7
    seconds_median: float = 9.0
    seed: int = 0

    def mean_quality(self, source: str, group: str) -> float:
        pair = self.quality.get(source, self.quality_other)
        return float(pair[0 if group == "I-III" else 1])


# --- answers ------------------------------------------------------------------------------------


def quality_signal(key: pd.DataFrame, model: ReaderModel) -> pd.Series:
    """The known per-image quality ``q_i`` (index: image id), seeded by the model seed and the id."""
    q = [model.mean_quality(s, g) + model.sd_image * np.random.default_rng(
            [model.seed, 0x9A, zlib.crc32(i.encode())]).standard_normal()
         for i, s, g in zip(key["image_id"], key["source"], key["fst_group"], strict=True)]
    return pd.Series(q, index=key["image_id"].to_numpy(), name="quality")


def simulate_answers(key: pd.DataFrame, order: list[str], number: int, model: ReaderModel,
                     quality: pd.Series) -> dict[str, store.Answer]:
    """One simulated reader's answers (reader ``number``: its own effects and noise)."""
    rng = np.random.default_rng([model.seed, 0x5E, number])
    leniency, criterion = rng.normal(0, model.sd_reader), rng.normal(0, model.sd_criterion)
    k = key.set_index("image_id").loc[order]
    q = quality.loc[order].to_numpy()
    n = len(order)
    realism = np.clip(np.rint(q + leniency + rng.normal(0, model.sd_noise, n)), 1, 5).astype(int)
    mu_real = np.array([model.mean_quality(design.REAL, g) for g in k["fst_group"]])
    evidence = model.slope * (mu_real - q) + criterion + rng.normal(0, model.sd_detect, n)
    score = 1 + (evidence[:, None] > THRESHOLDS[None, :]).sum(1)
    named = rng.random(n) < model.p_lesion
    right = rng.random(n) < 0.25 + 0.7 * stats.norm.cdf((q - 3) / 0.8)
    wrong_pick = rng.integers(0, len(schema.LESIONS) - 1, n)
    fst_given = rng.random(n) < model.p_fst
    fst = np.clip(np.rint(k["fitzpatrick_scale"].to_numpy() + rng.normal(0, model.sd_fst, n)), 1, 6).astype(int)
    seconds = model.seconds_median * rng.lognormal(0, 0.5, n)
    out = {}
    for j, (image_id, true) in enumerate(zip(order, k["lesion"], strict=True)):
        wrong = [x for x in schema.LESIONS if x != true][wrong_pick[j]]
        s = int(score[j])
        out[image_id] = store.Answer(realism=int(realism[j]), judgement="synthetic" if s >= 6 else "real",
                                     confidence=s - 5 if s >= 6 else 6 - s,
                                     lesion=(true if right[j] else wrong) if named[j] else None,
                                     fst=int(fst[j]) if fst_given[j] else None, seconds=float(seconds[j]))
    return out


def answer_study(study: design.Study, model: ReaderModel = ReaderModel()) -> pd.DataFrame:
    """Enrol ``model.n_readers`` simulated readers (flagged ``simulated``) in the study's store,
    save their answers through it, and return the tidy export (:meth:`store.Store.export`)."""
    st = store.Store(study)
    quality = quality_signal(study.key, model)
    for k in range(model.n_readers):
        reader, _ = st.add_reader(f"Simulated reader {k + 1}", simulated=True)
        st.save_many(reader, simulate_answers(study.key, list(reader.order), reader.number, model, quality))
    return st.export()


def answer_key(key: pd.DataFrame, model: ReaderModel = ReaderModel()) -> pd.DataFrame:
    """:func:`answer_study` without a study folder or database: the export-shaped table of
    ``model.n_readers`` simulated readers rating the images of ``key`` (for fast checks of the
    analysis on large designs)."""
    quality = quality_signal(key, model)
    cols = ["image_id", "source", "is_synthetic", "fitzpatrick_scale", "fst_group", "lesion"]
    k = key[cols].rename(columns={"lesion": "true_lesion"}).set_index("image_id")
    parts = []
    for number in range(1, model.n_readers + 1):
        order = list(np.random.default_rng([model.seed, 0x0D3, number]).permutation(key["image_id"]))
        answers = simulate_answers(key, order, number, model, quality)
        t = pd.DataFrame([a.model_dump() for a in answers.values()], index=pd.Index(order, name="image_id"))
        t = t.rename(columns={"lesion": "lesion_answer", "fst": "fst_answer"}).join(k).reset_index()
        t["synthetic_score"] = [store.synthetic_score(j, c) for j, c in zip(t["judgement"], t["confidence"],
                                                                            strict=True)]
        parts.append(t.assign(reader_id=f"R{number:02d}", position=np.arange(1, len(t) + 1)))
    return pd.concat(parts, ignore_index=True)


# --- the truth these parameters imply ----------------------------------------------------------


def _score_pmf(mean: np.ndarray, sd: float) -> np.ndarray:
    """P(score = 1..10) for evidence ~ N(mean, sd²); ``mean`` (...,) → (..., 10)."""
    cdf = stats.norm.cdf((THRESHOLDS - np.asarray(mean)[..., None]) / sd)
    zeros, ones = np.zeros(cdf.shape[:-1] + (1,)), np.ones(cdf.shape[:-1] + (1,))
    return np.diff(np.concatenate([zeros, cdf, ones], axis=-1), axis=-1)


def _auc(p_pos: np.ndarray, p_neg: np.ndarray) -> np.ndarray:
    """P(S+ > S−) + ½ P(S+ = S−) for independent ordinal scores (pmfs on the last axis)."""
    below = np.cumsum(p_neg, axis=-1) - p_neg
    return (p_pos * (below + 0.5 * p_neg)).sum(-1)


def _expected_auc(model: ReaderModel, source: str, pos_groups: pd.Series, neg_groups: pd.Series,
                  sd_e: float) -> float:
    """Reader-averaged AUC (Gauss–Hermite over the reader criterion) of synthetic images of the
    given FST groups against real ones: each class a mixture of its groups' score distributions."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()
    mu_real = {grp: model.mean_quality(design.REAL, grp) for grp in schema.FST_GROUPS}

    def pmf(groups: pd.Series, src: str) -> np.ndarray:
        """(nodes, 10): the class's score pmf at each reader criterion, a mixture of its groups"""
        share = groups.value_counts(normalize=True)
        means = np.array([model.slope * (mu_real[g] - model.mean_quality(src, g)) for g in share.index])
        return np.einsum("k,kns->ns", share.to_numpy(),
                         _score_pmf(means[:, None] + model.sd_criterion * nodes[None, :], sd_e))

    return float(weights @ _auc(pmf(pos_groups, source), pmf(neg_groups, design.REAL)))


def expected(key: pd.DataFrame, model: ReaderModel = ReaderModel(), levels=None) -> pd.DataFrame:
    """The population values of ``model`` per source and level (``overall``, each FST group, each
    FST), weighted like the study's images: ``true_mean_realism``, ``true_share_ge4``,
    ``true_auc`` (synthetic vs real images of the same level, averaged over readers; NaN for real)
    and ``true_lesion_accuracy``."""
    sd_r = np.sqrt(model.sd_image ** 2 + model.sd_reader ** 2 + model.sd_noise ** 2)
    sd_e = np.sqrt((model.slope * model.sd_image) ** 2 + model.sd_detect ** 2)
    rows = []
    for level, subset in analysis.levels(key):
        real = subset[subset["source"] == design.REAL]
        for source, g in subset.groupby("source", sort=False):
            mu = np.array([model.mean_quality(source, grp) for grp in g["fst_group"]])
            realism = 1 + stats.norm.cdf((mu[:, None] - REALISM_CUTS) / sd_r).sum(axis=1)
            lesion = 0.25 + 0.7 * stats.norm.cdf((mu - 3) / np.sqrt(0.8 ** 2 + model.sd_image ** 2))
            auc = np.nan
            if source != design.REAL and len(real):
                auc = _expected_auc(model, source, g["fst_group"], real["fst_group"], sd_e)
            rows.append({"source": source, "level": level[0], "group": level[1],
                         "true_mean_realism": realism.mean(),
                         "true_share_ge4": stats.norm.cdf((mu - 3.5) / sd_r).mean(),
                         "true_auc": auc, "true_lesion_accuracy": lesion.mean()})
    return pd.DataFrame(rows)


# --- a pool when no model has been trained -----------------------------------------------------


def stand_in_images(source: str, n_per_cell: int, size: int = 32, seed: int = 0) -> pd.DataFrame:
    """``n_per_cell`` images per FST × lesion cell rendered by the embedded generator
    (:func:`bmglib.data.synthetic.render`), as pool rows of ``source``; kept in the cache."""
    from PIL import Image

    from bmglib.data import synthetic

    out_dir = paths.cache_dir() / "readerstudy_stand_ins" / f"{source}_n{n_per_cell}_s{size}_seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in schema.FST_LEVELS:
        for j, lesion in enumerate(schema.LESIONS):
            for k in range(n_per_cell):
                path = out_dir / f"fst{f}_{lesion}_{k}.png"
                if not path.exists():
                    rng = np.random.default_rng([seed, 0x57, zlib.crc32(source.encode()), f, j, k])
                    tmp = path.with_suffix(".tmp")
                    Image.fromarray(synthetic.render(f, lesion, size, rng).image).save(tmp, format="PNG")
                    tmp.replace(path)
                rows.append({"source": source, "fitzpatrick_scale": f, "lesion": lesion,
                             "image_path": str(path), "origin": "stand-in: bmglib.data.synthetic.render"})
    return pd.DataFrame(rows)


def demo_pool(profile: str, variants, n_per_cell: int, dataset: str = "synthetic",
              seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """The pool :func:`design.collect_pool` would give, with procedurally rendered stand-ins for
    whatever is missing (no prepared test split, a variant not sampled); the notes say which."""
    parts, notes = [], []
    meta_path = paths.processed_dir(profile, dataset) / "metadata.csv"
    if meta_path.exists():
        from bmglib.data import prepare

        parts.append(design.real_pool(prepare.load_prepared(profile, dataset), str(meta_path)))
    else:
        parts.append(stand_in_images(design.REAL, n_per_cell, seed=seed))
        notes.append(f"real control: rendered by the embedded generator ({meta_path} does not exist)")
    for v in variants:
        folder = paths.samples_dir(profile, v, "eval")
        if (folder / "manifest.csv").exists():
            sample_set = design.read_sample_set(v, folder)
            cells = sample_set.groupby(["fitzpatrick_scale", "lesion"]).size()
            if len(cells) == len(schema.FST_LEVELS) * len(schema.LESIONS) and cells.min() >= n_per_cell:
                parts.append(sample_set)
                continue
            notes.append(f"{v}: {folder} has fewer than {n_per_cell} images in some cell")
        else:
            notes.append(f"{v}: no sample set at {folder}")
        parts.append(stand_in_images(v, n_per_cell, seed=seed))
        notes[-1] += "; stand-ins rendered by the embedded generator (no trained model's images)"
    return pd.concat(parts, ignore_index=True), notes


@dataclass(frozen=True)
class SimulationConfig:
    """How big notebook 08's simulated study is, per profile (:data:`PROFILES`)."""

    n_per_cell: int  # images per source × FST × lesion cell
    n_readers: int  # the seed paper had three
    n_boot: int  # two-level bootstrap resamples
    n_boot_alpha: int  # Krippendorff's α resamples (each a full α computation)


PROFILES = {"smoke": SimulationConfig(n_per_cell=2, n_readers=3, n_boot=500, n_boot_alpha=50),
            "quick": SimulationConfig(n_per_cell=4, n_readers=3, n_boot=2000, n_boot_alpha=300),
            "paper": SimulationConfig(n_per_cell=4, n_readers=3, n_boot=2000, n_boot_alpha=500)}


def simulation_config(profile: str) -> SimulationConfig:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    return PROFILES[profile]


@dataclass
class RatedStudy:
    """A study and its answers, ready for :mod:`.analysis`."""

    study: design.Study
    answers: pd.DataFrame  # the tidy export
    readers: str  # "simulated readers" or "readers": goes into every table and figure title
    model: ReaderModel | None = None  # the simulation's parameters (None for a real study)
    truth: pd.DataFrame | None = None  # :func:`expected` (None for a real study)


def rated_study(profile: str, variants: str = "bmg,standard", study: str = "", dataset: str = "synthetic",
                seed: int = 0) -> RatedStudy:
    """What notebook 08 analyses: the answers of the study named ``study`` as collected so far, or
    (``study=""``) a study of ``variants`` drawn afresh as ``simulated_<profile>`` and rated by
    simulated readers (:data:`PROFILES` sets its size)."""
    if study:
        s = design.load_study(paths.reader_study_dir(study))
        answers = store.Store(s).export()
        if answers.empty:
            raise ValueError(f"{s.dir}: no answers yet")
        return RatedStudy(s, answers, "simulated readers" if answers["simulated"].all() else "readers")
    cfg = simulation_config(profile)
    model = ReaderModel(n_readers=cfg.n_readers, seed=seed)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    s, answers = simulated_study(f"simulated_{profile}", profile, names, cfg.n_per_cell, model, dataset, seed)
    return RatedStudy(s, answers, "simulated readers", model, expected(s.key, model))


def simulated_study(name: str, profile: str, variants, n_per_cell: int, model: ReaderModel,
                    dataset: str = "synthetic", seed: int = 0) -> tuple[design.Study, pd.DataFrame]:
    """A study drawn afresh (``paths.reader_study_dir(name)``, replaced) and rated by simulated
    readers: the study and its tidy export."""
    pool, notes = demo_pool(profile, variants, n_per_cell, dataset, seed)
    cfg = design.DesignConfig(n_per_cell=n_per_cell, seed=seed, on_short="take_all",
                              title="Skin-lesion image realism (simulated readers)")
    study = design.create_study(paths.reader_study_dir(name), pool, cfg, force=True,
                                notes=["rated by SIMULATED readers", *notes])
    return study, answer_study(study, model)
