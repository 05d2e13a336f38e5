"""The embedded dermatology dataset: procedurally generated skin lesions, seeded and byte-exact.

Each image is a function of ``(seed, stream, index, fst, lesion, size)`` alone, so any image (and
its lesion/artefact masks) can be re-rendered without the others. What it models (DESIGN.md):

* **skin** — a CIELab colour whose ITA lies inside the requested FST's ITA interval
  (``skintone.ITA_RANGES``, 15% margins), with low-frequency texture, pores and mild shading;
* **lesions** — dermoscopic cues: melanoma asymmetric with an irregular border and 3–4 colours
  (incl. blue-grey/black, regression white, red); nevus round, uniform brown, regular border;
  seborrheic keratosis oval, sharp "stuck-on" border, waxy texture with milia- and comedo-like
  dots; other = an inflammatory plaque (erythema with scale, soft border);
* **the real difficulty** — pigment contrast and colour cues fall on darker skin (``CONTRAST_L``,
  ``CONTRAST_COLOUR``): erythema turns violaceous-brown and blue-grey veils fade, as in real
  darker skin; skin texture noise stays constant, so the signal-to-noise ratio falls too;
* **artefacts** — hair, ruler, ink marks and adhesive patches, flagged in the metadata and
  returned as masks (the artefact-detection audit uses them).

Cell counts follow the real Fitzpatrick17k FST × lesion table (``FITZPATRICK17K_CELLS``, derived
with ``schema.lesion_type``; a test recomputes it from the real CSV), scaled to N with a floor.

CLI::

    python -m bmglib.data.synthetic --out DIR --n N --size S --seed K [--counts fitzpatrick17k|balanced]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from bmglib.data import schema
from bmglib.skintone import ITA_RANGES, lab_to_rgb_np

#: Fitzpatrick17k image counts per FST (rows 1..6) × lesion (columns ``schema.LESIONS``),
#: from the real CSV through ``schema.lesion_type`` (tests/test_synthetic.py recomputes it).
FITZPATRICK17K_CELLS = pd.DataFrame(
    {
        "melanoma": [133, 198, 108, 60, 32, 15],
        "nevus": [68, 60, 48, 33, 18, 6],
        "seborrheic_keratosis": [15, 31, 8, 5, 5, 4],
        "other": [2731, 4519, 3144, 2683, 1478, 610],
    },
    index=pd.Index(schema.FST_LEVELS, name="fitzpatrick_scale"),
)

#: How much of the pigment darkening survives on each FST (melanin masks the lesion) ...
CONTRAST_L = {1: 1.0, 2: 0.95, 3: 0.85, 4: 0.72, 5: 0.6, 6: 0.5}
#: ... and how much of the colour cues (blue-grey, red, variegation).
CONTRAST_COLOUR = {1: 1.0, 2: 0.9, 3: 0.72, 4: 0.5, 5: 0.35, 6: 0.25}

# Labels written to metadata, in Fitzpatrick17k vocabulary so the one mapping applies.
LESION_LABELS = {
    "melanoma": ("melanoma", "malignant melanoma", "malignant"),
    "nevus": ("nevocytic nevus", "benign melanocyte", "benign"),
    "seborrheic_keratosis": ("seborrheic keratosis", "benign epidermal", "benign"),
    "other": ("inflammatory plaque", "inflammatory", "non-neoplastic"),
}

# Melanoma palette: (pigment depth as a share of L* − 8, Δa*, Δb*) on FST I skin.
PALETTE = {
    "light_brown": (0.30, 4.0, 9.0),
    "dark_brown": (0.55, 3.0, 6.0),
    "black": (0.80, 0.0, -2.0),
    "blue_grey": (0.45, -4.0, -16.0),
    "red": (0.08, 18.0, 4.0),
    "white": (-0.12, -4.0, -6.0),
}
ARTEFACT_RATES = {"hair": 0.25, "ruler": 0.10, "ink": 0.10, "patch": 0.06}
STREAMS = {"pool": 0, "test": 1}


@dataclass
class LesionSample:
    """One rendered image. ``image``: (S, S, 3) uint8 RGB; masks: (S, S) bool."""

    image: np.ndarray
    lesion_mask: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # hair / ruler / ink / patch
    meta: dict = field(default_factory=dict)

    @property
    def artefact_mask(self) -> np.ndarray:
        """Pixels covered by a ruler, ink or patch (not hair)."""
        out = np.zeros_like(self.lesion_mask)
        for k in ("ruler", "ink", "patch"):
            if k in self.masks:
                out |= self.masks[k]
        return out


# --- small numeric helpers (cached per size) --------------------------------------------------


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="xy")


@lru_cache(maxsize=64)
def _interp(size: int, cells: int) -> np.ndarray:
    """(size, cells) linear-interpolation matrix: a cells×cells grid → size×size image."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    m = np.zeros((size, cells))
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise with about unit standard deviation, features ~ size/cells pixels wide."""
    m = _interp(size, cells)
    f = m @ rng.standard_normal((cells, cells)) @ m.T
    return f / (f.std() + 1e-8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _segment_distance(xx, yy, pts: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a polyline ``pts`` (K, 2) in grid units."""
    p, q = pts[:-1, :, None, None], pts[1:, :, None, None]
    d = q - p
    t = ((xx - p[:, 0]) * d[:, 0] + (yy - p[:, 1]) * d[:, 1]) / ((d**2).sum(1) + 1e-12)
    t = np.clip(t, 0, 1)
    dx = xx - (p[:, 0] + t * d[:, 0])
    dy = yy - (p[:, 1] + t * d[:, 1])
    return np.sqrt(dx**2 + dy**2).min(0)


# --- skin -------------------------------------------------------------------------------------


def skin_colour(fst: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(L*, a*, b*, ITA) of healthy skin for an FST: ITA uniform inside its interval (15% margins)."""
    lo, hi = ITA_RANGES[fst]
    m = 0.15 * (hi - lo)
    ita = rng.uniform(lo + m, hi - m)
    b = rng.uniform(12.0, 18.0) + (1.5 if fst >= 4 else 0.0)
    L = 50 + b * np.tan(np.radians(ita))
    a = rng.uniform(6.0, 13.0)
    return float(L), float(a), float(b), float(ita)


def _render_skin(fst, size, rng):
    L0, a0, b0, ita = skin_colour(fst, rng)
    xx, yy = _grid(size)
    tex = 1.6 * _noise(rng, size, 5) + 0.8 * _noise(rng, size, max(6, size // 6))
    pores = 0.7 * rng.standard_normal((size, size))
    gx, gy = rng.uniform(-1, 1, 2)
    shade = 1.5 * (gx * xx + gy * yy) - 2.0 * (xx**2 + yy**2) + 1.0  # zero-mean-ish over the image
    lab = np.empty((size, size, 3))
    lab[..., 0] = L0 + tex + pores + shade
    lab[..., 1] = a0 + 0.8 * _noise(rng, size, 4)
    lab[..., 2] = b0 + 0.6 * _noise(rng, size, 4)
    return lab, (L0, a0, b0, ita)


# --- lesions ----------------------------------------------------------------------------------

SHAPES = {
    # radius range, low-order amplitude (asymmetry), high-order amplitude (border), edge softness
    "melanoma": ((0.30, 0.50), 0.22, 0.04, 0.035),
    "nevus": ((0.18, 0.32), 0.05, 0.0, 0.03),
    "seborrheic_keratosis": ((0.22, 0.38), 0.12, 0.015, 0.012),
    "other": ((0.32, 0.58), 0.25, 0.05, 0.09),
}


def _shape_mask(lesion, size, rng):
    """Soft lesion mask (S, S) in [0, 1] from a polar boundary r(θ) = R(1 + Σ a_k cos(kθ + φ_k))."""
    (rlo, rhi), a_low, a_high, edge = SHAPES[lesion]
    xx, yy = _grid(size)
    cx, cy = rng.normal(0, 0.07, 2)
    R = rng.uniform(rlo, rhi)
    theta = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(xx - cx, yy - cy)
    r = np.ones_like(theta)
    for k in (1, 2, 3):
        r += a_low * rng.uniform(0.3, 1.0) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if lesion == "seborrheic_keratosis":  # oval, not round
        phi = rng.uniform(0, np.pi)
        r *= 1 + 0.25 * np.cos(2 * (theta - phi))
    if a_high > 0:
        for k in range(5, 13):
            r += a_high * rng.uniform(0.2, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge_px = max(edge, 1.5 / size)
    return _sigmoid((R * r - rho) / edge_px), (cx, cy, R)


def _pigment(skin_L, depth, da, db, fst):
    """Lab deviation of a pigment on this skin: darkening ∝ (L* − 8), scaled by contrast."""
    kL, kc = CONTRAST_L[fst], CONTRAST_COLOUR[fst]
    return -depth * (skin_L - 8.0) * kL, da * kc, db * kc


def _lesion_colour(lesion, fst, skin, size, rng, geom):
    """Lab image (S, S, 3) of the lesion's own colour (blended into skin by the mask)."""
    L0, _, _, _ = skin
    xx, yy = _grid(size)
    cx, cy, R = geom
    dev = np.zeros((size, size, 3))
    if lesion == "melanoma":
        extra = list(rng.choice(["black", "blue_grey", "light_brown", "red", "white"],
                                size=int(rng.integers(2, 4)), replace=False))
        colours = ["dark_brown", *extra]
        zones = _noise(rng, size, 4) + 0.8 * _noise(rng, size, 7)
        qs = np.quantile(zones, np.linspace(0, 1, len(colours) + 1)[1:-1])
        # soft zone memberships (telescoping sigmoids): blotches that blend at their edges
        up = np.concatenate([np.ones((1, size, size)),
                             _sigmoid((zones[None] - qs[:, None, None]) / 0.12), np.zeros((1, size, size))])
        for i, name in enumerate(colours):
            dev += (up[i] - up[i + 1])[..., None] * np.asarray(_pigment(L0, *PALETTE[name], fst))
        # an eccentric dark blotch: asymmetry of colour as well as of shape
        bx, by = cx + rng.normal(0, 0.5 * R), cy + rng.normal(0, 0.5 * R)
        blot = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * (0.35 * R) ** 2))
        dev[..., 0] += blot * _pigment(L0, 0.25, 0, 0, fst)[0]
    elif lesion == "nevus":
        depth = rng.uniform(0.30, 0.48)
        dL, da, db = _pigment(L0, depth, 3.0, 7.0, fst)
        rad = np.hypot(xx - cx, yy - cy) / max(R, 1e-3)
        centre = 1.0 + 0.15 * np.clip(1 - rad, 0, 1)  # slightly darker centre
        freq = rng.uniform(9, 14) * np.pi
        net = 0.06 * np.cos(freq * xx) * np.cos(freq * yy)  # faint regular network
        dev[..., 0] = dL * (centre + net)
        dev[..., 1], dev[..., 2] = da, db
    elif lesion == "seborrheic_keratosis":
        depth = rng.uniform(0.18, 0.42)
        dL, da, db = _pigment(L0, depth, 2.0, 10.0, fst)
        waxy = _noise(rng, size, max(8, size // 5))
        dev[..., 0] = dL + 3.0 * waxy * CONTRAST_L[fst]
        dev[..., 1], dev[..., 2] = da, db
        for sign, n in ((+1, int(rng.integers(2, 7))), (-1, int(rng.integers(2, 6)))):
            for _ in range(n):  # milia-like cysts (bright) and comedo-like openings (dark)
                px, py = cx + rng.uniform(-R, R) * 0.8, cy + rng.uniform(-R, R) * 0.8
                dot = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * max(0.025, 1.2 / size) ** 2))
                dev[..., 0] += sign * dot * (12.0 if sign > 0 else 0.4 * (L0 - 8)) * CONTRAST_L[fst]
    else:  # inflammatory plaque: erythema on light skin, violaceous-brown on dark skin
        kc = CONTRAST_COLOUR[fst]
        red = rng.uniform(12, 22)
        dev[..., 0] = -(0.06 + 0.30 * (1 - kc)) * (L0 - 8) * rng.uniform(0.7, 1.1)
        dev[..., 1] = red * (0.35 + 0.65 * kc)
        dev[..., 2] = -2.0 - 4.0 * (1 - kc)
        if rng.random() < 0.6:  # scale
            flakes = _noise(rng, size, max(8, size // 4)) > 1.2
            dev[..., 0] += 9.0 * flakes
    return dev


# --- hair and artefacts -----------------------------------------------------------------------


def _hair(size, rng):
    xx, yy = _grid(size)
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 9))):
        p0 = rng.uniform(-1.1, 1.1, 2)
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 1.6)
        bend = rng.normal(0, 0.25)
        s = np.linspace(0, 1, 6)[:, None]
        direction = np.array([np.cos(ang), np.sin(ang)])
        normal = np.array([-direction[1], direction[0]])
        pts = p0 + s * length * direction + (bend * s * (1 - s) * 4) * normal * 0.3  # (6, 2)
        mask |= _segment_distance(xx, yy, pts) < max(0.012, 1.0 / size)  # ≥ 2 px wide: no dotted hair
    return mask


def _ruler(size, rng):
    xx, yy = _grid(size)
    side = int(rng.integers(4))
    u, v = [(xx, yy), (xx, -yy), (yy, xx), (yy, -xx)][side]  # v → 1 at the chosen edge
    width = rng.uniform(0.14, 0.2)
    band = v > 1 - width
    pitch = rng.uniform(0.07, 0.1)
    tick_len = np.where((np.floor((u + 1) / pitch) % 5) == 0, 0.75, 0.4) * width
    ticks = band & (np.abs(((u + 1) % pitch) - pitch / 2) < max(0.008, 0.6 / size)) & (
        v > 1 - tick_len)
    return band, ticks


def _ink(size, rng, geom):
    xx, yy = _grid(size)
    cx, cy, R = geom
    if rng.random() < 0.5:  # a marker circle around the lesion, with gaps
        rad = R * rng.uniform(1.35, 1.7)
        ring = np.abs(np.hypot(xx - cx, yy - cy) - rad) < max(0.02, 1.0 / size)
        theta = np.arctan2(yy - cy, xx - cx)
        return ring & (np.cos(rng.integers(3, 7) * theta + rng.uniform(0, 6)) > -0.4)
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 5))):
        px, py = rng.uniform(-0.9, 0.9, 2)
        mask |= np.hypot(xx - px, yy - py) < rng.uniform(0.03, 0.06) + 1.0 / size
    return mask


def _patch(size, rng):
    xx, yy = _grid(size)
    corner = rng.choice([-1, 1], 2) * rng.uniform(0.6, 0.8, 2)
    return np.hypot(xx - corner[0], yy - corner[1]) < rng.uniform(0.13, 0.2)


PATCH_COLOURS = [(70.0, 20.0, 60.0), (65.0, -35.0, 25.0), (88.0, 2.0, 12.0), (55.0, 5.0, -40.0)]


def _apply_artefacts(lab, size, rng, geom, force=None):
    """Draw hair/ruler/ink/patch onto ``lab`` in place; return their masks and flags."""
    force = force or {}
    masks = {}
    if force.get("hair", rng.random() < ARTEFACT_RATES["hair"]):
        masks["hair"] = _hair(size, rng)
        lab[masks["hair"]] = (rng.uniform(12, 24), 2.0, 4.0)
    if force.get("ruler", rng.random() < ARTEFACT_RATES["ruler"]):
        band, ticks = _ruler(size, rng)
        lab[band] = (86.0, 0.0, 4.0)
        lab[ticks] = (15.0, 0.0, 0.0)
        masks["ruler"] = band
    if force.get("ink", rng.random() < ARTEFACT_RATES["ink"]):
        masks["ink"] = _ink(size, rng, geom)
        lab[masks["ink"]] = (38.0, 28.0, -42.0)
    if force.get("patch", rng.random() < ARTEFACT_RATES["patch"]):
        masks["patch"] = _patch(size, rng)
        lab[masks["patch"]] = PATCH_COLOURS[int(rng.integers(len(PATCH_COLOURS)))]
    return masks


# --- one image --------------------------------------------------------------------------------


def render(fst: int, lesion: str, size: int = 64, rng: np.random.Generator | int = 0,
           artefacts: dict[str, bool] | None = None) -> LesionSample:
    """Render one image of a requested FST (1..6) and lesion (``schema.LESIONS``).

    ``size`` 32..512 pixels; ``rng`` a Generator or an int seed; ``artefacts`` forces flags on or
    off (e.g. ``{"ruler": True}``), else they are drawn at ``ARTEFACT_RATES``.
    """
    if fst not in schema.FST_LEVELS:
        raise ValueError(f"fst must be one of {schema.FST_LEVELS}, got {fst!r}")
    if lesion not in schema.LESIONS:
        raise ValueError(f"lesion must be one of {schema.LESIONS}, got {lesion!r}")
    if not 32 <= size <= 512:
        raise ValueError(f"size must be in 32..512, got {size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    skin_lab, skin = _render_skin(fst, size, rng)
    soft, geom = _shape_mask(lesion, size, rng)
    dev = _lesion_colour(lesion, fst, skin, size, rng, geom)
    lab = skin_lab + soft[..., None] * dev
    masks = _apply_artefacts(lab, size, rng, geom, artefacts)
    meta = {"ita": round(skin[3], 3), **{k: k in masks for k in ARTEFACT_RATES}}
    return LesionSample(lab_to_rgb_np(lab), soft > 0.5, masks, meta)


def image_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of a stream: independent of every other image."""
    return np.random.default_rng([seed, STREAMS[stream], index])


# --- cell counts and whole datasets -----------------------------------------------------------


def plan_counts(n: int, counts: str = "fitzpatrick17k", min_per_cell: int = 4) -> pd.DataFrame:
    """FST × lesion image counts summing to ``n``.

    ``fitzpatrick17k``: the real table's proportions (largest-remainder rounding), every cell at
    least ``min_per_cell`` (the excess is taken from the largest cells); ``balanced``: equal cells.
    """
    if counts == "balanced":
        share = pd.DataFrame(1.0, index=FITZPATRICK17K_CELLS.index, columns=FITZPATRICK17K_CELLS.columns)
    elif counts == "fitzpatrick17k":
        share = FITZPATRICK17K_CELLS.astype(float)
    else:
        raise ValueError(f"counts must be 'fitzpatrick17k' or 'balanced', got {counts!r}")
    if counts == "balanced":
        min_per_cell = 0  # the floor only matters for the skewed table
    if n < min_per_cell * share.size:
        raise ValueError(f"n={n} is below the floor of {min_per_cell} per cell × {share.size} cells")
    exact = share / share.values.sum() * n
    out = np.floor(exact.values).astype(int)
    rem = (exact.values - out).ravel()
    for i in np.argsort(-rem, kind="stable")[: n - out.sum()]:
        out.flat[i] += 1
    out = np.maximum(out, min_per_cell)
    while out.sum() > n:  # pay for the floor from the largest cells
        out.flat[int(np.argmax(out))] -= 1
    return pd.DataFrame(out, index=share.index, columns=share.columns)


def cell_list(table: pd.DataFrame, seed: int) -> list[tuple[int, str]]:
    """Expand a count table to a shuffled list of (fst, lesion), one per image index."""
    cells = [(int(f), str(les)) for f in table.index for les in table.columns
             for _ in range(int(table.loc[f, les]))]
    order = np.random.default_rng([seed, 99]).permutation(len(cells))
    return [cells[i] for i in order]


def _encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _render_row(args) -> dict:
    index, fst, lesion, size, seed, stream, out_dir = args
    sample = render(fst, lesion, size, image_rng(seed, stream, index))
    png = _encode_png(sample.image)
    md5 = hashlib.md5(png).hexdigest()
    rel = f"images/{md5}.png"
    path = Path(out_dir) / rel
    if not path.exists():
        path.write_bytes(png)
    label, nine, three = LESION_LABELS[lesion]
    return {"md5hash": md5, "fitzpatrick_scale": fst, "label": label,
            "three_partition_label": three, "nine_partition_label": nine,
            "image_path": rel, "source": "synthetic", "index": index, "stream": stream,
            "size": size, "seed": seed, **sample.meta}


def generate_dataset(out_dir: str | Path, n: int, size: int = 64, seed: int = 0,
                     counts: str = "fitzpatrick17k", min_per_cell: int = 4, stream: str = "pool",
                     workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Write ``n`` PNGs + ``metadata.csv`` (schema columns, ``image_path`` relative) to ``out_dir``.

    Idempotent: when ``metadata.csv`` exists with the same parameters (``generator.json``) and
    every image is present, nothing is redone. Returns the table via :func:`load_synthetic`.
    """
    out_dir = Path(out_dir)
    params = {"n": n, "size": size, "seed": seed, "counts": counts, "min_per_cell": min_per_cell,
              "stream": stream, "generator_version": GENERATOR_VERSION}
    meta_path, params_path = out_dir / "metadata.csv", out_dir / "generator.json"
    if meta_path.exists() and params_path.exists() and json.loads(params_path.read_text()) == params:
        df = load_synthetic(out_dir)
        if all(Path(p).exists() for p in df["image_path"]):
            return df
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    table = plan_counts(n, counts, min_per_cell)
    jobs = [(i, f, les, size, seed, stream, str(out_dir))
            for i, (f, les) in enumerate(cell_list(table, seed + 1000 * STREAMS[stream]))]
    bar = dict(total=len(jobs), desc=f"generating {stream} ({size}px)", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            rows = list(tqdm(ex.map(_render_row, jobs, chunksize=64), **bar))
    else:
        rows = [_render_row(j) for j in tqdm(jobs, **bar)]
    pd.DataFrame(rows).to_csv(meta_path, index=False)
    params_path.write_text(json.dumps(params, indent=2))
    return load_synthetic(out_dir)


GENERATOR_VERSION = 2  # bump when rendering changes: invalidates generated datasets


def load_synthetic(out_dir: str | Path) -> pd.DataFrame:
    """Read a generated dataset's ``metadata.csv`` as a validated schema table (absolute paths)."""
    out_dir = Path(out_dir).resolve()
    path = out_dir / "metadata.csv"
    df = pd.read_csv(path)
    df["image_path"] = [str(out_dir / p) for p in df["image_path"]]
    return schema.finalize(df, where=str(path))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bmglib.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (PNG images + metadata.csv)")
    ap.add_argument("--n", type=int, required=True, help="number of images")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (32..512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--counts", choices=["fitzpatrick17k", "balanced"], default="fitzpatrick17k")
    ap.add_argument("--min-per-cell", type=int, default=4)
    ap.add_argument("--stream", choices=list(STREAMS), default="pool",
                    help="independent random streams for the pool and the test set")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    df = generate_dataset(a.out, a.n, a.size, a.seed, a.counts, a.min_per_cell, a.stream, a.workers)
    table = pd.crosstab(df["fitzpatrick_scale"], df["lesion"])
    print(f"wrote {len(df)} images to {a.out}\n{table.to_string()}")


if __name__ == "__main__":
    main()
