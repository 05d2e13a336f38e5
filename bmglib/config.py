"""The one configuration: a typed section per component, one profile table, strict overrides and
the provenance stamp a loader rebuilds from.

    cfg = get_config("quick", {"data.n_images": 2000, "downstream.epochs": 3})
    cfg.data.image_size            # 64
    cfg.downstream.arch            # "resnet18"
    from_dict(to_dict(cfg)) == cfg # True: what every artifact stores, and how it is read back

Sections: ``data`` (the dataset and splits), ``audit`` and ``probe`` (notebook 01), ``diffusion``
(02), ``sampling`` (02–04), ``metrics`` (04, 06), ``downstream`` (05, 06), ``vae`` (07).
:data:`PROFILES` holds every profile's dotted-key changes to the defaults, for all sections. An
unknown key or a value of the wrong type is an error naming it (as nanoGPT's configurator), and so
is a value a section rejects (:func:`check`), after all overrides are applied. Profiles (see
DESIGN.md): ``smoke`` — CI, every code path in seconds; ``quick`` — the embedded default on a
2-core CPU, meaningful numbers in about an hour; ``paper`` — a GPU at the seed paper's scale.
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
class AuditConfig:
    """The skin-tone part of the data audit (01): ITA measured on the images."""

    ita_per_fst: int = 150  # images per labelled FST whose healthy-skin ITA is measured
    isic_images: int = 0  # ISIC-2017 images (sorted by name) whose ITA is estimated (0 = all)


@dataclass
class ProbeConfig:
    """The bias probe: a small CNN melanoma classifier trained on the natural mix."""

    image_size: int = 32  # pixels, square (images resized from the prepared data)
    epochs: int = 12  # the epoch is chosen on validation
    batch_size: int = 64  # images per training batch
    lr: float = 2e-3  # learning rate of the optimiser
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
    lora_rank: int = 8  # rank of the LoRA adapters (sd_trainable=lora)
    image_size: int = 32  # pixels, square: the training and sampling resolution
    base_channels: int = 32  # UNet channels per level: (c, 2c, 2c)
    cond_dim: int = 64  # label-token width
    pooled_cond: str = "mean"  # added to the time embedding: mean of the tokens | joint | none
    prediction_type: str = "v_prediction"  # v_prediction | epsilon
    num_train_timesteps: int = 1000  # diffusion timesteps of the noise schedule
    steps: int = 1200  # optimiser steps
    batch_size: int = 32  # images per batch (grad_accum batches per optimiser step)
    lr: float = 1e-3  # AdamW peak learning rate
    warmup_steps: int = 50  # linear LR warm-up, in steps
    lr_schedule: str = "constant"  # constant | cosine (decay to 0 after warm-up)
    grad_accum: int = 1  # batches accumulated per optimiser step
    fg_weight: float = 0.0  # denoising loss weight 1 + fg_weight·(colour distance from the skin)
    loss_weighting: str = "none"  # none | min_snr: per-timestep weight min(SNR, γ)/(SNR+1) for v, /SNR
    # for ε (Min-SNR-γ, Hang et al. ICCV 2023): caps the weight of the low-noise timesteps | snr_cap:
    # min(SNR+1, γ)/(SNR+1) for v: caps the low-noise ones only, the high-noise ones keep weight 1
    min_snr_gamma: float = 5.0  # γ of min_snr and snr_cap
    weighting_until: float = 1.0  # share of the steps trained with loss_weighting; unweighted after it
    lowres_size: int = 0  # > 0: progressive resolution: the first lowres_until share of the steps train
    # on the batches area-downsampled to this size (cheaper steps), the rest at image_size; 0: off
    lowres_until: float = 0.0  # share of the steps trained at lowres_size
    mixed_precision: str = "no"  # no | fp16 | bf16 (where the device supports it)
    ema_decay: float = 0.995  # of the EMA weights that are saved and sampled (the largest decay)
    ema_power: float = 0.0  # EMA decay at step k = min(ema_decay, ·): 0 → (1 + k)/(10 + k), diffusers'
    # EMAModel default; > 0 → 1 − (1 + k)^−power (its use_ema_warmup; 2/3 in its docs: a longer memory)
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
    estimator_epochs: int = 6  # training epochs of the cnn estimator
    checkpoint_every: int = 200  # steps between resumable checkpoints
    seed: int = 0


@dataclass
class SamplingConfig:
    """Drawing synthetic sets from a trained variant (03) and the balanced evaluation sets (04)."""

    sampler: str = "dpmpp"  # ddim | dpmpp (DPM-Solver++ 2M) | dpmpp_karras (Karras sigmas) | unipc
    steps: int = 20  # sampler steps per image
    guidance: float = 0.5  # classifier-free guidance w: cond + w·(cond − uncond)
    batch_size: int = 64  # images per sampler batch
    policy: str = "top_up"  # quota plan: top_up | fixed_total | per_cell (see balance.plan_quota)
    per_cell: int = 0  # for fixed_total / per_cell
    max_ratio: float = 10.0  # cap on synthetic:real per cell (0 = none)
    budget: int = 0  # cap on the total of the augmentation set, scaled down in proportion (0 = none)
    lesions: str = ""  # comma-separated lesion types to top up ("" = all)
    eval_per_cell: int = 20  # balanced evaluation set per FST × lesion cell (04)
    grid_per_cell: int = 10  # samples per FST × lesion cell for 02's grid and adherence tables
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


#: downstream architectures (torchvision blocks in ``bmglib.downstream.ARCHS``)
DOWNSTREAM_ARCHS = ("resnet18", "resnet50")
#: per-timestep weightings of the denoising loss (``bmglib.diffusion.losses.timestep_weight``)
LOSS_WEIGHTINGS = ("none", "min_snr", "snr_cap")
#: rules for the melanoma decision threshold (``bmglib.downstream.choose_threshold``)
THRESHOLDS = ("fixed", "val_youden", "val_sensitivity")


@dataclass
class DownstreamConfig:
    """The downstream melanoma classifier and its training (05, 06; ``bmglib.downstream``).

    ``quick`` is ResNet-18 at width 16: the CIFAR-style stem keeps 32×32 feature maps in the first
    stage (16× the FLOPs of torchvision's stem at 32 px), so width 64 trains at ~10–15 img/s on
    2 CPU cores, width 32 at ~100–190 and width 16 at ~320 (1 thread) to ~550 (2 threads): 12
    epochs of 1024 images take ~40 s per arm and seed (benchmarks/classifier_speed.py).
    """

    arch: str = "resnet18"  # resnet18 | resnet50 (torchvision blocks)
    width: int = 16  # first-stage channels (torchvision: 64; ImageNet weights need 64); see above
    small_stem: bool = True  # 3×3 stride-1 stem conv and no max-pool (CIFAR-style, ≤ 64 px)
    weights_path: str = ""  # local torchvision ImageNet state dict (.pth | .safetensors); "" = random
    image_size: int = 32  # pixels, square
    epochs: int = 12  # the epoch with the best validation AUC is kept
    epoch_images: int = 1024  # images per epoch, equal for every arm (0 = the training set's size)
    batch_size: int = 64  # images per training batch
    lr: float = 2e-3  # OneCycle peak
    weight_decay: float = 5e-4  # AdamW
    pos_fraction: float = 0.25  # share of melanomas in every epoch (pos_weight = (1 − q) / q), in (0, 1)
    threshold: str = "val_sensitivity"  # the protocol's operating point (docs/protocol.md): val_sensitivity =
    # the largest p whose sensitivity on real val is ≥ target_sensitivity | val_youden | fixed: p ≥ 0.5
    target_sensitivity: float = 0.90  # val_sensitivity: the overall sensitivity the validation threshold reaches
    seeds: int = 3  # training seeds seed, seed+1, ...
    seed: int = 0
    n_boot: int = 1000  # bootstrap resamples for the CIs of evaluate_arms


@dataclass
class VAEConfig:
    """The VAE audit (07; ``bmglib.vae``): model, perceptual features, FST mixes, Laplace score
    and statistics."""

    image_size: int = 32  # pixels, square; a power of two ≥ 8 (the encoder halves it to 4×4)
    width: int = 16  # channels of the first encoder block: (w, 2w, 4w)
    latent_dim: int = 32  # dimensions of z
    n_train: int = 2000  # images per training mix (drawn from the training split)
    epochs: int = 18  # passes over the training mix
    batch_size: int = 64  # images per training batch
    lr: float = 2e-3  # OneCycle peak
    beta: float = 0.002  # KL weight per pixel (the MSE is a per-pixel mean)
    perceptual_weight: float = 0.05  # weight of the perceptual distance in the loss
    feature_width: int = 16  # the in-project perceptual CNN (classifiers.SmallCNN)
    feature_epochs: int = 4  # its training epochs
    sweep: tuple = (0.02, 0.10, 0.30)  # FST V–VI shares of the training mix, each in [0, 1]
    laplace_layers: int = 0  # last parametrised decoder modules under the Laplace posterior (0: all)
    laplace_fit: int = 1000  # training images used to fit the GGN diagonal
    ggn_probes: int = 8  # Rademacher probes per batch for the GGN diagonal
    prior_precision: float = 1.0  # of the isotropic Gaussian prior on the weights
    score_probes: int = 16  # Rademacher probes per image for the trace / pixel map
    n_boot: int = 1000  # bootstrap resamples for the CIs
    n_isic: int = 150  # real ISIC-2017 images scored (at most 150)
    seed: int = 0


@dataclass
class Config:
    profile: str = "quick"
    data: DataConfig = field(default_factory=DataConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    metrics: ImageMetricsConfig = field(default_factory=ImageMetricsConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)


#: quick's diffusion recipe (issue 14, docs/speed.md "Fourth round", recipe ``p16snr_1950`` of
#: benchmarks/convergence.py; chosen on validation measures only): 1,950 steps, the first 1,500 on the
#: batches area-downsampled to 16 px (a 16 px step costs about a fifth of a 32 px one), the last 450 at
#: 32 px, Min-SNR-5 loss weighting. Against the 1,200-step unweighted recipe it replaced (``before``),
#: at three seeds: 0.81-0.89x the step time, KID to real validation 0.004-0.009 lower, FST adherence
#: by ITA +0.07 to +0.10, lesion adherence +0.01/-0.01/-0.06. smoke takes the same schedule (in
#: shares of its own steps) so that CI runs quick's code path.
QUICK_RECIPE: dict[str, Any] = {"diffusion.loss_weighting": "min_snr", "diffusion.lowres_size": 16,
                                "diffusion.lowres_until": 1500 / 1950}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        **QUICK_RECIPE,
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
        "audit.ita_per_fst": 40,
        "audit.isic_images": 30,
        "sampling.grid_per_cell": 2,
        "downstream.width": 8,
        "downstream.epochs": 2,
        "downstream.epoch_images": 128,
        "downstream.batch_size": 32,
        "downstream.seeds": 2,
        "downstream.n_boot": 100,
        "vae.width": 8,
        "vae.latent_dim": 8,
        "vae.n_train": 200,
        "vae.epochs": 2,
        "vae.feature_width": 8,
        "vae.feature_epochs": 1,
        "vae.laplace_fit": 64,
        "vae.ggn_probes": 2,
        "vae.score_probes": 8,
        "vae.n_boot": 200,
        "vae.n_isic": 16,
    },
    # budget 600 keeps every melanoma, nevus and SK top-up whole (the water-filling trims only the
    # "other" cells, to 64 each) and saves ~15 min of sampling over the five variants of make paper
    "quick": {**QUICK_RECIPE, "diffusion.steps": 1950, "sampling.budget": 600},
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
        "downstream.arch": "resnet50",
        "downstream.width": 64,
        "downstream.small_stem": False,
        "downstream.image_size": 224,
        "downstream.epochs": 30,
        "downstream.epoch_images": 0,
        "downstream.lr": 3e-4,
        "downstream.weight_decay": 1e-4,
        "downstream.seeds": 5,
        "downstream.n_boot": 2000,
        "vae.image_size": 128,
        "vae.width": 32,
        "vae.latent_dim": 128,
        "vae.n_train": 8000,
        "vae.epochs": 60,
        "vae.feature_width": 32,
        "vae.feature_epochs": 10,
        "vae.laplace_fit": 4000,
        "vae.n_boot": 2000,
    },
}


class ConfigError(KeyError):
    """An override names an unknown key, gives a value of the wrong type or one its section
    rejects (:func:`check`)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _check_type(key: str, value: Any, current: Any) -> Any:
    """``value`` as the type of ``current``: an int is a float where a float is expected; a tuple
    key takes a list or tuple (JSON stores tuples as lists) with the element type of ``current``."""
    expected = type(current)
    if expected is tuple and isinstance(value, list | tuple):
        if not current:
            return tuple(value)
        return tuple(_check_type(f"{key}[{i}]", v, current[0]) for i, v in enumerate(value))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(
            f"config key {key!r} expects {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _reject(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"config key {key!r} must be {allowed}, got {value!r}")


def check(cfg: Config) -> None:
    """The section rules beyond types, run after all overrides (a ``ConfigError`` naming the key):
    ``downstream`` arch, threshold, ``0 < pos_fraction < 1`` and ``0 < target_sensitivity <= 1``; ``vae`` image
    size and sweep."""
    d, v = cfg.downstream, cfg.vae
    if d.arch not in DOWNSTREAM_ARCHS:
        _reject("downstream.arch", d.arch, f"one of {list(DOWNSTREAM_ARCHS)}")
    if d.threshold not in THRESHOLDS:
        _reject("downstream.threshold", d.threshold, f"one of {list(THRESHOLDS)}")
    if not 0 < d.pos_fraction < 1:
        _reject("downstream.pos_fraction", d.pos_fraction, "in (0, 1)")
    if not 0 < d.target_sensitivity <= 1:
        _reject("downstream.target_sensitivity", d.target_sensitivity, "in (0, 1]")
    if cfg.diffusion.loss_weighting not in LOSS_WEIGHTINGS:
        _reject("diffusion.loss_weighting", cfg.diffusion.loss_weighting, f"one of {list(LOSS_WEIGHTINGS)}")
    if cfg.diffusion.min_snr_gamma <= 0:
        _reject("diffusion.min_snr_gamma", cfg.diffusion.min_snr_gamma, "> 0")
    if not 0.0 <= cfg.diffusion.weighting_until <= 1.0:
        _reject("diffusion.weighting_until", cfg.diffusion.weighting_until, "a share of the steps in [0, 1]")
    dd = cfg.diffusion
    if dd.lowres_size and not (0 < dd.lowres_size < dd.image_size and dd.image_size % dd.lowres_size == 0
                               and dd.lowres_size % 4 == 0 and dd.backbone == "unet"):
        _reject("diffusion.lowres_size", dd.lowres_size, f"0 (off) or, for the pixel UNet, a size below "
                f"image_size {dd.image_size} that divides it and is a multiple of 4 (the UNet halves it twice); "
                f"backbone is {dd.backbone!r}")
    if not 0.0 <= dd.lowres_until <= 1.0:
        _reject("diffusion.lowres_until", dd.lowres_until, "a share of the steps in [0, 1]")
    if cfg.diffusion.ema_power < 0:
        _reject("diffusion.ema_power", cfg.diffusion.ema_power, ">= 0 (0: diffusers' default warm-up)")
    if v.image_size < 8 or v.image_size & (v.image_size - 1):
        _reject("vae.image_size", v.image_size, "a power of two >= 8")
    if not v.sweep or not all(0 <= s <= 1 for s in v.sweep):
        _reject("vae.sweep", v.sweep, "a non-empty tuple of FST V-VI shares in [0, 1]")


def apply_overrides(cfg: Config, overrides: dict[str, Any] | None) -> Config:
    """Return a copy of ``cfg`` with dotted-key overrides (``"downstream.epochs": 3``) applied
    strictly: an unknown key, a wrong type or a value :func:`check` rejects is a ``ConfigError``."""
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
    check(cfg)
    return cfg


def _sections(cfg: Config):
    return [f for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` items (``--set diffusion.steps=500 diffusion.sd_path=/m/sd15``) as
    an overrides dict: each value read as a Python literal, or kept as a plain string (a path)."""
    import ast

    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw  # a plain string such as a path
    return out


def get_config(profile: str = "quick", overrides: dict[str, Any] | None = None) -> Config:
    """The resolved config of a profile plus strict overrides."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    overrides = dict(overrides or {})
    preset = dict(PROFILES[profile])
    if overrides.get("diffusion.backbone", preset.get("diffusion.backbone", "unet")) != "unet" and \
            "diffusion.lowres_size" not in overrides:
        # QUICK_RECIPE's progressive resolution is the pixel UNet's: a Stable Diffusion run on this
        # profile trains at its own size throughout (and its config says so: lowres_size 0)
        preset = {k: v for k, v in preset.items() if k not in ("diffusion.lowres_size", "diffusion.lowres_until")}
    cfg = apply_overrides(Config(profile=profile), preset)
    return apply_overrides(cfg, overrides)


def with_variant(cfg: Config, variant: str) -> Config:
    """``cfg`` with the diffusion variant's components switched off (strictly, by name)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown VARIANT {variant!r}; choose one of {list(VARIANTS)}")
    overrides = {f"diffusion.{k}": v for k, v in VARIANTS[variant].items()}
    return apply_overrides(cfg, {**overrides, "diffusion.variant": variant})


def to_dict(cfg: Config) -> dict[str, Any]:
    """Every section of ``cfg`` as plain values (JSON-serialisable): what artifacts store and
    :func:`from_dict` rebuilds."""
    return dataclasses.asdict(cfg)


#: keys added after configs were first stored, each with the value an older stored config (which
#: lacks it) was run with. ``from_dict`` fills them in, so that a changed default cannot pass an old
#: artifact off as one made with the new setting.
LEGACY: dict[str, Any] = {"diffusion.fair_target": "requested", "diffusion.loss_weighting": "none",
                          "diffusion.ema_power": 0.0, "downstream.threshold": "fixed"}


def from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a stored config (``to_dict``, or a provenance stamp's ``"config"``) strictly, as
    :func:`apply_overrides` does; keys in :data:`LEGACY` it predates take their legacy value, other
    keys and sections it predates (e.g. ``downstream`` and ``vae`` in configs stored before they
    joined :class:`Config`) their defaults; an unknown key is an error."""
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
