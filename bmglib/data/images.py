"""Image files: checking a table's images without losing anything, loading one at a size, and the
torch Dataset over a schema table.

A missing or undecodable file is reported (row, path, reason), counted and skipped; it is an error
only when no image of the table is usable. Rows with an empty ``image_path`` are metadata only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from bmglib.augment import flip_rot90_zoom
from bmglib.data import schema

REPORT_COLUMNS = ("row", "md5hash", "path", "reason")
LESION_INDEX = {name: i for i, name in enumerate(schema.LESIONS)}
_PROGRESS_FROM = 500  # rows; below this a bar is noise


class NoUsableImagesError(ValueError):
    """A table has image paths but not one of them is a readable image."""


# --- checking ---------------------------------------------------------------------------------


def image_problem(path: str | Path) -> str | None:
    """None when ``path`` decodes; else ``"missing"`` or ``"corrupt: <error>"``.

    Decodes every byte (``load``), because ``verify`` lets truncated JPEGs through. JPEGs are
    decoded in draft mode (DCT scaling to ≥ 64 px): the whole entropy-coded stream is still read,
    so truncation and bad data are caught, at a fraction of the cost of a full-size decode.
    """
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        with Image.open(p) as im:
            im.draft("RGB", (64, 64))
            im.load()
    except Exception as e:  # any failure to decode means unusable; the report says which
        return f"corrupt: {type(e).__name__}: {e}"[:200]
    return None


def _table_name(df: pd.DataFrame, name: str | None) -> str:
    if name:
        return name
    if "source" in df.columns and df["source"].nunique() == 1:
        return f"the {df['source'].iloc[0]} table"
    return "the table"


def check_images(df: pd.DataFrame, name: str | None = None,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a schema table into usable rows and a report of unusable images.

    Args:
        df: a table with ``image_path`` ("" = metadata only) and ``md5hash``.
        name: how to call the table in messages (default: its ``source``).
        progress: a tqdm bar for tables of ≥ 500 image rows.
    Returns:
        ``(usable, report)``: ``usable`` = the rows whose image decodes plus the metadata-only rows
        (index reset); ``report`` columns ``row`` (index label in ``df``), ``md5hash``, ``path``,
        ``reason`` (``missing`` | ``corrupt: ...``), one line per skipped row.
    Raises:
        NoUsableImagesError: the table has image paths and none decodes.
    """
    has = df["image_path"].fillna("").astype(str) != ""
    n_img, n_meta = int(has.sum()), int((~has).sum())
    rows = []
    bar = tqdm(df.loc[has, "image_path"].items(), total=n_img, desc="checking images", leave=False,
               disable=not progress or n_img < _PROGRESS_FROM)
    for i, path in bar:
        reason = image_problem(path)
        if reason:
            rows.append((i, df.at[i, "md5hash"], path, reason))
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    kinds = report["reason"].str.split(":").str[0].value_counts()
    if n_img and len(report) == n_img:
        first = report.iloc[0]
        raise NoUsableImagesError(
            f"{_table_name(df, name)}: none of its {n_img} images is usable "
            f"(corrupt: {kinds.get('corrupt', 0)}, missing: {kinds.get('missing', 0)}); "
            f"first: {first['path']} ({first['reason']})")
    if len(report):
        meta = f"; {n_meta} metadata-only row(s) kept" if n_meta else ""
        print(f"{_table_name(df, name)}: {len(report)} of {n_img} images unreadable "
              f"(corrupt: {kinds.get('corrupt', 0)}, missing: {kinds.get('missing', 0)}), "
              f"skipped; see report{meta}")
    usable = df.drop(index=report["row"]).reset_index(drop=True)
    return usable, report


# --- loading ----------------------------------------------------------------------------------


def load_image(path: str | Path, size: int) -> np.ndarray:
    """One image as RGB ``(size, size, 3)`` uint8 in [0, 255].

    EXIF orientation is applied (phone photos), then the largest centred square is cropped — the
    lesion is centred in dermatology photos, and cropping keeps the aspect rather than squashing
    it — and resized with PIL's antialiased bicubic filter. JPEGs are first decoded in draft mode
    at the smallest DCT scale still ≥ ``size`` on both sides (a large speed-up for big photos).
    """
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.array(im, dtype=np.uint8)  # a writable copy (asarray of a PIL image is read-only)


# --- the Dataset ------------------------------------------------------------------------------


class LesionDataset(torch.utils.data.Dataset):
    """A schema table as training items.

    Item (a dict): ``image`` (3, S, S) float32 in [-1, 1]; ``fst`` int (1..6, -1 unknown or only a
    range, e.g. DDI); ``lesion`` int index into ``schema.LESIONS``; ``melanoma`` 0/1; ``idx`` the
    row of the (index-reset) table.

    Args:
        df: a schema table (``image_path``, ``fitzpatrick_scale``, ``lesion``); every row needs an
            image file (run :func:`check_images` first).
        image_size: S, the square side in pixels.
        transform: optional callable on the (3, S, S) tensor after the built-in augmentation; it
            must keep the [-1, 1] range.
        augment: random horizontal/vertical flips, 90° rotations and a mild centred zoom (≤ 10%)
            (:func:`bmglib.augment.flip_rot90_zoom`).
            No brightness, contrast or colour jitter, on purpose: they move the skin's ITA and so
            silently corrupt the FST label the model is conditioned on and evaluated by.
        cache: keep decoded (S, S, 3) uint8 images in memory — worth it for small images read many
            times per epoch (S=64: 12 kB each); each DataLoader worker keeps its own cache.
    Randomness comes from torch's global generator, which DataLoader seeds per worker (a numpy
    generator copied into workers would repeat the same augmentations in every worker).
    """

    def __init__(self, df: pd.DataFrame, image_size: int, transform=None, augment: bool = False,
                 cache: bool = False):
        self.df = df.reset_index(drop=True)
        schema.require_columns(self.df, ("image_path", "fitzpatrick_scale", "lesion"), "LesionDataset")
        empty = self.df["image_path"].fillna("").astype(str) == ""
        if empty.any():
            raise ValueError(f"LesionDataset needs an image file for every row; {int(empty.sum())} "
                             f"row(s) are metadata only (e.g. row {int(self.df.index[empty][0])})")
        self.size, self.transform, self.augment, self.cache = image_size, transform, augment, cache
        self._paths = self.df["image_path"].astype(str).tolist()
        self._fst = self.df["fitzpatrick_scale"].astype(int).tolist()
        self._lesion = [LESION_INDEX[x] for x in self.df["lesion"]]
        self._mem: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.df)

    def _pixels(self, i: int) -> np.ndarray:
        img = self._mem.get(i)
        if img is None:
            img = load_image(self._paths[i], self.size)
            if self.cache:
                self._mem[i] = img
        return img

    def __getitem__(self, i: int) -> dict:
        # .float() makes a new tensor, so a cached array is never modified in place
        x = torch.from_numpy(self._pixels(i)).permute(2, 0, 1).float().div(127.5).sub(1.0)
        if self.augment:
            x = flip_rot90_zoom(x)
        if self.transform is not None:
            x = self.transform(x)
        lesion = self._lesion[i]
        return {"image": x, "fst": self._fst[i], "lesion": lesion,
                "melanoma": int(lesion == LESION_INDEX["melanoma"]), "idx": i}


def load_tensor(df: pd.DataFrame, size: int, progress: bool = True) -> torch.Tensor:
    """Images of a table as (N, 3, size, size) float32 in [-1, 1]."""
    arr = np.stack([load_image(p, size) for p in tqdm(df["image_path"], desc="loading images",
                                                      disable=not progress, leave=False)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
