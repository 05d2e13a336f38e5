"""The schedules of diffusion training: noise (``make_scheduler``), learning rate (``lr_factor``)
and the fairness loss's ramp (``fair_factor``).

The noise schedule is a diffusers ``DDPMScheduler`` (cosine, ``squaredcos_cap_v2``), shared by
training (``add_noise``, the v/ε target) and sampling (``bmglib.diffusion.sample``); Stable
Diffusion keeps its checkpoint's own (:func:`model_scheduler`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from diffusers import DDPMScheduler

from bmglib import config


def make_scheduler(d: config.DiffusionConfig) -> DDPMScheduler:
    """The noise schedule (cosine) and parameterisation shared by training and sampling."""
    return DDPMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type=d.prediction_type, clip_sample=False)


def lr_factor(step: int, d: config.DiffusionConfig) -> float:
    """Linear warm-up, then constant or a cosine decay to zero at ``d.steps``."""
    if step < d.warmup_steps:
        return (step + 1) / d.warmup_steps
    if d.lr_schedule == "constant":
        return 1.0
    if d.lr_schedule == "cosine":
        progress = (step - d.warmup_steps) / max(1, d.steps - d.warmup_steps)
        return 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))
    raise ValueError(f"diffusion.lr_schedule must be 'cosine' or 'constant', got {d.lr_schedule!r}")


def fair_factor(step: int, d: config.DiffusionConfig) -> float:
    """Multiplier of the fairness λs at 0-based ``step``: 0 for the first ``fair_start`` share of
    the steps, then a linear rise to 1 over the next ``fair_ramp`` share.

    Early in training x̂0 is noise and the estimator's verdict on it means little, so the loss can
    be held back. On `quick` this did not help: the loss, started half-way, still drowned the
    denoising gradient; its scale was the problem, which :func:`bmglib.diffusion.losses.balance_scale`
    (``fair_balance``) addresses.
    """
    for name in ("fair_start", "fair_ramp"):
        if not 0.0 <= getattr(d, name) <= 1.0:
            raise ValueError(f"diffusion.{name} must be a share of the steps in [0, 1], got {getattr(d, name)}")
    start, ramp = d.fair_start * d.steps, d.fair_ramp * d.steps
    if step < start:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (step - start + 1) / ramp)


def step_config(step: int, d: config.DiffusionConfig) -> config.DiffusionConfig:
    """``d`` for 0-based ``step``: after the first ``weighting_until`` share of the steps the loss is
    unweighted (``loss_weighting = "none"``), after the first ``lowres_until`` share the batches are
    at full size (``lowres_size = 0``); before both, ``d`` itself."""
    changes: dict = {}
    if d.loss_weighting != "none" and step >= d.weighting_until * d.steps:
        changes["loss_weighting"] = "none"
    if d.lowres_size and step >= d.lowres_until * d.steps:
        changes["lowres_size"] = 0
    return dataclasses.replace(d, **changes) if changes else d


def model_scheduler(model: torch.nn.Module, d: config.DiffusionConfig) -> DDPMScheduler:
    """Stable Diffusion keeps its checkpoint's schedule; the CPU UNet uses :func:`make_scheduler`."""
    return getattr(model, "scheduler", None) or make_scheduler(d)
