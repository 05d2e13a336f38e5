import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmglib.data import images


def _table(tmp_path, n_good=3, corrupt=True, missing=True):
    rows = []
    for i in range(n_good):
        p = tmp_path / f"good{i}.jpg"
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(p)
        rows.append((f"g{i}", str(p)))
    if corrupt:
        good = (tmp_path / "good0.jpg").read_bytes()
        (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
        (tmp_path / "html.jpg").write_text("<html>404</html>")
        rows += [("t", str(tmp_path / "trunc.jpg")), ("h", str(tmp_path / "html.jpg"))]
    if missing:
        rows.append(("m", str(tmp_path / "nope.jpg")))
    rows.append(("meta", ""))  # metadata-only row: kept
    return pd.DataFrame(rows, columns=["md5hash", "image_path"])


def test_bad_images_are_reported_counted_and_skipped(tmp_path, capsys):
    usable, report = images.check_images(_table(tmp_path), progress=False)
    assert sorted(usable.md5hash) == ["g0", "g1", "g2", "meta"]
    assert sorted(report.md5hash) == ["h", "m", "t"]
    reasons = dict(zip(report.md5hash, report.reason, strict=True))
    assert reasons["m"] == "missing" and reasons["t"].startswith("corrupt") and reasons["h"].startswith("corrupt")
    assert "3 of 6 images unusable" in capsys.readouterr().out


def test_no_usable_image_is_an_error(tmp_path):
    df = _table(tmp_path, n_good=1).iloc[1:]  # drop the only good one
    with pytest.raises(ValueError, match="none of the 3 images"):
        images.check_images(df, progress=False)


def test_load_image_crops_to_square_and_resizes(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the centre square is white
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = images.load_image(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.min() > 240


def test_lesion_dataset_items(tiny_synthetic):
    import torch

    from bmglib.data.dataset import LesionDataset

    pool, _ = tiny_synthetic
    ds = LesionDataset(pool, 32, augment=True)
    item = ds[0]
    x = item["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() <= x.max() <= 1
    assert item["fst"] == pool.fitzpatrick_scale[0] and item["melanoma"] == int(pool.lesion[0] == "melanoma")
    plain = LesionDataset(pool, 32)[0]["image"]
    # augmentation moves pixels but (no colour jitter) keeps the colour distribution close
    assert abs(plain.mean() - x.mean()) < 0.05
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["lesion"].shape == (8,)
