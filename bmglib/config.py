"""Typed configs per component, named profiles, strict overrides and the provenance stamp.

    cfg = get_config("quick", {"data.n_images": 2000})
    cfg.data.image_size            # 64

An unknown key or a value of the wrong type is an error naming it (as nanoGPT's configurator).
Profiles (see DESIGN.md): ``smoke`` — CI, every code path in seconds; ``quick`` — the embedded
default on a 2-core CPU, meaningful numbers in about an hour; ``paper`` — a GPU at the seed paper's
scale.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bmglib import __version__, paths


@dataclass
class DataConfig:
    """The embedded (procedural) dataset and the splits."""

    n_images: int = 6000  # train+val pool, Fitzpatrick17k-proportioned (``counts``)
    image_size: int = 64  # pixels, square; the generator supports 32..512
    counts: str = "fitzpatrick17k"  # cell counts of the pool: fitzpatrick17k | balanced
    min_per_cell: int = 4  # floor per FST × lesion cell when scaling the real table down
    test_per_cell: int = 40  # balanced test set: images per FST × lesion cell (real images only)
    val_fraction: float = 0.15  # of the pool, stratified by cell
    unknown_fst: str = "drop"  # policy for FST -1 rows: drop | keep
    workers: int = 2  # processes for generation
    seed: int = 0


@dataclass
class ProbeConfig:
    """The bias probe: a small CNN melanoma classifier trained on the natural mix."""

    image_size: int = 32
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32  # channels of the first conv block
    n_boot: int = 2000  # bootstrap resamples for CIs
    seeds: int = 3  # training seeds (seed, seed+1, ...): the gap's spread over seeds
    seed: int = 0


@dataclass
class DiffusionConfig:
    """The conditional diffusion model, its training, and the three fairness components.

    ``VARIANTS`` switch the components off one at a time (see :func:`with_variant`).
    """

    variant: str = "bmg"  # bmg | standard | no_fairloss | no_fst_cond | no_resample
    backbone: str = "unet"  # unet (small, CPU, from scratch) | sd (Stable Diffusion from sd_path)
    sd_path: str = ""  # local diffusers-format Stable Diffusion folder (backbone=sd)
    sd_mode: str = "labels"  # labels (tokens replace the prompt) | append | prompt (text baseline)
    sd_trainable: str = "lora"  # lora | full
    lora_rank: int = 8
    image_size: int = 32
    base_channels: int = 32  # UNet channels per level: (c, 2c, 2c)
    cond_dim: int = 64  # label-token width
    pooled_cond: str = "mean"  # added to the time embedding: mean of the tokens | joint | none
    prediction_type: str = "v_prediction"  # v_prediction | epsilon
    num_train_timesteps: int = 1000
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    lr_schedule: str = "constant"  # constant | cosine (decay to 0 after warm-up)
    grad_accum: int = 1
    fg_weight: float = 0.0  # denoising loss weight 1 + fg_weight·(colour distance from the skin)
    mixed_precision: str = "no"  # no | fp16 | bf16 (where the device supports it)
    ema_decay: float = 0.995
    p_drop: float = 0.1  # label → null token probability (classifier-free guidance)
    fst_cond: bool = True  # condition on FST (False: lesion only)
    alpha: float = 1.0  # resampling: weight ∝ n_cell^-alpha (0 natural, 1 balanced)
    repeat_cap: int = 0  # max draws of one image per epoch (0 = no cap)
    lambda_kl: float = 0.5  # fairness loss: KL(target ‖ batch-mean estimated FST)
    lambda_ce: float = 0.5  # fairness loss: per-sample KL(target ‖ p), the CE when one-hot (0 = KL only)
    fair_target: str = "calibrated"  # calibrated: the estimator's mean output on real validation images
    # of the requested FST | requested: one-hot (pushes V past real V skin, to VI by ITA; losses.py, README)
    t_fair: int = 400  # fairness loss only for t ≤ t_fair
    fair_start: float = 0.0  # share of the steps before the fairness loss starts (the denoiser first)
    fair_ramp: float = 0.0  # share of the steps over which its λs then rise linearly to full
    fair_balance: float = 0.3  # >0: rescale the fairness term each step so that its gradient at the
    # model output has this × the denoising loss's norm (the λs then only set the KL:CE mix); 0: fixed λs.
    # 0.3: on quick, fixed λs of 0.1–0.5 let the loss drown denoising (README, "What the fairness loss does")
    estimator: str = "cnn"  # frozen FST estimator of the fairness loss: cnn | ita
    estimator_epochs: int = 6
    checkpoint_every: int = 200
    seed: int = 0


@dataclass
class SamplingConfig:
    """Drawing synthetic sets from a trained variant (03) and the balanced evaluation sets (04)."""

    sampler: str = "dpmpp"  # ddim | dpmpp (DPM-Solver++)
    steps: int = 20
    guidance: float = 0.5  # classifier-free guidance w: cond + w·(cond − uncond)
    batch_size: int = 64
    policy: str = "top_up"  # quota plan: top_up | fixed_total | per_cell (see balance.plan_quota)
    per_cell: int = 0  # for fixed_total / per_cell
    max_ratio: float = 10.0  # cap on synthetic:real per cell (0 = none)
    budget: int = 0  # cap on the total of the augmentation set, scaled down in proportion (0 = none)
    lesions: str = ""  # comma-separated lesion types to top up ("" = all)
    eval_per_cell: int = 20  # balanced evaluation set per FST × lesion cell (04)
    seed: int = 0


VARIANTS: dict[str, dict[str, Any]] = {
    "bmg": {},
    "standard": {"fst_cond": False, "alpha": 0.0, "lambda_kl": 0.0, "lambda_ce": 0.0},
    "no_fairloss": {"lambda_kl": 0.0, "lambda_ce": 0.0},
    "no_fst_cond": {"fst_cond": False},
    "no_resample": {"alpha": 0.0},
}


@dataclass
class ImageMetricsConfig:
    """FID/KID per FST and the memorisation check (04). Inception features cost ~0.2 s per image
    on a CPU (cached), so the reference sets are subsampled per cell."""

    extractor: str = "fid-helper"  # fid-helper (offline TorchScript) | clean-fid (its cached weights)
    real_per_cell: int = 20  # real test images per FST × lesion cell as the FID reference
    train_per_cell: int = 50  # real training images per cell searched for near copies (all of a rare cell)
    near_copy: float = 0.5  # near copy: NN distance < near_copy × median real–real NN distance
    n_boot: int = 200  # bootstrap resamples (KID CI)
    seed: int = 0


@dataclass
class Config:
    profile: str = "quick"
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    metrics: ImageMetricsConfig = field(default_factory=ImageMetricsConfig)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "data.n_images": 400,
        "data.image_size": 32,
        "data.min_per_cell": 3,
        "data.test_per_cell": 5,
        "probe.epochs": 1,
        "probe.n_boot": 200,
        "probe.seeds": 1,
        "diffusion.steps": 6,
        "diffusion.batch_size": 8,
        "diffusion.base_channels": 16,
        "diffusion.checkpoint_every": 3,
        "sampling.steps": 4,
        "sampling.batch_size": 16,
        "sampling.budget": 48,
        "sampling.eval_per_cell": 2,
        "metrics.real_per_cell": 2,
        "metrics.train_per_cell": 3,
        "metrics.n_boot": 50,
        "diffusion.estimator_epochs": 1,
        "diffusion.warmup_steps": 2,
    },
    # budget 600 keeps every melanoma, nevus and SK top-up whole (the water-filling trims only the
    # "other" cells, to 64 each) and saves ~15 min of sampling over the five variants of make paper
    "quick": {"sampling.budget": 600},
    "paper": {
        "data.image_size": 512,
        "data.n_images": 16000,
        "data.test_per_cell": 100,
        "data.workers": 8,
        "probe.image_size": 128,
        "probe.epochs": 30,
        "probe.width": 64,
        "diffusion.backbone": "sd",
        "diffusion.image_size": 512,
        "diffusion.batch_size": 8,
        "diffusion.grad_accum": 4,
        "diffusion.steps": 20000,
        "diffusion.lr": 1e-4,
        "diffusion.mixed_precision": "fp16",
        "diffusion.ema_decay": 0.9999,
        "diffusion.checkpoint_every": 1000,
    },
}


class ConfigError(KeyError):
    """An override names an unknown key or gives a value of the wrong type."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _check_type(key: str, value: Any, current: Any) -> Any:
    expected = type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(
            f"config key {key!r} expects {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any] | None) -> Config:
    """Return a copy of ``cfg`` with dotted-key overrides applied strictly."""
    cfg = dataclasses.replace(
        cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in _sections(cfg)}
    )
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        sec = getattr(cfg, section, None)
        if not name or not dataclasses.is_dataclass(sec):
            sections = [f.name for f in _sections(cfg)]
            raise ConfigError(f"unknown config key {key!r}: use '<section>.<name>' with section in {sections}")
        names = [f.name for f in dataclasses.fields(sec)]
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}; {section} has {names}")
        setattr(sec, name, _check_type(key, value, getattr(sec, name)))
    return cfg


def _sections(cfg: Config):
    return [f for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]


def get_config(profile: str = "quick", overrides: dict[str, Any] | None = None) -> Config:
    """The resolved config of a profile plus strict overrides."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    cfg = apply_overrides(Config(profile=profile), PROFILES[profile])
    return apply_overrides(cfg, overrides)


def with_variant(cfg: Config, variant: str) -> Config:
    """``cfg`` with the diffusion variant's components switched off (strictly, by name)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown VARIANT {variant!r}; choose one of {list(VARIANTS)}")
    overrides = {f"diffusion.{k}": v for k, v in VARIANTS[variant].items()}
    return apply_overrides(cfg, {**overrides, "diffusion.variant": variant})


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


#: keys added after configs were first stored, each with the value an older stored config (which
#: lacks it) was run with. ``from_dict`` fills them in, so that a changed default cannot pass an old
#: artifact off as one made with the new setting.
LEGACY: dict[str, Any] = {"diffusion.fair_target": "requested"}


def from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a stored config (``to_dict``); keys in :data:`LEGACY` it predates take their legacy
    value, other keys and sections it predates their defaults; an unknown key is an error."""
    cfg = Config(profile=raw.get("profile", "quick"))
    flat = {f"{sec}.{k}": v for sec, values in raw.items() if isinstance(values, dict)
            for k, v in values.items()}
    return apply_overrides(cfg, {**LEGACY, **flat})


# --- provenance -------------------------------------------------------------------------------


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when tracked files are modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=paths.REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hash_table(df: pd.DataFrame, columns=("md5hash", "fitzpatrick_scale", "label")) -> str:
    """A short sha256 of a metadata table's identity (rows sorted, chosen columns)."""
    cols = [c for c in columns if c in df.columns]
    rows = df[cols].astype(str).sort_values(cols).to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """md5 of a file (e.g. the weights an artifact came from), read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(**inputs: Any) -> str:
    """A short key made of all the inputs of an expensive step (JSON-serialisable values)."""
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance(cfg: Config | None = None, dataset_hash: str | None = None, seed: int | None = None,
               **extra: Any) -> dict[str, Any]:
    """The stamp every artifact stores: resolved config, git commit, dataset hash and seed."""
    import torch  # local: keep `bmglib.config` importable without torch for tooling

    stamp = {
        "config": to_dict(cfg) if cfg is not None else None,
        "git_commit": git_commit(),
        "dataset_hash": dataset_hash,
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bmglib_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    stamp.update(extra)
    return stamp


def write_provenance(path: Path, stamp: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp, indent=2, default=str))
    return path
