"""Skin tone from pixels: CIELab, the Individual Typology Angle (ITA) and ITA → Fitzpatrick type.

ITA = atan2(L* − 50, b*) in degrees, computed on healthy (non-lesion) skin. ITA → FST uses the
thresholds of Kinyanjui et al. 2020 / Groh et al. 2021:

    ITA > 55 → I · 41–55 → II · 28–41 → III · 19–28 → IV · 10–19 → V · ≤ 10 → VI

Two flavours of every estimator:

* numpy, hard: :func:`estimate_ita`, :func:`estimate_fst` (one image, a robust median over skin
  pixels) — used to score images and for ISIC images, which carry no FST label;
* torch, soft and differentiable: :func:`soft_fst` (a batch → FST probabilities) — usable inside a
  loss. The soft bins are differences of sigmoids, so they sum to one exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: Lower ITA bounds of FST I..V (FST VI is everything ≤ 10°).
ITA_THRESHOLDS = (55.0, 41.0, 28.0, 19.0, 10.0)
#: The ITA interval used for each FST when one is needed (e.g. by the generator); I and VI are
#: open-ended in the definition and closed here at typical extremes of real skin.
ITA_RANGES = {1: (55.0, 72.0), 2: (41.0, 55.0), 3: (28.0, 41.0), 4: (19.0, 28.0),
              5: (10.0, 19.0), 6: (-60.0, 10.0)}

# sRGB (D65) <-> XYZ <-> CIELab constants
_M_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
_M_XYZ2RGB = np.linalg.inv(_M_RGB2XYZ)
_WHITE = np.array([0.950456, 1.0, 1.088754])
_EPS, _KAPPA = 216 / 24389, 24389 / 27


# --- colour conversion ------------------------------------------------------------------------


def rgb_to_lab_np(rgb: np.ndarray) -> np.ndarray:
    """sRGB → CIELab. ``rgb``: (..., 3) uint8 or float in [0, 1]. Returns (..., 3) float64."""
    x = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    lin = np.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = lin @ _M_RGB2XYZ.T / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb_np(lab: np.ndarray) -> np.ndarray:
    """CIELab → sRGB. ``lab``: (..., 3) float. Returns (..., 3) uint8 (out-of-gamut clipped)."""
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    lin = np.clip(xyz @ _M_XYZ2RGB.T, 0.0, 1.0)
    srgb = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(np.rint(srgb * 255), 0, 255).astype(np.uint8)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sRGB → CIELab. ``x``: (B, 3, H, W) float in [-1, 1]. Returns (B, 3, H, W)."""
    rgb = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp_min(1e-8) ** 2.4, rgb / 12.92)
    m = torch.as_tensor(_M_RGB2XYZ.T / _WHITE, dtype=x.dtype, device=x.device)
    xyz = lin @ m
    f = torch.where(xyz > _EPS, xyz.clamp_min(1e-8) ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return torch.stack([L, a, b], dim=1)


# --- ITA and FST ------------------------------------------------------------------------------


def ita(L, b):
    """Individual Typology Angle in degrees; numpy arrays/scalars or torch tensors."""
    if isinstance(L, torch.Tensor):
        return torch.rad2deg(torch.atan2(L - 50.0, b))
    return np.degrees(np.arctan2(np.asarray(L, dtype=float) - 50.0, b))


def ita_to_fst(ita_deg) -> np.ndarray | int:
    """Hard ITA → FST (1..6) with the Kinyanjui/Groh thresholds; scalar or array."""
    a = np.asarray(ita_deg, dtype=float)
    # number of thresholds the angle does not exceed + 1: >55 → 1, ..., ≤10 → 6
    fst = 1 + (a[..., None] <= np.asarray(ITA_THRESHOLDS)).sum(-1)
    return int(fst) if fst.ndim == 0 else fst.astype(int)


def soft_fst_from_ita(ita_deg: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Differentiable ITA → FST probabilities. ``ita_deg``: (B,). Returns (B, 6), rows sum to 1.

    Bin k is σ((ITA − lo_k)/τ) − σ((ITA − hi_k)/τ) with lo/hi the thresholds (±∞ at the ends),
    so the six probabilities telescope to exactly one; τ (degrees) sets the softness.
    """
    t = torch.as_tensor(ITA_THRESHOLDS, dtype=ita_deg.dtype, device=ita_deg.device)
    above = torch.sigmoid((ita_deg[:, None] - t) / temperature)  # (B, 5): P(ITA > t_k), rising in k
    # FST I = P(>55); FST k = P(>t_k) − P(>t_{k−1}) for II..V; FST VI = 1 − P(>10)
    probs = torch.cat([above[:, :1], above[:, 1:] - above[:, :-1], 1 - above[:, -1:]], dim=1)
    return probs.clamp_min(0)


# --- which pixels are skin --------------------------------------------------------------------


def _skin_weights(L: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of likely healthy skin in an image whose lesion is roughly centred.

    Why this heuristic: lesions (and hair, ink, dermoscopy vignettes) are darker than the
    surrounding skin and lesions sit near the centre. Keep the outer ring (outside a centred
    ellipse of half the size), drop the darkest 30% of it and near-black pixels.
    """
    h, w = L.shape
    yy, xx = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    rr = xx**2 + yy**2
    ring = (rr > 0.55**2) & (rr < 1.25**2)
    if ring.sum() < 16:  # tiny images: use everything
        ring = np.ones_like(ring)
    vals = L[ring]
    keep = ring & (L >= np.percentile(vals, 30)) & (L > 8)
    return keep if keep.sum() >= 8 else ring


def estimate_ita(image: np.ndarray) -> float:
    """ITA (degrees) of the healthy skin in one image. ``image``: (H, W, 3) uint8 RGB."""
    lab = rgb_to_lab_np(image)
    mask = _skin_weights(lab[..., 0])
    return float(ita(np.median(lab[..., 0][mask]), np.median(lab[..., 2][mask])))


def estimate_fst(image: np.ndarray) -> int:
    """FST (1..6) of one image from the ITA of its healthy skin."""
    return ita_to_fst(estimate_ita(image))


def estimate_fst_from_image(path: str | Path, max_side: int = 256) -> int:
    """FST from an image file (downscaled to ``max_side`` first for speed)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        return estimate_fst(np.asarray(im))


def soft_fst(x: torch.Tensor, temperature: float = 2.0, sharpness: float = 2.0) -> torch.Tensor:
    """Differentiable FST probabilities of a batch. ``x``: (B, 3, H, W) in [-1, 1] → (B, 6).

    The hard estimator's median over skin pixels becomes a weighted mean: a fixed outer-ring
    weight times σ((L − q)/s), q the (detached) 30th percentile of L in the ring, so lesion and
    hair pixels get little weight while gradients still flow to every skin pixel.
    """
    lab = rgb_to_lab(x)
    L, b = lab[:, 0], lab[:, 2]
    B, H, W = L.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, device=x.device),
                            torch.linspace(-1, 1, W, device=x.device), indexing="ij")
    rr = xx**2 + yy**2
    ring = ((rr > 0.55**2) & (rr < 1.25**2)).to(x.dtype)
    flat = L.detach().reshape(B, -1)[:, ring.flatten() > 0]
    q = torch.quantile(flat, 0.30, dim=1)[:, None, None]
    w = ring * torch.sigmoid((L - q) / sharpness)
    w = w / w.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    ita_deg = ita((w * L).sum((1, 2)), (w * b).sum((1, 2)))
    return soft_fst_from_ita(ita_deg, temperature)


# --- a learned estimator ----------------------------------------------------------------------


class FSTEstimator(torch.nn.Module):
    """A small CNN trained on FST labels: ``forward(x)`` → probabilities (B, 6), differentiable.

    ``x``: (B, 3, H, W) in [-1, 1]. Used frozen inside the fairness loss; the adherence metric
    scores generated images with the ITA estimator instead, never with this network.
    """

    def __init__(self, width: int = 16, net: torch.nn.Module | None = None):
        super().__init__()
        from bmglib.classifiers import SmallCNN

        self.net = net if net is not None else SmallCNN(width, n_out=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def train_fst_estimator(x: torch.Tensor, fst: torch.Tensor, x_val: torch.Tensor, fst_val: torch.Tensor,
                        epochs: int = 6, batch_size: int = 64, lr: float = 2e-3, width: int = 16,
                        seed: int = 0, progress: bool = True):
    """Train :class:`FSTEstimator` on images ``x`` (N, 3, H, W) in [-1, 1] with labels 1..6.

    Returns ``(model in eval mode, val accuracy, val confusion (6×6 DataFrame: true × predicted))``.
    Augmentation is flips and 90° rotations only (colour jitter would change the label).
    """
    from bmglib.classifiers import train_multiclass

    net = train_multiclass(x, fst.long() - 1, 6, epochs=epochs, batch_size=batch_size, lr=lr,
                           width=width, seed=seed, desc="FST estimator", progress=progress)
    model = FSTEstimator(net=net)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    acc, conf = evaluate_estimator(model, x_val, fst_val)
    return model, acc, conf


class ITAEstimator(torch.nn.Module):
    """The training-free alternative with the same interface: ``forward(x)`` → (B, 6) probabilities."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_fst(x, self.temperature)


#: width of the fairness loss's FST estimator CNN (the auditor, ``classifiers.AUDITOR_WIDTH``: 32)
ESTIMATOR_WIDTH = 16


def get_fst_estimator(kind: str, train_df, val_df, size: int, epochs: int = 6, seed: int = 0,
                      progress: bool = True):
    """The frozen estimator of the fairness loss: ``cnn`` (trained on the training split's FST
    labels, cached under a key of its inputs by ``bmglib.cache.cached_model``) or ``ita``
    (training-free).

    Returns ``(estimator, report)``; report has ``val_accuracy`` and ``confusion`` (CNN only) and,
    for both, ``real_probs``: the estimator's mean output per FST on the real validation images
    (:func:`real_fst_probs`, also set as ``estimator.real_probs``; the calibrated target).
    """
    import functools

    import pandas as pd

    from bmglib import cache, classifiers, config
    from bmglib.data.images import load_tensor

    if kind not in ("cnn", "ita"):
        raise ValueError(f"estimator must be 'cnn' or 'ita', got {kind!r}")
    fst_val = torch.tensor(val_df["fitzpatrick_scale"].to_numpy())
    decoded = {}  # the validation images, when training decoded them already

    def train():
        x, decoded["val"] = load_tensor(train_df, size, progress), load_tensor(val_df, size, progress)
        y = torch.tensor(train_df["fitzpatrick_scale"].to_numpy())
        est, acc, conf = train_fst_estimator(x, y, decoded["val"], fst_val, epochs=epochs,
                                             width=ESTIMATOR_WIDTH, seed=seed, progress=progress)
        return est, {"kind": "cnn", "val_accuracy": acc, "n_val": len(val_df), "confusion": conf}

    if kind == "ita":
        model, report = ITAEstimator(), {"kind": "ita"}
    else:
        inputs = {"train": config.hash_table(train_df), "val": config.hash_table(val_df), "size": size,
                  "epochs": epochs, "seed": seed, "width": ESTIMATOR_WIDTH}
        res = cache.cached_model("fst_estimator", inputs, functools.partial(FSTEstimator, ESTIMATOR_WIDTH),
                                 train, code=(*classifiers.TRAINING_CODE, train_fst_estimator,
                                              evaluate_estimator))
        model, report = res.model, dict(res.report)
    # the calibrated target: the estimator's mean output on the real validation images per FST
    x_val = decoded["val"] if "val" in decoded else load_tensor(val_df, size, progress)
    model.real_probs = real_fst_probs(model.eval(), x_val, fst_val)
    report["real_probs"] = pd.DataFrame(model.real_probs.numpy(), index=range(1, 7), columns=range(1, 7))
    report["n_val_per_fst"] = {f: int((fst_val == f).sum()) for f in range(1, 7)}
    for p in model.parameters():
        p.requires_grad_(False)
    return model, report


@torch.no_grad()
def real_fst_probs(estimator: torch.nn.Module, x: torch.Tensor, fst: torch.Tensor) -> torch.Tensor:
    """The estimator's mean output on real images of each FST: a (6, 6) matrix whose row f-1 is the
    mean probability vector over the images ``x`` (N, 3, H, W) in [-1, 1] labelled ``fst`` = f.

    This is the calibrated target of the fairness loss (``bmglib.diffusion.losses``): what "looks like FST f"
    means to this estimator on real skin. Entries are floored at 1e-6 and rows renormalised. An FST
    with no image keeps a one-hot row, with a warning naming it.
    """
    import warnings

    probs = torch.cat([estimator(x[i:i + 256]) for i in range(0, len(x), 256)]) if len(x) else torch.zeros(0, 6)
    rows = []
    for f in range(1, 7):
        m = fst == f
        if m.any():
            rows.append(probs[m].mean(0))
        else:
            warnings.warn(f"real_fst_probs: no image of FST {f}; its target row stays one-hot", stacklevel=2)
            rows.append(torch.nn.functional.one_hot(torch.tensor(f - 1), 6).float())
    out = torch.stack(rows).clamp_min(1e-6)
    return out / out.sum(1, keepdim=True)


@torch.no_grad()
def evaluate_estimator(estimator: torch.nn.Module, x: torch.Tensor, fst: torch.Tensor):
    """Accuracy and confusion (true × predicted, 6×6) of an estimator on images (N,3,H,W) in [-1, 1]."""
    import pandas as pd

    pred = torch.cat([estimator(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]) + 1
    conf = pd.crosstab(pd.Series(fst.numpy(), name="true"), pd.Series(pred.numpy(), name="predicted"))
    return float((pred == fst).float().mean()), conf.reindex(index=range(1, 7), columns=range(1, 7), fill_value=0)
