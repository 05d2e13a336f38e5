"""Every training augmentation, one named function each; a caller names the one it needs.

All are geometry only (flips and 90° rotations; one adds a mild zoom): brightness, contrast or
colour jitter would move the skin's ITA and so silently corrupt the FST label a model is trained
on, conditioned on or evaluated by. They differ in what is random per image and what per batch,
and so in the random numbers they draw; each caller's weights depend on that, so they are kept
apart rather than merged.

======================================  ==========================================  ==============
function                                what                                        used by
======================================  ==========================================  ==============
:func:`flip_rot90_per_batch`            one random flip/flip/90° pose per *batch*   small CNNs, VAE
:func:`dihedral_per_image`              one of the 8 dihedral poses per *image*     downstream
:func:`flips_per_image_rot90_per_batch` flips per image, one 90° rotation per batch diffusion
:func:`flip_rot90_zoom`                 one image, global RNG, + centred zoom       LesionDataset
======================================  ==========================================  ==============

Batch functions take ``x`` (B, C, H, W) with H = W and a ``torch.Generator`` and return a tensor
of the same shape and values (a permutation of each image's pixels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def flip_rot90_per_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The whole batch gets the same random pose: a horizontal flip (p=½), a vertical flip (p=½)
    and a rotation by k·90°, k uniform in 0..3. Draws 3 numbers from ``gen``."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(2)
    return torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), dims=(2, 3))


def dihedral_per_image(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Every image independently gets one of the 8 dihedral poses (transpose, horizontal flip,
    vertical flip, each p=½). Draws 3·B numbers from ``gen``."""
    t, h, v = (torch.rand(3, len(x), generator=gen) < 0.5).view(3, -1, 1, 1, 1)
    x = torch.where(t, x.transpose(2, 3), x)
    x = torch.where(h, x.flip(3), x)
    return torch.where(v, x.flip(2), x)


def flips_per_image_rot90_per_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Every image independently gets a horizontal and a vertical flip (each p=½); then the whole
    batch is rotated by the same k·90°, k uniform in 0..3. Draws 2·B + 1 numbers from ``gen``."""
    b = len(x)
    h = torch.rand(b, generator=gen) < 0.5
    v = torch.rand(b, generator=gen) < 0.5
    x = torch.where(h.view(-1, 1, 1, 1), x.flip(3), x)
    x = torch.where(v.view(-1, 1, 1, 1), x.flip(2), x)
    return torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), dims=(2, 3))


def flip_rot90_zoom(x: torch.Tensor) -> torch.Tensor:
    """One image ``x`` (3, S, S) in [-1, 1]: flips (p=½ each), a k·90° rotation and a centred zoom
    by a factor in [1, 1.1] (crop the centre, scale back bilinearly: the lesion stays centred).

    Draws from torch's *global* generator, which a DataLoader seeds per worker (a generator
    copied into workers would repeat the same poses in every worker). Returns (3, S, S) in [-1, 1].
    """
    size = x.shape[-1]
    if torch.rand(()) < 0.5:
        x = x.flip(2)
    if torch.rand(()) < 0.5:
        x = x.flip(1)
    x = torch.rot90(x, int(torch.randint(4, ())), dims=(1, 2))
    crop = int(round(size / (1.0 + 0.1 * float(torch.rand(())))))
    if crop < size:
        o = (size - crop) // 2
        x = torch.nn.functional.interpolate(x[None, :, o:o + crop, o:o + crop], size=size,
                                            mode="bilinear", align_corners=False)[0]
    return x.clamp(-1.0, 1.0)


#: the batch augmentations by name (``trainer.FitConfig.augment``); ``none`` leaves x as it is
AUGMENTATIONS: dict[str, Augment] = {
    "none": lambda x, gen: x,
    "flip_rot90_per_batch": flip_rot90_per_batch,
    "dihedral_per_image": dihedral_per_image,
    "flips_per_image_rot90_per_batch": flips_per_image_rot90_per_batch,
}


def get(name: str) -> Augment:
    """The batch augmentation called ``name`` (a key of :data:`AUGMENTATIONS`)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {list(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
