"""Stage 2: the conditional diffusion model — label conditioning, the UNet / Stable Diffusion
backbones, noise schedule and losses, distribution-aware resampling, training and sampling."""
