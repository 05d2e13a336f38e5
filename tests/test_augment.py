"""The augmentations: each does what its name says, moves pixels only, and draws what it says."""

import pytest
import torch

from bmglib import augment


def _poses(img: torch.Tensor) -> list[torch.Tensor]:
    """The 8 dihedral poses of one (C, S, S) image."""
    rots = [torch.rot90(img, k, dims=(1, 2)) for k in range(4)]
    return rots + [r.flip(2) for r in rots]


def _pose_index(out: torch.Tensor, img: torch.Tensor) -> int:
    matches = [i for i, p in enumerate(_poses(img)) if torch.equal(p, out)]
    assert len(matches) == 1, "not a flip/rotation of the input"
    return matches[0]


IMG = torch.arange(3 * 6 * 6, dtype=torch.float).view(3, 6, 6) / 108 - 1  # every pixel distinct
BATCH = IMG.expand(16, -1, -1, -1)


@pytest.mark.parametrize("fn", [augment.flip_rot90_per_batch, augment.dihedral_per_image,
                                augment.flips_per_image_rot90_per_batch])
def test_every_batch_augmentation_only_moves_pixels(fn):
    x = torch.rand(8, 3, 6, 6)
    out = fn(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(x.flatten(1).sort(1).values, out.flatten(1).sort(1).values)  # colours kept


def test_flip_rot90_per_batch_gives_the_whole_batch_one_pose():
    seen = set()
    for seed in range(40):
        out = augment.flip_rot90_per_batch(BATCH, torch.Generator().manual_seed(seed))
        poses = {_pose_index(o, IMG) for o in out}
        assert len(poses) == 1  # one pose per batch
        seen |= poses
    assert seen == set(range(8))  # over batches, every pose occurs
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    augment.flip_rot90_per_batch(BATCH, gen)
    torch.rand(1, generator=ref), torch.rand(1, generator=ref), torch.randint(4, (1,), generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())  # 3 draws, whatever the batch size


def test_dihedral_per_image_gives_each_image_its_own_pose():
    out = augment.dihedral_per_image(IMG.expand(64, -1, -1, -1), torch.Generator().manual_seed(1))
    assert {_pose_index(o, IMG) for o in out} == set(range(8))


def test_flips_per_image_rot90_per_batch_flips_each_image_and_rotates_the_batch():
    gen = torch.Generator().manual_seed(5)
    out = augment.flips_per_image_rot90_per_batch(BATCH, gen)
    ref = torch.Generator().manual_seed(5)
    h, v = torch.rand(16, generator=ref) < 0.5, torch.rand(16, generator=ref) < 0.5
    k = int(torch.randint(4, (1,), generator=ref))
    for i, o in enumerate(out):
        x = IMG.flip(2) if h[i] else IMG
        x = x.flip(1) if v[i] else x
        assert torch.equal(o, torch.rot90(x, k, dims=(1, 2)))
    assert h.any() and (~h).any()  # the flips differ between images of one batch


def test_flip_rot90_zoom_keeps_shape_range_and_colours_of_one_image():
    flat = torch.full((3, 16, 16), 0.25)
    torch.manual_seed(0)
    outs = [augment.flip_rot90_zoom(IMG.repeat(1, 3, 3)[:, :16, :16]) for _ in range(12)]
    assert all(o.shape == (3, 16, 16) and o.min() >= -1 and o.max() <= 1 for o in outs)
    assert len({tuple(o.flatten()[:8].tolist()) for o in outs}) > 1  # it does augment
    assert torch.allclose(augment.flip_rot90_zoom(flat), flat)  # no colour change, zoomed or not


def test_augmentations_are_named():
    assert augment.get("dihedral_per_image") is augment.dihedral_per_image
    x = torch.rand(2, 3, 4, 4)
    assert augment.get("none")(x, torch.Generator()) is x
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment.get("flip")
