"""The torch Dataset over a schema table: images in [-1, 1] with FST and lesion labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bmglib.data import images, schema

LESION_INDEX = {name: i for i, name in enumerate(schema.LESIONS)}


class LesionDataset(Dataset):
    """Items: ``image`` (3, S, S) float32 in [-1, 1], ``fst`` int (1..6, -1 unknown), ``lesion``
    int (index into ``schema.LESIONS``), ``melanoma`` 0/1, ``idx`` the row.

    ``augment`` applies flips, 90° rotations and a mild zoom (≤ 10%) only: brightness or colour
    jitter would move the skin's ITA and so corrupt the FST label. ``cache`` keeps decoded images
    in memory (small images are read many times per epoch).
    """

    def __init__(self, df: pd.DataFrame, size: int, augment: bool = False, cache: bool = True,
                 seed: int = 0):
        self.df = df.reset_index(drop=True)
        self.size, self.augment, self.cache = size, augment, cache
        self._mem: dict[int, np.ndarray] = {}
        self._rng = np.random.default_rng(seed)
        if (self.df["image_path"] == "").any():
            raise ValueError("LesionDataset needs an image file for every row (metadata-only rows found)")

    def __len__(self) -> int:
        return len(self.df)

    def _image(self, i: int) -> np.ndarray:
        if i in self._mem:
            return self._mem[i]
        img = images.load_image(self.df.at[i, "image_path"], self.size)
        if self.cache:
            self._mem[i] = img
        return img

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        r = self._rng
        if r.random() < 0.5:
            x = x.flip(2)
        if r.random() < 0.5:
            x = x.flip(1)
        x = torch.rot90(x, int(r.integers(4)), dims=(1, 2))
        zoom = r.uniform(1.0, 1.1)
        if zoom > 1.01:  # crop the centre and scale back: lesions stay centred, skin stays skin
            c = int(round(self.size / zoom))
            o = (self.size - c) // 2
            x = torch.nn.functional.interpolate(x[None, :, o:o + c, o:o + c], size=self.size,
                                                mode="bilinear", align_corners=False)[0]
        return x

    def __getitem__(self, i: int) -> dict:
        x = torch.tensor(self._image(i)).permute(2, 0, 1).float().div(127.5).sub(1.0)  # a copy: cached arrays stay intact
        if self.augment:
            x = self._augment(x)
        row = self.df.iloc[i]
        return {"image": x, "fst": int(row["fitzpatrick_scale"]), "lesion": LESION_INDEX[row["lesion"]],
                "melanoma": int(row["lesion"] == "melanoma"), "idx": i}
