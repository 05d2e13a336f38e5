"""Every path the project uses, anchored at the repository root.

nbval runs notebooks with ``notebooks/`` as the working directory and papermill runs them in the
caller's, so nothing may be cwd-relative. One environment variable moves the data root:
``BMG_DATA_ROOT`` (for users who keep Fitzpatrick17k on a large disk).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
FIGURES = REPO_ROOT / "figures"
BUILD = REPO_ROOT / "build"  # executed notebooks (ignored)
BENCHMARKS = REPO_ROOT / "benchmarks"
# The read-only real data shipped beside the checkout (../shared/data/real); may be absent.
SHARED_REAL = Path(os.environ.get("BMG_SHARED_REAL", REPO_ROOT.parent / "shared" / "data" / "real"))


def data_root() -> Path:
    """Root of all data the project writes or downloads (``BMG_DATA_ROOT`` or ``<repo>/data``)."""
    return Path(os.environ.get("BMG_DATA_ROOT", REPO_ROOT / "data")).resolve()


def raw_dir(source: str) -> Path:
    """Immutable downloaded/raw data of one source, e.g. ``data/raw/fitzpatrick17k``."""
    return data_root() / "raw" / source


def synthetic_dir(profile: str, seed: int) -> Path:
    """The procedurally generated dataset for one profile and seed."""
    return data_root() / "synthetic" / f"{profile}_seed{seed}"


def processed_dir(profile: str, dataset: str) -> Path:
    """Per-profile, per-dataset outputs of 01_data_audit (cell table, splits) read by later notebooks."""
    return data_root() / "processed" / profile / dataset


def model_name(variant: str, seed: int = 0) -> str:
    """The name of one generator: its variant, and its diffusion training seed unless 0
    (``bmg``, ``bmg_seed1``): the folder name of its run and sample sets, and the tag of its figures."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"a generator seed must be an int >= 0, got {seed!r}")
    return variant if seed == 0 else f"{variant}_seed{seed}"


def run_dir(profile: str, variant: str, seed: int = 0) -> Path:
    """A diffusion training run (checkpoints, log, final model) of one profile, variant and
    generator seed (``diffusion.seed``; seed 0 is the variant's own folder)."""
    return data_root() / "runs" / profile / model_name(variant, seed)


def samples_dir(profile: str, variant: str, purpose: str, seed: int = 0) -> Path:
    """A synthetic sample set on disk (PNGs + ``manifest.csv``) of the generator (variant, seed):
    ``purpose`` ``augment`` (03, the quota plan), ``eval`` (04, balanced per cell) or
    ``augment_extra<k>`` (05's dose–response above 1×: the augment plan again, new noise)."""
    return data_root() / "samples" / profile / model_name(variant, seed) / purpose


def reader_study_dir(name: str) -> Path:
    """One blinded reader study (images, answers database, links): ``data/reader_studies/<name>``.
    ``name``: letters, digits, ``-`` and ``_`` only, so it can never point outside that folder."""
    if not name or not all(c.isalnum() or c in "-_" for c in name) or not name.isascii():
        raise ValueError(f"a reader study name may hold only letters, digits, '-' and '_', got {name!r}")
    return data_root() / "reader_studies" / name


def release_dir(profile: str, variant: str) -> Path:
    """A shareable release of one variant (``bmglib.release``): ``data/releases/<profile>_<variant>``
    with ``dataset/`` (Hugging Face imagefolder + card) and ``generator/`` (weights + model card)."""
    return data_root() / "releases" / f"{profile}_{variant}"


def cache_dir() -> Path:
    """Keyed caches of expensive steps (features, statistics)."""
    return data_root() / "cache"


def figures_dir(profile: str) -> Path:
    """Figures and tables of one profile: ``figures/<profile>``."""
    d = FIGURES / profile
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_dir(profile: str) -> Path:
    """Executed notebooks of one profile: ``build/<profile>`` (ignored by git)."""
    return BUILD / profile
