"""Losses of the conditional diffusion model: the denoising loss and the fairness loss, and
:func:`training_losses`, which assembles them for one batch (noise, timesteps, label drop, the
noised input, the denoising target, the fairness terms and their gradient balancing) as
improved-diffusion's ``GaussianDiffusion.training_losses`` does; the training loop
(``bmglib.diffusion.train``) only batches, steps and checkpoints.

Fairness loss (DESIGN.md, "The fairness components, precisely"): for the samples of a batch at
low noise (t ≤ ``t_fair``), predict the clean image x̂0 from the model output, score it with a
*frozen* FST estimator → soft FST probabilities p_i (6,), and penalise

    KL(target ‖ mean_i p_i)          target = the requested FST mix of those samples
                                     (uniform when FST is not conditioned)
  + λ_ce · mean_i KL(c_i ‖ p_i)      (optional, per sample; c_i = one-hot of the requested FST,
                                     so this is the cross-entropy −log p_i[requested FST_i])

The KL of the *requested* labels alone would be zero under balanced sampling; this one measures
what the model actually draws.

Calibrated target (``DiffusionConfig.fair_target = "calibrated"``): the requested FST f is
expressed as what the estimator says of *real* images of type f, c_f = mean p over the real
validation images of FST f (a row of ``target_probs``, :func:`bmglib.skintone.real_fst_probs`).
Both terms are then zero for samples the estimator sees exactly as it sees real images of the
requested type. With one-hot targets the loss keeps pushing past that, towards the estimator's most
confident region, which need not be where real skin of that type lies (README, "What the fairness
loss does").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from bmglib import config


def denoising_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   t_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between the model output and its target (v or ε), a scalar.

    ``weight``: optional (B, 1, H, W) per-pixel weights (see :func:`foreground_weight`);
    ``t_weight``: optional (B,) per-sample weights of their timesteps (:func:`timestep_weight`).
    """
    if t_weight is not None:
        weight = t_weight.view(-1, 1, 1, 1) * (1.0 if weight is None else weight / weight.mean())
        return ((pred - target) ** 2 * weight).mean()
    if weight is None:
        return torch.nn.functional.mse_loss(pred, target)
    return ((pred - target) ** 2 * weight).mean() / weight.mean()


def timestep_weight(scheduler: DDPMScheduler, t: torch.Tensor, kind: str, gamma: float = 5.0) -> torch.Tensor | None:
    """(B,) loss weights of timesteps ``t`` (None for ``"none"``).

    ``min_snr`` (Min-SNR-γ, Hang et al., ICCV 2023): the x0-space error ‖x0 − x̂0‖² weighted by
    min(SNR_t, γ). Since ‖ε − ε̂‖² = SNR_t · ‖x0 − x̂0‖² and ‖v − v̂‖² = (SNR_t + 1) · ‖x0 − x̂0‖²,
    that is min(SNR_t, γ) / SNR_t on the ε loss and min(SNR_t, γ) / (SNR_t + 1) on the v loss.
    Low-noise timesteps (large SNR), whose gradients conflict with the rest, are capped; γ = 5 is
    the paper's default. On the v loss this also *lowers* the high-noise timesteps (weight ≈ SNR_t
    as SNR_t → 0).

    ``snr_cap``: the loss's own x0-space weight (SNR_t + 1 for v, SNR_t for ε) capped at γ, never
    raised or lowered below it: min(SNR_t + 1, γ) / (SNR_t + 1) on the v loss, min(SNR_t, γ) / SNR_t
    on the ε loss (there the same as ``min_snr``). Only the low-noise timesteps are down-weighted;
    the high-noise ones keep weight 1.
    """
    if kind == "none":
        return None
    if kind not in ("min_snr", "snr_cap"):
        raise ValueError(f"diffusion.loss_weighting must be one of {config.LOSS_WEIGHTINGS}, got {kind!r}")
    abar = scheduler.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)
    own = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
    if kind == "snr_cap":
        return own.clamp(max=gamma) / own
    return snr.clamp(max=gamma) / own


def foreground_weight(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + strength · m``, m in [0, 1] = how far a pixel's colour is from
    the image's median colour (the skin), scaled per image: lesions (and artefacts) weigh more.

    The lesion is a small share of the pixels, so its morphology carries little of a plain MSE;
    this raises it without needing masks. ``x0``: (B, 3, H, W) in [-1, 1] → (B, 1, H, W).
    """
    med = x0.flatten(2).median(dim=2).values[..., None, None]
    dist = (x0 - med).norm(dim=1, keepdim=True)
    m = dist / dist.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    return 1.0 + strength * m


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """What the model must predict: v = α_t ε − σ_t x0 (v-prediction) or ε."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if scheduler.config.prediction_type == "epsilon":
        return noise
    raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")


def predict_x0(scheduler: DDPMScheduler, x_t: torch.Tensor, t: torch.Tensor,
               pred: torch.Tensor) -> torch.Tensor:
    """x̂0 from the model output. ``x_t``, ``pred``: (B, C, H, W); ``t``: (B,) long."""
    abar = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1).to(x_t.dtype)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if scheduler.config.prediction_type == "v_prediction":
        return a * x_t - s * pred
    return (x_t - s * pred) / a.clamp_min(1e-4)


@dataclass
class FairnessTerms:
    kl: torch.Tensor  # scalar
    ce: torch.Tensor  # scalar
    n: int  # samples with t ≤ t_fair
    estimated: torch.Tensor  # (6,) batch-mean estimated FST distribution (detached)
    target: torch.Tensor  # (6,)


def fairness_terms(x0_hat: torch.Tensor, t: torch.Tensor, estimator: torch.nn.Module, t_fair: int,
                   requested_fst: torch.Tensor | None,
                   target_probs: torch.Tensor | None = None) -> FairnessTerms:
    """KL(target ‖ batch-mean estimated FST) and the per-sample term, on samples with t ≤ ``t_fair``.

    ``x0_hat``: (B, 3, H, W) in about [-1, 1] (clamped); ``requested_fst``: (B,) in 1..6, or None
    when FST is not conditioned (target = uniform, CE = 0). ``target_probs``: None (one-hot
    targets) or a (6, 6) row-stochastic matrix whose row f-1 is the target of a request for FST f
    (the calibrated target). Returns zeros (with a graph) when no sample qualifies.
    """
    mask = t <= t_fair
    zero = x0_hat.sum() * 0.0
    if requested_fst is not None:
        mask = mask & (requested_fst >= 1)
    n = int(mask.sum())
    if n == 0:
        z = torch.zeros(6, device=x0_hat.device)
        return FairnessTerms(zero, zero, 0, z, z)
    probs = estimator(x0_hat[mask].clamp(-1, 1)).clamp_min(1e-6)  # (n, 6)
    est = probs.mean(0)
    if requested_fst is None:  # a uniform request
        target = (torch.full((6,), 1 / 6, device=x0_hat.device) if target_probs is None
                  else target_probs.to(x0_hat.device, x0_hat.dtype).mean(0))
        ce = zero
    elif target_probs is None:  # one-hot: the requested mix, and the cross-entropy
        req = requested_fst[mask].long() - 1
        target = torch.bincount(req, minlength=6).float() / n
        ce = -probs.gather(1, req[:, None]).log().mean()
    else:  # calibrated: c_i = the estimator's mean output on real images of the requested type
        c = target_probs.to(x0_hat.device, x0_hat.dtype)[requested_fst[mask].long() - 1]  # (n, 6)
        target = c.mean(0)
        ce = (c * (c.clamp_min(1e-12).log() - probs.log())).sum(1).mean()  # mean KL(c_i ‖ p_i)
    nz = target > 0
    kl = (target[nz] * (target[nz].log() - est[nz].log())).sum()
    return FairnessTerms(kl, ce, n, est.detach(), target)


def balance_scale(denoise: torch.Tensor, fair: torch.Tensor, out: torch.Tensor, ratio: float) -> torch.Tensor:
    """A detached factor that makes ``fair``'s gradient at the model output ``out`` ``ratio`` times
    the norm of ``denoise``'s: ratio · ‖∂denoise/∂out‖ / ‖∂fair/∂out‖ (0 when fair has no gradient).

    Why: on the quick model at convergence, the per-sample CE's gradient is ~100× and the KL's
    ~6–12× the denoising loss's (parameter-gradient norms), so any fixed λ of order 0.1–1 lets the
    fairness term drown denoising: lesions and fine detail are lost. Balancing at the output is a
    cheap proxy for balancing the parameter gradients (within 2–3× of their ratio there) and does
    not depend on the backbone, pixel or latent space.
    """
    g_den, = torch.autograd.grad(denoise, out, retain_graph=True)
    g_fair, = torch.autograd.grad(fair, out, retain_graph=True, allow_unused=True)
    if g_fair is None or not torch.isfinite(g_fair).all() or g_fair.norm() == 0:
        return torch.zeros((), device=out.device)
    return (ratio * g_den.norm() / g_fair.norm()).detach()


@dataclass
class TrainingLosses:
    loss: torch.Tensor  # scalar: what is back-propagated
    denoise: torch.Tensor  # scalar: the denoising part
    fair: FairnessTerms | None  # None when the fairness loss is off for this step
    fair_scale: float  # fair_factor × the balancing scale (0 without fairness terms)

    def logs(self) -> dict[str, float]:
        """The logged parts: loss, denoise, fair_kl, fair_ce, n_fair, fair_scale."""
        f = self.fair
        return {"loss": self.loss.item(), "denoise": self.denoise.item(),
                "fair_kl": f.kl.item() if f else 0.0, "fair_ce": f.ce.item() if f else 0.0,
                "n_fair": f.n if f else 0, "fair_scale": self.fair_scale}


def training_losses(model: torch.nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor,
                    fst: torch.Tensor, lesion: torch.Tensor, d: config.DiffusionConfig,
                    generator: torch.Generator, *, estimator: torch.nn.Module | None = None,
                    fair_factor: float = 1.0, encode: Callable | None = None,
                    decode: Callable | None = None) -> TrainingLosses:
    """The loss of one batch and its logged parts.

    ``x0``: (B, 3, H, W) in [-1, 1], augmented, on the model's device; ``fst`` (B,) 1..6 and
    ``lesion`` (B,) indices, on the CPU. ``encode``/``decode``: pixels → latents → pixels for a
    latent model (Stable Diffusion; ``None`` for the pixel UNet). ``fair_factor``: the fairness
    ramp of this step (:func:`bmglib.diffusion.schedule.fair_factor`).

    Draws from ``generator``, in this order (a resumed run repeats it): the latent sample (with
    ``encode``), noise, timesteps, the FST-token drop, the lesion-token drop. A sample whose FST
    token was dropped (or a model without FST conditioning) was not asked for a skin type and
    gets no per-sample fairness term.
    """
    device = x0.device
    if encode is not None:
        with torch.no_grad():
            x0 = encode(x0, generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, d.num_train_timesteps, (len(x0),), generator=generator).to(device)
    drop_f = torch.rand(len(x0), generator=generator) < d.p_drop
    drop_l = torch.rand(len(x0), generator=generator) < d.p_drop
    if not d.fst_cond:
        drop_f = torch.ones_like(drop_f)  # FST never seen: always the null token
    x_t = scheduler.add_noise(x0, noise, t)
    out = model(x_t, t, fst.to(device), lesion.to(device), drop_f, drop_l)
    weight = foreground_weight(x0, d.fg_weight) if d.fg_weight > 0 and encode is None else None
    t_weight = timestep_weight(scheduler, t, d.loss_weighting, d.min_snr_gamma)
    den = denoising_loss(out, training_target(scheduler, x0, noise, t), weight, t_weight)
    fst_req = torch.where(drop_f, torch.zeros_like(fst), fst).to(device)
    fair = _fair_terms(out, x_t, t, fst_req, d, scheduler, estimator, decode, fair_factor)
    if fair is None:
        return TrainingLosses(den, den, None, 0.0)
    fair_loss = d.lambda_kl * fair.kl + d.lambda_ce * fair.ce
    scale = balance_scale(den, fair_loss, out, d.fair_balance) if d.fair_balance > 0 else torch.ones(())
    return TrainingLosses(den + fair_factor * scale * fair_loss, den, fair, fair_factor * scale.item())


def _fair_terms(model_out, x_t, t, fst_req, d, scheduler, estimator, decode, factor) -> FairnessTerms | None:
    """:func:`fairness_terms` on x̂0 of this batch, or None when the loss is off for the step."""
    if estimator is None or (d.lambda_kl == 0 and d.lambda_ce == 0) or factor == 0:
        return None
    x0_hat = predict_x0(scheduler, x_t, t, model_out)
    if decode is not None:  # latents → pixels for the estimator (only the low-noise samples matter)
        x0_hat = decode(x0_hat)
    elif x0_hat.shape[-1] != d.image_size:  # a progressive-resolution step: the estimator sees image_size
        x0_hat = torch.nn.functional.interpolate(x0_hat, size=(d.image_size, d.image_size), mode="bilinear",
                                                 align_corners=False)
    target_probs = estimator.real_probs if d.fair_target == "calibrated" else None
    return fairness_terms(x0_hat, t, estimator, d.t_fair, fst_req if d.fst_cond else None, target_probs)
