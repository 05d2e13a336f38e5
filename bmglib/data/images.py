"""Image files: loading at a size, and checking a table's images without losing anything.

A missing or unreadable file is reported (row, path, reason), counted and skipped; it is an error
only when no image of the table is usable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm


def load_image(path: str | Path, size: int) -> np.ndarray:
    """RGB image as (size, size, 3) uint8: centre-cropped to a square, then resized (bicubic)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != size:
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im)


def _problem(path: str) -> str | None:
    p = Path(path)
    if not p.exists():
        return "missing"
    try:
        with Image.open(p) as im:
            im.load()  # decodes every byte: catches truncated files that verify() lets through
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"corrupt ({type(e).__name__}: {e})"[:200]
    return None


def check_images(df: pd.DataFrame, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a table into usable rows and a report of unusable images.

    Rows with an empty ``image_path`` are metadata-only and kept. Returns ``(usable, report)``,
    report columns ``row, md5hash, path, reason``. Raises ``ValueError`` if no image is usable.
    """
    has = df["image_path"].astype(str) != ""
    rows = []
    for i, path in tqdm(df.loc[has, "image_path"].items(), total=int(has.sum()), desc="checking images",
                        disable=not progress or has.sum() < 500, leave=False):
        reason = _problem(path)
        if reason:
            rows.append({"row": i, "md5hash": df.at[i, "md5hash"], "path": path, "reason": reason})
    report = pd.DataFrame(rows, columns=["row", "md5hash", "path", "reason"])
    if has.any() and len(report) == has.sum():
        raise ValueError(f"none of the {int(has.sum())} images is usable (first: "
                         f"{report.iloc[0]['path']}: {report.iloc[0]['reason']})")
    if len(report):
        kinds = report["reason"].str.split(" ").str[0].value_counts().to_dict()
        print(f"{len(report)} of {int(has.sum())} images unusable {kinds}, skipped; see the image report")
    usable = df.drop(index=report["row"]).reset_index(drop=True)
    return usable, report
