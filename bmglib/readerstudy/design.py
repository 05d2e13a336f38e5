"""Designing a blinded reader study: which images, copied how, shown in which order.

    pool = collect_pool("quick", ["bmg", "standard"])           # real test images + sample sets
    study = create_study(paths.reader_study_dir("pilot"), pool, DesignConfig(n_per_cell=4))

The design is balanced: ``n_per_cell`` images for every source (``real`` and each variant) ×
FST × lesion cell, drawn with a seed. Nothing about an image reaches the reader except its
pixels:

* each image is copied under an opaque random id (``images/<id>.png``), never its file name;
* it is decoded and re-encoded from its RGB pixels, so no PNG text/EXIF/ICC chunk survives
  (only IHDR, IDAT and IEND are written);
* every image is centre-cropped to a square, brought to the smallest native side in the study
  (area averaging; so no source is sharper by resolution alone) and enlarged to one display size
  with a stated filter; stored uncompressed, so every file has the same byte size (the size of a
  compressed file would tell a smooth image from a noisy one);
* every reader gets an order of their own, drawn from the study seed and their reader number.

A study folder holds ``study.json`` (design, reader-facing description, provenance),
``key.csv`` (the unblinding key: id → source, FST, lesion, original file; never served),
``images/``, and, once served, ``answers.sqlite`` and ``tokens.json`` (:mod:`.store`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bmglib import paths
from bmglib.data import schema

REAL = "real"  #: the source name of the real control images
FILTER_NAMES = {"nearest": "nearest-neighbour", "bilinear": "bilinear", "bicubic": "bicubic",
                "lanczos": "Lanczos"}
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
POOL_COLUMNS = ("source", "fitzpatrick_scale", "lesion", "image_path")
STUDY_FORMAT = 1
#: the lesion choices a reader may give (schema.LESIONS, readable) and the FST choices
LESION_CHOICES = {"melanoma": "Melanoma", "nevus": "Nevus", "seborrheic_keratosis": "Seborrheic keratosis",
                  "other": "Other"}


@dataclass(frozen=True)
class DesignConfig:
    """How a study is drawn and displayed."""

    n_per_cell: int = 4  # images per source × FST × lesion cell (2 variants + real: 72 cells → 288)
    seed: int = 0
    display_size: int = 384  # pixels, square: every image is shown at this size
    upscale: str = "lanczos"  # filter that enlarges to the display size: nearest | bilinear | bicubic | lanczos
    common_native: bool = True  # first bring every image to the smallest native side in the study
    on_short: str = "error"  # a cell with fewer than n_per_cell images: error | take_all
    title: str = "Skin-lesion image realism"

    def __post_init__(self):
        if self.n_per_cell < 1:
            raise ValueError(f"n_per_cell must be >= 1, got {self.n_per_cell}")
        if self.upscale not in FILTERS:
            raise ValueError(f"upscale must be one of {list(FILTERS)}, got {self.upscale!r}")
        if self.on_short not in ("error", "take_all"):
            raise ValueError(f"on_short must be 'error' or 'take_all', got {self.on_short!r}")
        if not 64 <= self.display_size <= 1024:
            raise ValueError(f"display_size must be in 64..1024, got {self.display_size}")


@dataclass
class Study:
    """A created study: its folder, ``study.json`` as a dict and the unblinding key."""

    dir: Path
    meta: dict
    key: pd.DataFrame  # one row per image: image_id, source, is_synthetic, fitzpatrick_scale, ...

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def image_ids(self) -> list[str]:
        return self.key["image_id"].tolist()

    def image_path(self, image_id: str) -> Path:
        """The shown file of a known id (built from the key, never from a request)."""
        return self.dir / "images" / f"{image_id}.png"


# --- the pool of candidate images ---------------------------------------------------------------


def read_sample_set(variant: str, out_dir: str | Path) -> pd.DataFrame:
    """A sample set (``manifest.csv`` + images, :func:`bmglib.paths.samples_dir`) as pool rows.

    The design FST of a synthetic image is ``plan_fst``, the cell it was drawn for (for a variant
    without FST conditioning, what a user asking for that FST gets), else ``fitzpatrick_scale``."""
    out_dir = Path(out_dir).resolve()
    path = out_dir / "manifest.csv"
    if variant == REAL:
        raise ValueError(f"{REAL!r} is the name of the real control images; a variant cannot be called that")
    if not path.exists():
        raise FileNotFoundError(f"variant {variant!r}: no sample set at {path}; run "
                                f"notebooks/03_balanced_sampling.ipynb with VARIANT={variant!r} first")
    df = pd.read_csv(path)
    schema.require_columns(df, ("image_path", "lesion", "fitzpatrick_scale"), f"variant {variant!r}: {path}")
    fst = df["plan_fst"] if "plan_fst" in df.columns else df["fitzpatrick_scale"]
    out = pd.DataFrame({"source": variant, "fitzpatrick_scale": fst.astype(int), "lesion": df["lesion"],
                        "image_path": [str(out_dir / p) for p in df["image_path"]],
                        "origin": str(path)})
    for col in ("md5hash", "requested_fst", "estimated_fst"):
        if col in df.columns:
            out[col] = df[col].to_numpy()
    return out


def real_pool(meta: pd.DataFrame, origin: str) -> pd.DataFrame:
    """The real control: the test split of a prepared table (schema + ``split``), known FST only."""
    schema.require_columns(meta, ("split", "image_path", "lesion", "fitzpatrick_scale"), origin)
    test = meta[(meta["split"] == "test") & meta["fitzpatrick_scale"].isin(schema.FST_LEVELS)
                & (meta["image_path"].astype(str) != "")]
    if test.empty:
        raise ValueError(f"{origin}: no test image with a known FST and an image file")
    return pd.DataFrame({"source": REAL, "fitzpatrick_scale": test["fitzpatrick_scale"].astype(int),
                         "lesion": test["lesion"], "image_path": test["image_path"].astype(str),
                         "origin": origin, "md5hash": test["md5hash"]}).reset_index(drop=True)


def collect_pool(profile: str, variants, purpose: str = "eval", dataset: str = "synthetic",
                 real: bool = True) -> pd.DataFrame:
    """Every candidate image: the real test split of ``dataset`` (notebook 01) and the sample
    sets of ``variants`` (notebook 03, ``purpose`` ``eval`` = balanced per cell). A missing
    table raises an error naming the file and the notebook that writes it."""
    parts, missing = [], []
    if real:
        from bmglib.data import prepare

        origin = str(paths.processed_dir(profile, dataset) / "metadata.csv")
        try:
            parts.append(real_pool(prepare.load_prepared(profile, dataset), origin))
        except FileNotFoundError as err:
            missing.append(f"real control: {err}")
    for v in variants:
        try:
            parts.append(read_sample_set(v, paths.samples_dir(profile, v, purpose)))
        except FileNotFoundError as err:
            missing.append(str(err))
    if missing:  # every missing table at once, not one per attempt
        raise FileNotFoundError("cannot draw the study:\n  " + "\n  ".join(missing))
    if not parts:
        raise ValueError("nothing to draw from: no variant and real=False")
    return pd.concat(parts, ignore_index=True)


# --- drawing the design -------------------------------------------------------------------------


def _cell_rng(seed: int, source: str, fst: int, lesion: str) -> np.random.Generator:
    """One generator per cell, independent of the pool's row order and of the other cells."""
    return np.random.default_rng([seed, zlib.crc32(source.encode()), fst, zlib.crc32(lesion.encode())])


def draw_design(pool: pd.DataFrame, cfg: DesignConfig) -> pd.DataFrame:
    """``n_per_cell`` pool rows per source × FST × lesion cell (sources in pool order, real first).

    A cell with fewer images raises (``on_short="error"``, every short cell named) or is taken
    whole (``"take_all"``; the study's ``short_cells`` lists it)."""
    schema.require_columns(pool, POOL_COLUMNS, "reader-study pool")
    sources = list(dict.fromkeys(pool["source"]))
    sources = [REAL] * (REAL in sources) + [s for s in sources if s != REAL]
    picked, short = [], []
    cells = dict(list(pool.groupby(["source", "fitzpatrick_scale", "lesion"], sort=False)))
    empty = pool.iloc[:0]
    for source in sources:
        for fst in schema.FST_LEVELS:
            for lesion in schema.LESIONS:
                cell = cells.get((source, fst, lesion), empty).sort_values("image_path")
                n = min(cfg.n_per_cell, len(cell))
                if n < cfg.n_per_cell:
                    short.append({"source": source, "fst": fst, "lesion": lesion, "available": len(cell)})
                idx = _cell_rng(cfg.seed, source, fst, lesion).choice(len(cell), size=n, replace=False)
                picked.append(cell.iloc[np.sort(idx)])
    if short and cfg.on_short == "error":
        lines = "; ".join(f"{s['source']} FST {schema.FST_ROMAN[s['fst']]} {s['lesion']}: {s['available']}"
                          for s in short[:12])
        more = f" (+{len(short) - 12} more)" if len(short) > 12 else ""
        raise ValueError(f"{len(short)} cell(s) hold fewer than n_per_cell={cfg.n_per_cell} images: "
                         f"{lines}{more}. Lower n_per_cell, draw more samples, or pass on_short='take_all'")
    design = pd.concat(picked, ignore_index=True)
    design.attrs["short_cells"] = short
    return design


def native_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def display_image(path: str | Path, native: int | None, cfg: DesignConfig) -> Image.Image:
    """The image as shown: RGB pixels only, centre square, ``native`` px (area averaging, when
    given and smaller), then ``cfg.display_size`` px with ``cfg.upscale``. A new image built from
    the pixel array, so none of the source file's metadata is carried over."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(np.ascontiguousarray(rgb[top:top + s, left:left + s]))
    if native is not None and native < s:
        img = img.resize((native, native), Image.Resampling.BOX)
    if img.size[0] != cfg.display_size:
        img = img.resize((cfg.display_size, cfg.display_size), FILTERS[cfg.upscale])
    return img


def encode_png(img: Image.Image) -> bytes:
    """The image as a PNG of exactly three chunks, IHDR, IDAT and IEND (no text, EXIF, ICC, gamma
    or time chunk), its pixel rows stored uncompressed: the byte size depends on the pixel size
    alone."""
    a = np.asarray(img.convert("RGB"), dtype=np.uint8)
    h, w, _ = a.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, w * 3)], axis=1)  # filter 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)) + chunk(b"IEND", b""))


def _opaque_ids(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 0x1D5])
    ids: list[str] = []
    while len(ids) < n:
        candidate = rng.bytes(8).hex()
        if candidate not in ids:
            ids.append(candidate)
    return ids


def reader_description(meta: dict) -> str:
    """What a reader is told about the images (nothing that differs between sources)."""
    d = meta["display"]
    native = (f"brought to a common native resolution of {d['native']}×{d['native']} px (area "
              f"averaging) and " if d["native"] else "")
    return (f"You will see {meta['n_images']} skin-lesion images, one at a time, in an order drawn for "
            f"you. Some are photographs of real lesions, some were generated by a computer model. "
            f"Every image was cropped to a square, {native}enlarged to {d['size']}×{d['size']} px "
            f"with {FILTER_NAMES[d['filter']]} filtering, so its size and sharpness are the same for real and "
            f"generated images. Your answers are saved as you give them: you can close the page "
            f"and come back to your link at any time.")


def create_study(study_dir: str | Path, pool: pd.DataFrame, cfg: DesignConfig = DesignConfig(),
                 *, force: bool = False, notes: list[str] | None = None) -> Study:
    """Draw the design from ``pool`` (:func:`collect_pool`) and write the study folder.

    An existing study is never overwritten (its answers would be lost) unless ``force``."""
    from bmglib import config

    study_dir = Path(study_dir)
    if (study_dir / "study.json").exists() and not force:
        raise FileExistsError(f"{study_dir} already holds a study; serve it, or delete the folder "
                              "(its answers too) to draw a new one")
    if force and study_dir.exists():
        shutil.rmtree(study_dir)
    design = draw_design(pool, cfg)
    sizes = [native_size(p) for p in design["image_path"]]
    native = min(min(s) for s in sizes) if cfg.common_native else None
    design = design.assign(image_id=_opaque_ids(len(design), cfg.seed),
                           native_width=[s[0] for s in sizes], native_height=[s[1] for s in sizes])
    (study_dir / "images").mkdir(parents=True)
    for row in design.sort_values("image_id").itertuples():  # written in id order, not source order
        png = encode_png(display_image(row.image_path, native, cfg))
        (study_dir / "images" / f"{row.image_id}.png").write_bytes(png)
    key = design.rename(columns={"image_path": "original_path"}).assign(
        is_synthetic=design["source"] != REAL,
        fst_group=[schema.fst_group(f) for f in design["fitzpatrick_scale"]])
    first = ["image_id", "source", "is_synthetic", "fitzpatrick_scale", "fst_group", "lesion",
             "native_width", "native_height", "original_path"]
    key = key[first + [c for c in key.columns if c not in first]].sort_values("image_id")
    key.to_csv(study_dir / "key.csv", index=False)
    sources = {s: {"n_images": int(len(g)), "origin": g["origin"].iloc[0] if "origin" in g else "",
                   "native_sizes": sorted({f"{w}x{h}" for w, h in zip(g["native_width"], g["native_height"],
                                                                      strict=True)})}
               for s, g in design.groupby("source", sort=False)}  # design order: real first
    meta = {"format": STUDY_FORMAT, "name": study_dir.name, "title": cfg.title, "design": asdict(cfg),
            "n_images": int(len(key)), "sources": sources,
            "display": {"size": cfg.display_size, "filter": cfg.upscale, "native": native,
                        "crop": "centre square", "encoding": "PNG, RGB, uncompressed, no ancillary chunks"},
            "short_cells": design.attrs["short_cells"], "notes": list(notes or []),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": config.git_commit()}
    meta["description"] = reader_description(meta)
    (study_dir / "study.json").write_text(json.dumps(meta, indent=2))
    return Study(study_dir, meta, key.reset_index(drop=True))


def load_study(study_dir: str | Path) -> Study:
    """A study written by :func:`create_study`; a clear error when the folder holds none."""
    study_dir = Path(study_dir)
    path = study_dir / "study.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: create the study first "
                                f"(python -m bmglib.readerstudy create {study_dir.name} ...)")
    meta = json.loads(path.read_text())
    if meta.get("format") != STUDY_FORMAT:
        raise ValueError(f"{path}: study format {meta.get('format')!r}, this code reads {STUDY_FORMAT}")
    key = pd.read_csv(study_dir / "key.csv", dtype={"image_id": str})
    return Study(study_dir, meta, key)


def reader_order(study: Study, reader_number: int) -> list[str]:
    """The order reader ``reader_number`` (1, 2, ...) sees the images in: a permutation drawn
    from the study seed and the number, so each reader's differs and is reproducible."""
    ids = sorted(study.image_ids)
    perm = np.random.default_rng([study.meta["design"]["seed"], 0x0D3, reader_number]).permutation(len(ids))
    return [ids[i] for i in perm]


def design_table(study: Study) -> pd.DataFrame:
    """Images per source × FST group × lesion (the balance a reader study promises)."""
    t = pd.crosstab([study.key["source"], study.key["fst_group"]], study.key["lesion"])
    order = [s for s in study.meta["sources"] if s in t.index.get_level_values(0)]
    t = t.reindex(index=order, level=0).reindex(columns=[c for c in schema.LESIONS if c in t.columns])
    t["total"] = t.sum(axis=1)
    return t
