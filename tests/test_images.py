"""Image checking (nothing lost silently), loading at a size, and the Dataset."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bmglib.data import images, schema


def _save(path, h=48, w=64, seed=0, skin=False):
    """Noise, so a JPEG has plenty of entropy-coded data to truncate; or skin-coloured noise."""
    rng = np.random.default_rng(seed)
    if skin:  # a light-brown mean, far from grey, so any brightness/colour change moves it
        arr = np.clip(np.array([200, 150, 120]) + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    else:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def _table(tmp_path, n_good=3, corrupt=True, missing=True, meta=True):
    rows = [(f"g{i}", _save(tmp_path / f"good{i}.jpg", seed=i)) for i in range(n_good)]
    if corrupt:
        good = (tmp_path / "good0.jpg").read_bytes() if n_good else b""
        (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
        (tmp_path / "html.jpg").write_text("<html>404 not found</html>")
        rows += [("t", str(tmp_path / "trunc.jpg")), ("h", str(tmp_path / "html.jpg"))]
    if missing:
        rows.append(("m", str(tmp_path / "nope.jpg")))
    if meta:
        rows.append(("meta", ""))  # metadata-only row: kept, not an image problem
    df = pd.DataFrame(rows, columns=["md5hash", "image_path"])
    return df.assign(source="isic2017")


def test_bad_images_are_reported_counted_and_skipped(tmp_path, capsys):
    df = _table(tmp_path)
    usable, report = images.check_images(df, progress=False)
    assert list(usable.md5hash) == ["g0", "g1", "g2", "meta"]
    assert list(report.columns) == ["row", "md5hash", "path", "reason"]
    assert list(report.row) == [3, 4, 5] and list(report.md5hash) == ["t", "h", "m"]
    reasons = dict(zip(report.md5hash, report.reason, strict=True))
    assert reasons["m"] == "missing" and reasons["t"].startswith("corrupt:") and reasons["h"].startswith("corrupt:")
    out = capsys.readouterr().out
    assert "3 of 6 images unreadable (corrupt: 2, missing: 1), skipped; see report" in out
    assert "1 metadata-only" in out


def test_all_good_is_silent(tmp_path, capsys):
    usable, report = images.check_images(_table(tmp_path, corrupt=False, missing=False), progress=False)
    assert len(usable) == 4 and report.empty and capsys.readouterr().out == ""


def test_no_usable_image_is_an_error_naming_the_table(tmp_path):
    df = _table(tmp_path, n_good=1).iloc[1:]  # drop the only good image; a metadata row remains
    with pytest.raises(images.NoUsableImagesError, match=r"isic2017.*none of its 3 images.*corrupt: 2, missing: 1"):
        images.check_images(df, progress=False)
    with pytest.raises(ValueError, match="my upload"):
        images.check_images(df, name="my upload", progress=False)


def test_load_image_crops_centre_square_and_resizes(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the centre square is white, the sides black
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = images.load_image(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.min() > 240
    Image.fromarray(arr.transpose(1, 0, 2)).save(tmp_path / "tall.png")
    assert images.load_image(tmp_path / "tall.png", 50).min() > 240  # upsampled, still the centre


def test_load_image_gives_rgb_for_grey_and_rgba(tmp_path):
    Image.fromarray(np.full((10, 10), 77, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((10, 10, 4), 200, np.uint8)).save(tmp_path / "rgba.png")
    assert images.load_image(tmp_path / "grey.png", 8).shape == (8, 8, 3)
    assert images.load_image(tmp_path / "rgba.png", 8).shape == (8, 8, 3)


def _schema_table(tmp_path, n=8, skin=False):
    rows = []
    for i in range(n):
        lesion = schema.LESIONS[i % len(schema.LESIONS)]
        rows.append({"md5hash": f"x{i}", "image_path": _save(tmp_path / f"x{i}.png", 40, 52, i, skin),
                     "fitzpatrick_scale": i % 6 + 1, "lesion": lesion})
    return pd.DataFrame(rows)


def test_lesion_dataset_items(tmp_path):
    df = _schema_table(tmp_path)
    ds = images.LesionDataset(df, 32)
    item = ds[4]
    x = item["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert x.min() < -0.9 and x.max() > 0.9  # the full range is used, not [0, 1]
    assert item == {**item, "fst": 5, "lesion": 0, "melanoma": 1, "idx": 4}
    assert ds[1]["lesion"] == schema.LESIONS.index("nevus") and ds[1]["melanoma"] == 0
    ref = torch.from_numpy(images.load_image(df.image_path[4], 32)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(x, ref)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["fst"].dtype == torch.int64


def test_augmentation_keeps_shape_range_and_colours(tmp_path):
    df = _schema_table(tmp_path, skin=True)
    plain = images.LesionDataset(df, 32)[0]["image"]
    ds = images.LesionDataset(df, 32, augment=True)
    torch.manual_seed(0)
    outs = [ds[0]["image"] for _ in range(12)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert all(-1 <= o.min() and o.max() <= 1 for o in outs)
    assert any(not torch.equal(o, plain) for o in outs)  # it does augment
    # geometry only: the per-channel colour means stay put (no colour jitter)
    for o in outs:
        assert torch.allclose(o.mean((1, 2)), plain.mean((1, 2)), atol=0.03)


def test_cache_and_transform(tmp_path):
    df = _schema_table(tmp_path, n=2)
    ds = images.LesionDataset(df, 16, transform=lambda t: t * 0.5, cache=True)
    a = ds[0]["image"]
    assert a.abs().max() <= 0.5 and 0 in ds._mem
    (tmp_path / "x0.png").unlink()  # served from memory now
    assert torch.equal(ds[0]["image"], a)
    assert images.LesionDataset(df, 16)._mem == {}  # off by default


def test_dataset_refuses_metadata_only_rows(tmp_path):
    df = _schema_table(tmp_path, n=2)
    df.loc[1, "image_path"] = ""
    with pytest.raises(ValueError, match="metadata only"):
        images.LesionDataset(df, 16)
