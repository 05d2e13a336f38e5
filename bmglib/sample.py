"""Sampling from a trained conditional model: diffusers DDIM / DPM-Solver++ with guidance.

Classifier-free guidance: ``pred = cond + w · (cond − uncond)`` where *uncond* uses the null
tokens; ``w = 0`` is plain conditional sampling (DESIGN.md: w=0.5 was fine, w=2 broke samples on
the toy — tune w on a validation measure).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

SAMPLERS = {"ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler}


@torch.no_grad()
def sample(model: torch.nn.Module, train_scheduler, fst: torch.Tensor | None, lesion: torch.Tensor | None,
           n: int | None = None, size: int = 32, steps: int = 25, guidance: float = 0.5,
           sampler: str = "ddim", seed: int = 0, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Draw images for requested labels. ``fst`` (B,) in 1..6 or None (not conditioned),
    ``lesion`` (B,) index into ``schema.LESIONS`` or None. Returns (B, 3, size, size) in [-1, 1]."""
    if hasattr(model, "decode_latents"):  # Stable Diffusion: sample in latent space, decode
        from bmglib.model_sd import sample_sd

        return sample_sd(model, fst, lesion, n=n, steps=steps, guidance=guidance,
                         generator=torch.Generator().manual_seed(seed))
    ref = fst if fst is not None else lesion
    total = len(ref) if ref is not None else n
    if total is None:
        raise ValueError("give fst and/or lesion labels, or n for unconditional samples")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    sched = SAMPLERS[sampler].from_config(train_scheduler.config)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, total, batch_size), desc=f"sampling {sampler}-{steps}", disable=not progress):
        f = None if fst is None else fst[i:i + batch_size].to(device)
        les = None if lesion is None else lesion[i:i + batch_size].to(device)
        b = min(batch_size, total - i)
        x = torch.randn((b, 3, size, size), generator=gen).to(device)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            cond = model(x, tt, f, les)
            if guidance != 0:
                uncond = model(x, tt, None, None)
                cond = cond + guidance * (cond - uncond)
            x = sched.step(cond, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)
