"""The López-Pérez VAE fairness audit: a convolutional VAE with a perceptual loss, trained on
FST mixes, and its reconstruction quality per Fitzpatrick skin type (FST).

    vcfg = config.get_config("quick").vae                        # the one config's vae section
    feats, _ = get_feature_net(train_df, val_df, vcfg)           # offline perceptual features
    perceptual = FeatureDistance(feats)                          # or any (x, y) -> (B,) distance
    table = mix_table(train_df, mix_shares(train_df, "vvi:0.10"), vcfg.n_train, seed=0)
    run = get_vae(table, vcfg, perceptual, feats.key)            # trained once, then cached
    per_image = reconstruction_metrics(run.model, x_test, perceptual)

No ImageNet network is available offline, so the default perceptual distance is LPIPS-like
(channel-normalised feature differences, uniform layer weights) on a small CNN trained here on the
training split to predict lesion type and FST. The distance is injected: a user with VGG/LPIPS
weights passes their own callable. The uncertainty scores live in :mod:`bmglib.vae.laplace`,
the audit's tables and figures (notebook 07) in :mod:`bmglib.vae.audit`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm.auto import tqdm

from bmglib import augment, cache, classifiers, config, trainer
from bmglib.config import VAEConfig
from bmglib.data import schema
from bmglib.data.images import load_tensor
from bmglib.vae import laplace

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B,3,H,W) × 2 → (B,)
AUGMENT = "flip_rot90_per_batch"  # bmglib.augment: one random pose per batch
#: what the cached models' weights depend on besides their inputs (``cache.code_digest``)
TRAINING_CODE = (trainer, augment, load_tensor)


# --- the model --------------------------------------------------------------------------------


class ConvVAE(nn.Module):
    """Strided-conv encoder → diagonal Gaussian q(z|x); transposed-conv decoder, linear output.

    ``image_size`` a power of two ≥ 8 (the encoder halves it down to 4×4). The output layer is
    linear (no tanh) so the Laplace Jacobians do not vanish on saturated colours.
    """

    def __init__(self, image_size: int = 32, width: int = 32, latent_dim: int = 32):
        super().__init__()
        n_down = int(math.log2(image_size // 4))
        if image_size < 8 or 4 * 2**n_down != image_size:
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
        chans = [width * min(2**i, 4) for i in range(n_down)]
        enc: list[nn.Module] = []
        cin = 3
        for c in chans:
            enc += [nn.Conv2d(cin, c, 4, 2, 1), nn.SiLU()]
            cin = c
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(cin * 16, 2 * latent_dim))
        dec: list[nn.Module] = [nn.Linear(latent_dim, cin * 16), nn.SiLU(), nn.Unflatten(1, (cin, 4, 4))]
        for c in reversed(chans):
            dec += [nn.ConvTranspose2d(cin, c, 4, 2, 1), nn.SiLU()]
            cin = c
        self.decoder = nn.Sequential(*dec, nn.Conv2d(cin, 3, 3, padding=1))
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B,3,S,S) in [-1,1] → (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def forward(self, x: torch.Tensor, sample: bool = True):
        """→ (reconstruction (B,3,S,S) ≈ [-1,1], unclamped; mu; logvar). ``sample=False``: z=mu."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return self.decoder(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) per image: (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


# --- perceptual features ------------------------------------------------------------------------


class CNNFeatures(nn.Module):
    """Activations after each conv block of a frozen ``classifiers.SmallCNN`` (before pooling).

    ``forward(x)``: x (B,3,H,W) in [-1,1] → list of (B, C_l, H_l, W_l). ``key`` names the weights.
    """

    def __init__(self, net: classifiers.SmallCNN, key: str = ""):
        super().__init__()
        self.net, self.key = net.eval(), key
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for m in self.net.features:
            if isinstance(m, nn.MaxPool2d):
                out.append(x)
            x = m(x)
        return out

    def train(self, mode: bool = True):  # always frozen: BatchNorm keeps its running statistics
        return super().train(False)


class FeatureDistance(nn.Module):
    """LPIPS-like distance: Σ_l mean_hw ‖n(f_l(x)) − n(f_l(y))‖², n = unit norm over channels.

    ``features``: any callable image → list of feature maps (e.g. VGG blocks). Returns (B,).
    """

    def __init__(self, features: Callable[[torch.Tensor], list[torch.Tensor]]):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = x.new_zeros(len(x))
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            feats_y = self.features(y)  # a fixed training target needs no graph
        for fx, fy in zip(self.features(x), feats_y, strict=True):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
            d = d + (fx - fy).pow(2).sum(1).mean((1, 2))
        return d


def train_feature_net(x: torch.Tensor, fst: torch.Tensor, lesion: torch.Tensor, width: int,
                      epochs: int, seed: int = 0, progress: bool = True) -> classifiers.SmallCNN:
    """A SmallCNN predicting lesion (4, class-balanced CE) and FST (6) from x (N,3,H,W) in [-1,1]
    (``bmglib.trainer.fit``: AdamW at 2e-3, batches of 64, one flip/rotation pose per batch).

    ``fst``: (N,) 1..6; ``lesion``: (N,) index into ``schema.LESIONS``.
    """
    torch.manual_seed(seed)
    net = classifiers.SmallCNN(width, n_out=len(schema.LESIONS) + len(schema.FST_LEVELS))
    counts = torch.bincount(lesion, minlength=len(schema.LESIONS)).clamp_min(1).float()
    cfg = trainer.FitConfig(epochs=epochs, batch_size=64, lr=2e-3, augment=AUGMENT, seed=seed,
                            desc="feature net", progress=progress)
    loss = functools.partial(feature_loss, w_lesion=counts.sum() / counts / len(counts))
    return trainer.fit(net, trainer.shuffled(x, torch.stack([lesion, fst - 1], dim=1)), cfg, loss).model


def feature_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w_lesion: torch.Tensor) -> torch.Tensor:
    """Lesion cross-entropy weighted by ``w_lesion`` (4,) plus FST cross-entropy; ``y`` (B, 2):
    lesion index, FST − 1."""
    out = model(x)
    return (nn.functional.cross_entropy(out[:, :4], y[:, 0], weight=w_lesion)
            + nn.functional.cross_entropy(out[:, 4:], y[:, 1]))


def _labels(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    fst = torch.tensor(df["fitzpatrick_scale"].to_numpy(), dtype=torch.long)
    lesion = torch.tensor([schema.LESIONS.index(v) for v in df["lesion"]], dtype=torch.long)
    return fst, lesion


def get_feature_net(train_df: pd.DataFrame, val_df: pd.DataFrame, cfg: VAEConfig,
                    progress: bool = True) -> tuple[CNNFeatures, dict]:
    """The default perceptual feature network, trained on ``train_df`` and cached by its inputs
    (``bmglib.cache.cached_model``; ``features.key`` is its cache key).

    Returns ``(features, report)``; report: validation FST accuracy and lesion balanced accuracy
    (with ``n_val``) — how much the features know about skin tone and lesions.
    """
    def train() -> tuple[classifiers.SmallCNN, dict]:
        x = load_tensor(train_df, cfg.image_size, progress)
        net = train_feature_net(x, *_labels(train_df), cfg.feature_width, cfg.feature_epochs,
                                cfg.seed, progress)
        fst, lesion = _labels(val_df)
        with torch.no_grad():
            out = net(load_tensor(val_df, cfg.image_size, progress))
        pred_l = out[:, :4].argmax(1)
        recalls = [float((pred_l[lesion == k] == k).float().mean()) for k in lesion.unique()]
        return net, {"n_val": len(val_df),
                     "fst_accuracy": float((out[:, 4:].argmax(1) + 1 == fst).float().mean()),
                     "lesion_balanced_accuracy": float(np.mean(recalls))}

    inputs = {"train": config.hash_table(train_df), "val": config.hash_table(val_df),
              "size": cfg.image_size, "width": cfg.feature_width, "epochs": cfg.feature_epochs,
              "seed": cfg.seed}
    n_out = len(schema.LESIONS) + len(schema.FST_LEVELS)
    res = cache.cached_model("vae_features", inputs,
                             functools.partial(classifiers.SmallCNN, cfg.feature_width, n_out=n_out),
                             train, code=(*TRAINING_CODE, train_feature_net, feature_loss, _labels))
    return CNNFeatures(res.model, res.key), res.report


# --- training mixes -----------------------------------------------------------------------------


def mix_names(cfg: VAEConfig) -> list[str]:
    """``natural``, ``balanced`` and one ``vvi:<share>`` per FST V–VI share of ``cfg.sweep``."""
    return ["natural", "balanced", *[f"vvi:{s:g}" for s in cfg.sweep]]


def mix_shares(train: pd.DataFrame, mix: str) -> pd.Series:
    """Target share of each FST (index 1..6, sums to 1) in a training mix.

    ``natural`` — the table's own FST shares; ``balanced`` — 1/6 each; ``vvi:s`` — FST V–VI get
    ``s`` together and I–IV ``1 − s``, each side split in the table's own proportions.
    """
    nat = train["fitzpatrick_scale"].value_counts(normalize=True).reindex(schema.FST_LEVELS,
                                                                          fill_value=0.0)
    if mix == "natural":
        return nat.rename("share")
    if mix == "balanced":
        return pd.Series(1 / 6, index=nat.index, name="share")
    if mix.startswith("vvi:"):
        s = float(mix[4:])
        light, dark = nat.loc[[1, 2, 3, 4]], nat.loc[[5, 6]]
        if not 0 <= s <= 1 or (s > 0 and dark.sum() == 0) or (s < 1 and light.sum() == 0):
            raise ValueError(f"cannot make a V-VI share of {s} from this table (shares {nat.to_dict()})")
        out = pd.concat([light / max(light.sum(), 1e-12) * (1 - s), dark / max(dark.sum(), 1e-12) * s])
        return out.rename("share")
    raise ValueError(f"mix must be 'natural', 'balanced' or 'vvi:<share>', got {mix!r}")


def mix_table(train: pd.DataFrame, shares: pd.Series, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of ``train`` with FST counts ∝ ``shares`` (largest-remainder rounding).

    Within an FST rows are drawn without replacement; when a share asks for more rows than the FST
    has, every row is used and the rest repeated (drawing with replacement ≡ reweighting).
    Adds ``mix_share`` (the FST's target share). Row order is FST-major; training shuffles.
    """
    exact = shares.reindex(schema.FST_LEVELS, fill_value=0.0).to_numpy() / shares.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    rng = np.random.default_rng([seed, 7])
    parts = []
    for f, k in zip(schema.FST_LEVELS, counts, strict=True):
        rows = train[train["fitzpatrick_scale"] == f]
        if k == 0:
            continue
        if rows.empty:
            raise ValueError(f"the mix asks for {k} FST {f} images but the table has none")
        idx = np.concatenate([np.tile(np.arange(len(rows)), k // len(rows)),
                              rng.choice(len(rows), k % len(rows), replace=False)])
        parts.append(rows.iloc[idx].assign(mix_share=float(shares.loc[f])))
    return pd.concat(parts, ignore_index=True)


# --- training and caching -----------------------------------------------------------------------

#: VAEConfig fields a trained model depends on (the cache key); the rest are evaluation settings.
TRAIN_FIELDS = ("image_size", "width", "latent_dim", "n_train", "epochs", "batch_size", "lr",
                "beta", "perceptual_weight")


@dataclass
class VAERun:
    model: ConvVAE
    history: pd.DataFrame  # per epoch: loss, mse, perceptual, kl
    table: pd.DataFrame  # the training mix (rows may repeat)
    key: str
    stamp: dict = field(default_factory=dict)  # provenance


def train_vae(x: torch.Tensor, cfg: VAEConfig, perceptual: Distance | None, seed: int = 0,
              progress: bool = True) -> tuple[ConvVAE, pd.DataFrame]:
    """Train :class:`ConvVAE` on x (N,3,S,S) in [-1,1] (``bmglib.trainer.fit``: AdamW, OneCycle
    with 10% warm-up, one flip/rotation pose per batch).

    Loss per batch (:func:`vae_loss`): per-pixel MSE + ``perceptual_weight`` · perceptual(x̂, x) +
    ``beta`` · KL / D with D = 3·S·S. ``perceptual=None`` trains with MSE + KL only. Returns the
    model (eval mode) and its history: per epoch, the image-weighted means of loss, mse,
    perceptual, kl_per_dim.
    """
    torch.manual_seed(seed)
    model = ConvVAE(cfg.image_size, cfg.width, cfg.latent_dim)
    fit_cfg = trainer.FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                weight_decay=1e-5, schedule="onecycle", pct_start=0.1, augment=AUGMENT,
                                loss_mean="image", seed=seed, desc="VAE epochs", progress=progress)
    loss = functools.partial(vae_loss, perceptual=perceptual, perceptual_weight=cfg.perceptual_weight,
                             beta=cfg.beta)
    res = trainer.fit(model, trainer.shuffled(x), fit_cfg, loss)
    return res.model, res.history[["epoch", "loss", "mse", "perceptual", "kl_per_dim"]]


def vae_loss(model: ConvVAE, x: torch.Tensor, _y: None, perceptual: Distance | None,
             perceptual_weight: float, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE + ``perceptual_weight`` · perceptual + ``beta`` · KL per dimension of a batch ``x``
    (B, 3, S, S) in [-1, 1] (the reparameterised z draws from torch's global generator)."""
    recon, mu, logvar = model(x)
    mse = (recon - x).pow(2).mean()
    perc = perceptual(recon, x).mean() if perceptual is not None else mse.new_zeros(())
    kl = kl_divergence(mu, logvar).mean() / x[0].numel()
    return mse + perceptual_weight * perc + beta * kl, {"mse": mse, "perceptual": perc, "kl_per_dim": kl}


def get_vae(table: pd.DataFrame, cfg: VAEConfig, perceptual: Distance | None,
            perceptual_key: str, seed: int | None = None, progress: bool = True,
            use_cache: bool = True) -> VAERun:
    """Train on the images of ``table`` or load the cached run with the same inputs
    (``bmglib.cache.cached_model``).

    The key holds the table (rows, FST), the training fields of ``cfg``, ``perceptual_key`` (name
    the weights of an injected distance here, "" for none), the seed and the training code.
    """
    seed = cfg.seed if seed is None else seed
    train_cfg = {k: getattr(cfg, k) for k in TRAIN_FIELDS}
    data_hash = config.hash_table(table, ("md5hash", "fitzpatrick_scale"))

    def train() -> tuple[ConvVAE, dict]:
        model, history = train_vae(load_tensor(table, cfg.image_size, progress), cfg, perceptual, seed,
                                   progress)
        return model, {"history": history}

    res = cache.cached_model(
        "vae", {"data": data_hash, "vae": train_cfg, "perceptual": perceptual_key, "seed": seed},
        functools.partial(ConvVAE, cfg.image_size, cfg.width, cfg.latent_dim), train,
        code=(*TRAINING_CODE, train_vae, vae_loss, kl_divergence, FeatureDistance, CNNFeatures),
        stamp={"dataset_hash": data_hash, "vae_config": train_cfg, "perceptual": perceptual_key,
               "n_images": len(table), "n_unique": int(table["md5hash"].nunique())},
        use_cache=use_cache)
    return VAERun(res.model, res.report["history"], table, res.key, res.stamp)


def train_mixes(train: pd.DataFrame, cfg: VAEConfig, perceptual: Distance | None,
                perceptual_key: str, progress: bool = True) -> dict[str, VAERun]:
    """One VAE per mix of :func:`mix_names` (same N, same steps, same seed; only the mix differs)."""
    runs = {}
    for mix in tqdm(mix_names(cfg), desc="training mixes", disable=not progress):
        table = mix_table(train, mix_shares(train, mix), cfg.n_train, cfg.seed)
        runs[mix] = get_vae(table, cfg, perceptual, perceptual_key, progress=progress)
    return runs


# --- reconstruction quality per FST -------------------------------------------------------------


@torch.no_grad()
def reconstruct(model: ConvVAE, x: torch.Tensor, batch_size: int = 256):
    """Deterministic reconstructions (z = mu). Returns (recon (N,3,S,S) clamped to [-1,1],
    encoder variance (N,) = mean over latent dims of σ² of q(z|x))."""
    model.eval()
    recon, enc_var = [], []
    for i in range(0, len(x), batch_size):
        r, _, logvar = model(x[i:i + batch_size], sample=False)
        recon.append(r.clamp(-1, 1))
        enc_var.append(logvar.exp().mean(1))
    return torch.cat(recon), torch.cat(enc_var)


@torch.no_grad()
def error_maps(model: ConvVAE, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Squared reconstruction error per pixel, summed over RGB: (N, H, W)."""
    return (reconstruct(model, x, batch_size)[0] - x).pow(2).sum(1)


@torch.no_grad()
def reconstruction_metrics(model: ConvVAE, x: torch.Tensor, perceptual: Distance | None,
                           batch_size: int = 256) -> pd.DataFrame:
    """Per image (rows in ``x`` order): ``mse`` (per pixel, [-1,1] scale), ``perceptual``
    (NaN without a distance), ``ssim`` (data range 2), ``enc_var`` (the encoder-variance score)."""
    recon, enc_var = reconstruct(model, x, batch_size)
    out = {"mse": (recon - x).pow(2).mean((1, 2, 3)).numpy(), "enc_var": enc_var.numpy(),
           "ssim": structural_similarity_index_measure(recon, x, data_range=2.0,
                                                       reduction="none").numpy()}
    out["perceptual"] = (torch.cat([perceptual(recon[i:i + batch_size], x[i:i + batch_size])
                                    for i in range(0, len(x), batch_size)]).numpy()
                         if perceptual is not None else np.full(len(x), np.nan))
    return pd.DataFrame(out)


def fit_run_laplace(run: VAERun, cfg: VAEConfig, n_layers: int | None = None,
                    progress: bool = True) -> laplace.LaplacePosterior:
    """The Laplace posterior of a trained run, fitted on up to ``cfg.laplace_fit`` of its unique
    training images and scaled to its ``len(run.table)`` training draws."""
    unique = run.table.drop_duplicates("md5hash")
    fit = unique.sample(min(cfg.laplace_fit, len(unique)), random_state=cfg.seed)
    x = load_tensor(fit, cfg.image_size, progress)
    return laplace.fit_laplace(run.model, x, len(run.table),
                               cfg.laplace_layers if n_layers is None else n_layers,
                               cfg.ggn_probes, cfg.prior_precision, cfg.seed, progress=progress)
