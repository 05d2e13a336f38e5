"""The conditional denoiser: FST and lesion labels as tokens the UNet attends to.

* :class:`LabelConditioner` — FST (I–VI, plus *unknown*) and lesion type become learned tokens,
  (B, 2, dim): the UNet's cross-attention context. Each label has a **null token**; during training
  a label is replaced by it with probability ``p_drop`` so that classifier-free guidance works and
  either label can be left out at sampling time (``fst=None``).
* :func:`build_unet` — a small diffusers ``UNet2DConditionModel`` for the CPU: cross-attention only
  at the lowest resolution (where it is cheap), scale-shift (FiLM) time conditioning, and the
  mean of the label tokens added to the time embedding as well (diffusers' ``projection`` class
  embedding, as SDXL adds its pooled text embedding): global attributes such as skin colour are
  learned in far fewer steps (DESIGN.md measurements).

``model(x_t, t, cond) -> prediction`` (v or ε, see ``DiffusionConfig.prediction_type``) is all the
rest of the code relies on; the noise schedule lives in the diffusers scheduler.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from bmglib.data import schema

FST_NULL, FST_UNKNOWN_TOKEN = 0, 7  # token ids: 0 = null, 1..6 = FST I..VI, 7 = unknown
LESION_NULL = 0  # token ids: 0 = null, 1..4 = schema.LESIONS
#: the vector added to the time embedding: mean of the two tokens | a learned vector per
#: (FST, lesion) pair | nothing (cross-attention only)
POOLED_MODES = ("mean", "joint", "none")


def fst_tokens(fst: torch.Tensor) -> torch.Tensor:
    """FST values (-1 or 1..6) → token ids (7 or 1..6)."""
    return torch.where(fst < 1, torch.full_like(fst, FST_UNKNOWN_TOKEN), fst)


class LabelConditioner(nn.Module):
    """Labels → cross-attention context (B, 2, dim) and a pooled vector (B, dim).

    ``fst``: (B,) long in {-1, 1..6} or None (= all null); ``lesion``: (B,) long index into
    ``schema.LESIONS`` or None. ``drop_fst``/``drop_lesion``: (B,) bool, True → null token.
    """

    def __init__(self, dim: int = 64, pooled: str = "mean"):
        super().__init__()
        if pooled not in POOLED_MODES:
            raise ValueError(f"pooled must be one of {POOLED_MODES}, got {pooled!r}")
        self.dim, self.pooled = dim, pooled
        self.fst = nn.Embedding(8, dim)
        self.lesion = nn.Embedding(len(schema.LESIONS) + 1, dim)
        self.pos = nn.Parameter(torch.zeros(2, dim))  # which slot is FST, which is lesion
        nn.init.normal_(self.fst.weight, std=0.3)
        nn.init.normal_(self.lesion.weight, std=0.3)
        if pooled == "joint":  # one vector per (FST token, lesion token) pair, nulls included
            self.joint = nn.Embedding(8 * (len(schema.LESIONS) + 1), dim)
            nn.init.normal_(self.joint.weight, std=0.3)

    def forward(self, fst: torch.Tensor | None, lesion: torch.Tensor | None, batch: int | None = None,
                drop_fst: torch.Tensor | None = None, drop_lesion: torch.Tensor | None = None):
        ref = fst if fst is not None else lesion
        b = batch if ref is None else len(ref)
        device = self.pos.device
        f = torch.zeros(b, dtype=torch.long, device=device) if fst is None else fst_tokens(fst.to(device))
        les = torch.zeros(b, dtype=torch.long, device=device) if lesion is None else lesion.to(device) + 1
        if drop_fst is not None:
            f = torch.where(drop_fst.to(device), torch.zeros_like(f), f)
        if drop_lesion is not None:
            les = torch.where(drop_lesion.to(device), torch.zeros_like(les), les)
        tokens = torch.stack([self.fst(f), self.lesion(les)], dim=1) + self.pos
        if self.pooled == "joint":
            return tokens, self.joint(f * (len(schema.LESIONS) + 1) + les)
        return tokens, tokens.mean(dim=1)


class ConditionalUNet(nn.Module):
    """``UNet2DConditionModel`` + :class:`LabelConditioner`: ``forward(x_t, t, fst, lesion, ...)``.

    ``x_t``: (B, C, H, W) noisy images in model space; ``t``: (B,) long timesteps; returns the
    prediction (B, C, H, W).
    """

    def __init__(self, unet: UNet2DConditionModel, conditioner: LabelConditioner):
        super().__init__()
        self.unet, self.conditioner = unet, conditioner

    def forward(self, x_t, t, fst=None, lesion=None, drop_fst=None, drop_lesion=None):
        ctx, pooled = self.conditioner(fst, lesion, len(x_t), drop_fst, drop_lesion)
        kw = {"class_labels": pooled} if self.conditioner.pooled != "none" else {}
        return self.unet(x_t, t, encoder_hidden_states=ctx, **kw).sample


def build_unet(image_size: int = 32, channels: tuple[int, ...] = (32, 64, 64), cond_dim: int = 64,
               layers_per_block: int = 1, attention_head_dim: int = 16, pooled: str = "mean",
               in_channels: int = 3) -> ConditionalUNet:
    """The CPU denoiser: cross-attention only in the lowest-resolution blocks.

    ``channels`` per resolution level (each level halves the size); ``cond_dim`` is the token width;
    ``pooled`` one of :data:`POOLED_MODES`.
    """
    if pooled not in POOLED_MODES:
        raise ValueError(f"pooled must be one of {POOLED_MODES}, got {pooled!r}")
    use_pooled = pooled != "none"
    n = len(channels)
    down = ["DownBlock2D"] * (n - 1) + ["CrossAttnDownBlock2D"]
    up = ["CrossAttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)
    unet = UNet2DConditionModel(
        sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
        down_block_types=tuple(down), up_block_types=tuple(up),
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        cross_attention_dim=cond_dim, attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, channels[0] // 2) if channels[0] < 64 else 32,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="projection" if use_pooled else None,
        projection_class_embeddings_input_dim=cond_dim if use_pooled else None,
    )
    return ConditionalUNet(unet, LabelConditioner(cond_dim, pooled))


def build_default_unet(image_size: int = 32, channels=(32, 64, 64)) -> UNet2DConditionModel:
    """The diffusers default layout at the same size (attention in every block but the first):
    the benchmark's reference for why :func:`build_unet` places attention where it does."""
    n = len(channels)
    return UNet2DConditionModel(
        sample_size=image_size, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=tuple(channels), layers_per_block=2, cross_attention_dim=64,
        norm_num_groups=16, attention_head_dim=8,
    )
