import numpy as np
import pytest
import torch
from PIL import Image

from bmglib import skintone


@pytest.mark.parametrize("ita,fst", [(70, 1), (55.01, 1), (55, 2), (41.5, 2), (41, 3), (30, 3),
                                     (28, 4), (20, 4), (19, 5), (10.5, 5), (10, 6), (-40, 6)])
def test_thresholds(ita, fst):
    assert skintone.ita_to_fst(ita) == fst


def test_lab_roundtrip_and_known_value():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 3), dtype=np.uint8)
    back = skintone.lab_to_rgb_np(skintone.rgb_to_lab_np(rgb))
    assert np.abs(back.astype(int) - rgb).max() <= 1
    white = skintone.rgb_to_lab_np(np.array([[255, 255, 255]], np.uint8))[0]
    assert white[0] == pytest.approx(100, abs=0.01) and abs(white[1]) < 0.01


def test_torch_lab_matches_numpy():
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 127.5 - 1
    lab_t = skintone.rgb_to_lab(x)[0].permute(1, 2, 0).numpy()
    assert np.allclose(lab_t, skintone.rgb_to_lab_np(img), atol=1e-4)


def test_soft_fst_sums_to_one_agrees_with_hard_and_is_differentiable():
    ita = torch.tensor([70.0, 48.0, 34.0, 23.0, 14.0, -20.0], requires_grad=True)
    p = skintone.soft_fst_from_ita(ita, temperature=1.0)
    assert torch.allclose(p.sum(1), torch.ones(6))
    assert (p.argmax(1) + 1).tolist() == [1, 2, 3, 4, 5, 6]
    p[:, 0].sum().backward()
    assert ita.grad is not None and ita.grad.abs().sum() > 0


def test_soft_fst_on_images_follows_hard_estimate():
    from bmglib.data import synthetic

    imgs, hard = [], []
    for f in (1, 3, 6):
        s = synthetic.render(f, "nevus", 64, f)
        imgs.append(s.image)
        hard.append(skintone.estimate_fst(s.image))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    x.requires_grad_(True)
    p = skintone.soft_fst(x)
    assert (p.argmax(1) + 1).tolist() == hard
    p[:, 5].sum().backward()
    assert x.grad.abs().sum() > 0


def test_real_isic_images_are_mostly_light(shared_real):
    files = sorted((shared_real / "isic2017" / "images").glob("*.jpg"))
    assert len(files) == 150
    fsts = np.array([skintone.estimate_fst_from_image(f) for f in files[::5]])
    # ISIC-2017 is a largely fair-skinned population: most estimates should be FST I–III
    assert (fsts <= 3).mean() >= 0.6, np.bincount(fsts)


def test_estimate_from_file(tmp_path):
    from bmglib.data import synthetic

    s = synthetic.render(2, "other", 64, 4)
    Image.fromarray(s.image).save(tmp_path / "x.png")
    assert skintone.estimate_fst_from_image(tmp_path / "x.png") == skintone.estimate_fst(s.image)
