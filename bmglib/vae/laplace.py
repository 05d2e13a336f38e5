"""Uncertainty scores of a trained :class:`bmglib.vae.model.ConvVAE` and how to evaluate them.

* **Encoder variance** (baseline): the mean σ² of q(z|x) (:func:`bmglib.vae.model.reconstruct`).
* **Laplace score** (SLUG-like, López-Pérez et al. 2025): a diagonal Gauss–Newton (GGN) Laplace
  posterior over the last decoder layer(s), θ ~ N(θ*, Σ), Σ = (τ + (N/n)·diag(Σ_i J_iᵀJ_i)/σ²)⁻¹,
  for a Gaussian likelihood of noise σ² (the MAP's mean squared residual; the perceptual term of
  the training loss is not part of this likelihood). For an image x with decoder output
  f(x) = g_θ(μ(x)), the linearised predictive covariance is J Σ Jᵀ (J = ∂f/∂θ, D × P). Its
  trace is estimated Hutchinson-style with Rademacher probes z in parameter space,
  tr(J Σ Jᵀ) = E‖J Σ^½ z‖², one Jacobian-vector product per probe; the same JVPs give an unbiased
  per-pixel variance map, E[(J Σ^½ z)²_p] = (J Σ Jᵀ)_pp. The GGN diagonal itself is estimated
  with output-space Rademacher probes v, E[(Jᵀv)²] = diag(JᵀJ), one vector-Jacobian product each.
  Cost per probe is one pass through the Laplace layers, whatever the image size.

``exact_*`` functions compute the same quantities from full Jacobians: for tests on tiny models.
Statistics: Spearman correlation and AUROC with bootstrap CIs; pooled pixel-level AUROC of a map
against artefact masks, with a CI over images. The audit's tables and figures (notebook 07) are in
:mod:`bmglib.vae.audit`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from tqdm.auto import tqdm

from bmglib.data import schema
from bmglib.metrics import bootstrap

Params = dict[str, torch.Tensor]


def split_decoder(decoder: nn.Sequential, n_layers: int = 1) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail): ``tail`` starts at the ``n_layers``-th last module with parameters
    (``n_layers=0``: all of them, the whole decoder)."""
    with_params = [i for i, m in enumerate(decoder) if any(True for _ in m.parameters(recurse=False))]
    if not 0 <= n_layers <= len(with_params):
        raise ValueError(f"n_layers must be in 0..{len(with_params)} (0 = all), got {n_layers}")
    k = with_params[-n_layers] if n_layers else 0
    return decoder[:k], decoder[k:]


def _rademacher(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen).float().mul_(2).sub_(1)


@dataclass
class LaplacePosterior:
    """Diagonal Gaussian over the parameters of the decoder's tail (``n_layers`` modules)."""

    n_layers: int
    mean: Params  # MAP values, by parameter name inside the tail
    variance: Params  # posterior variances, same shapes
    sigma2: float  # observation noise of the Gaussian likelihood
    prior_precision: float
    n_data: int  # training images the GGN sum stands for
    n_fit: int  # images it was estimated on


def ggn_diagonal(tail: nn.Module, params: Params, h: torch.Tensor, n_probes: int,
                 gen: torch.Generator) -> Params:
    """Monte-Carlo diag(Σ_b J_bᵀJ_b) over a batch: mean over probes of (Jᵀv)², v Rademacher.

    ``h``: (B, ...) inputs of ``tail``; J is the Jacobian of the flattened batch output w.r.t.
    ``params``. Unbiased because E[v vᵀ] = I over all B·D outputs.
    """
    out, vjp_fn = vjp(lambda p: functional_call(tail, p, (h,)), params)
    acc = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(n_probes):
        (g,) = vjp_fn(_rademacher(out.shape, gen))
        for k in acc:
            acc[k] += g[k].pow(2)
    return {k: v / n_probes for k, v in acc.items()}


def exact_ggn_diagonal(tail: nn.Module, params: Params, h: torch.Tensor) -> Params:
    """diag(Σ_b J_bᵀJ_b) from full Jacobians (B·D × P memory: tiny models only)."""
    jac = jacrev(lambda p: functional_call(tail, p, (h,)).flatten())(params)
    return {k: j.pow(2).sum(0) for k, j in jac.items()}


@torch.no_grad()
def _latents_and_targets(model, x, batch_size):
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        yield model.encode(xb)[0], xb


def fit_laplace(model, x: torch.Tensor, n_data: int, n_layers: int = 1, n_probes: int = 8,
                prior_precision: float = 1.0, seed: int = 0, batch_size: int = 128,
                progress: bool = True) -> LaplacePosterior:
    """Fit the diagonal GGN Laplace posterior of ``model.decoder``'s tail on x (n,3,S,S) in [-1,1]
    (training images), scaling the GGN sum to ``n_data`` training images."""
    model.eval()
    head, tail = split_decoder(model.decoder, n_layers)
    params = {k: v.detach() for k, v in tail.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    ggn = {k: torch.zeros_like(v) for k, v in params.items()}
    sq, count = 0.0, 0
    batches = _latents_and_targets(model, x, batch_size)
    for mu, xb in tqdm(batches, total=-(-len(x) // batch_size), desc="Laplace fit",
                       disable=not progress, leave=False):
        with torch.no_grad():
            h = head(mu)
            sq += float((tail(h) - xb).pow(2).sum())
            count += xb.numel()
        for k, v in ggn_diagonal(tail, params, h, n_probes, gen).items():
            ggn[k] += v
    sigma2 = sq / count
    scale = n_data / len(x) / sigma2
    var = {k: 1.0 / (prior_precision + scale * g) for k, g in ggn.items()}
    return LaplacePosterior(n_layers, params, var, sigma2, prior_precision, n_data, len(x))


@dataclass
class PredictiveVariance:
    """Per image: ``score`` (N,) = tr(JΣJᵀ)/D, the mean per-pixel predictive variance, and its
    Monte-Carlo standard error ``se`` (N,); ``maps`` (N,H,W) = per-pixel variance summed over RGB."""

    score: np.ndarray
    se: np.ndarray
    maps: torch.Tensor


def predictive_variance(model, post: LaplacePosterior, x: torch.Tensor, n_probes: int = 32,
                        seed: int = 0, batch_size: int = 128) -> PredictiveVariance:
    """Hutchinson estimate of the Laplace predictive variance of each image x (N,3,S,S).

    The same probes z_1..z_K (from ``seed``) serve every image, so an image's score does not depend
    on the batch it is in, and is deterministic for a seed.
    """
    model.eval()
    head, tail = split_decoder(model.decoder, post.n_layers)
    gen = torch.Generator().manual_seed(seed)
    probes = {k: _rademacher((n_probes, *v.shape), gen) * post.variance[k].sqrt()
              for k, v in post.mean.items()}  # δ_k = Σ^½ z_k, stacked over K probes
    traces, maps = [], []
    for mu, _ in _latents_and_targets(model, x, batch_size):
        with torch.no_grad():
            h = head(mu)
            f = lambda p, h=h: functional_call(tail, p, (h,))  # noqa: E731
            with warnings.catch_warnings():  # torch's own forward-AD set-up calls torch.jit.script
                warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
                t = vmap(lambda d, f=f: jvp(f, (post.mean,), (d,))[1])(probes).pow(2)  # (K,B,3,H,W)
        traces.append(t.sum((2, 3, 4)))
        maps.append(t.mean(0).sum(1))
    tr = torch.cat(traces, dim=1).numpy()  # (K, N)
    dim = x[0].numel()
    se = tr.std(0, ddof=1) / np.sqrt(n_probes) if n_probes > 1 else np.full(tr.shape[1], np.nan)
    return PredictiveVariance(tr.mean(0) / dim, se / dim, torch.cat(maps))


def exact_predictive_variance(model, post: LaplacePosterior, x: torch.Tensor) -> PredictiveVariance:
    """The same quantities from full per-image Jacobians (D × P memory: tiny models only)."""
    head, tail = split_decoder(model.decoder, post.n_layers)
    scores, maps = [], []
    for xi in x:
        with torch.no_grad():
            h = head(model.encode(xi[None])[0])
        jac = jacrev(lambda p, h=h: functional_call(tail, p, (h,))[0])(post.mean)
        diag = sum((j.flatten(3).pow(2) * post.variance[k].flatten()).sum(-1) for k, j in jac.items())
        scores.append(float(diag.mean()))
        maps.append(diag.sum(0))
    return PredictiveVariance(np.array(scores), np.zeros(len(x)), torch.stack(maps))


# --- evaluation -------------------------------------------------------------------------------


def spearman_ci(a, b, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman ρ of (N,) ``a`` and ``b`` with a percentile bootstrap CI (pairs resampled)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    boots = bootstrap.replicates(lambda i: spearmanr(a[i], b[i]).statistic, n_boot, seed, n=len(a))
    lo, hi = bootstrap.percentile_ci(boots, level)
    return {"rho": float(spearmanr(a, b).statistic), "ci_low": lo, "ci_high": hi, "n": len(a)}


def auroc_ci(scores, labels, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """AUROC of ``scores`` (N,) for ``labels`` (N,) bool, CI from a stratified bootstrap."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    boots = bootstrap.replicates(lambda i: roc_auc_score(labels[i], scores[i]), n_boot, seed,
                                 strata=[pos, neg])
    lo, hi = bootstrap.percentile_ci(boots, level)
    return {"auroc": float(roc_auc_score(labels, scores)), "ci_low": lo, "ci_high": hi,
            "n_pos": len(pos), "n_neg": len(neg)}


def _binned_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from score-bin counts (..., bins), ties within a bin counted one half."""
    below = np.cumsum(neg, -1) - neg
    num = (pos * (below + 0.5 * neg)).sum(-1)
    return num / (pos.sum(-1) * neg.sum(-1))


def pixel_auroc(maps, masks, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                bins: int = 1024) -> dict:
    """Pooled pixel-level AUROC of ``maps`` (N,H,W) for ``masks`` (N,H,W) bool, with a CI from
    resampling images. Scores are binned at ``bins`` global quantiles (exact up to ties within a
    bin), so the bootstrap is a matrix product rather than N·H·W sorts per replicate."""
    maps = np.asarray(maps, float).reshape(len(maps), -1)
    masks = np.asarray(masks, bool).reshape(len(masks), -1)
    edges = np.unique(np.quantile(maps, np.linspace(0, 1, bins + 1)[1:-1]))
    idx = np.searchsorted(edges, maps)
    nb = len(edges) + 1
    pos = np.stack([np.bincount(i[m], minlength=nb) for i, m in zip(idx, masks, strict=True)])
    neg = np.stack([np.bincount(i[~m], minlength=nb) for i, m in zip(idx, masks, strict=True)])
    w = bootstrap.resample_counts(len(maps), n_boot, seed)  # (n_boot, N)
    lo, hi = bootstrap.percentile_ci(_binned_auroc(w @ pos, w @ neg), level)
    return {"auroc": float(_binned_auroc(pos.sum(0), neg.sum(0))), "ci_low": lo, "ci_high": hi,
            "n_images": len(maps), "n_pos_pixels": int(masks.sum()), "n_neg_pixels": int((~masks).sum())}


def _fst_groups(fst: np.ndarray) -> dict[str, np.ndarray]:
    """FST I..VI, I-III, IV-VI and overall → boolean masks."""
    groups = {schema.FST_ROMAN[f]: fst == f for f in schema.FST_LEVELS}
    groups.update({g: np.isin(fst, m) for g, m in schema.FST_GROUPS.items()})
    groups["overall"] = np.ones(len(fst), bool)
    return groups


def group_means(values: np.ndarray, fst: np.ndarray, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> pd.DataFrame:
    """Mean of ``values`` (N,) per FST, per I-III/IV-VI and overall, with a percentile bootstrap
    CI (images resampled within the group). Columns: n, mean, ci_low, ci_high."""
    values, fst = np.asarray(values, float), np.asarray(fst)
    rng = np.random.default_rng(seed)  # one stream over the groups, in the order of _fst_groups
    rows = []
    for name, sel in _fst_groups(fst).items():
        v = values[sel]
        if len(v) == 0:
            rows.append({"group": name, "n": 0, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            continue
        lo, hi = bootstrap.percentile_ci(bootstrap.mean_replicates(v, n_boot, rng), level)
        rows.append({"group": name, "n": len(v), "mean": v.mean(), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows).set_index("group")


def mean_gap(values: np.ndarray, fst: np.ndarray, a=schema.FST_GROUPS[schema.GAP_GROUPS[0]],
             b=schema.FST_GROUPS[schema.GAP_GROUPS[1]], n_boot: int = 1000, seed: int = 0,
             level: float = 0.95) -> dict:
    """mean(values | FST in a) − mean(values | FST in b) of ``values`` (N,) with FSTs ``fst`` (N,),
    with a bootstrap CI (each side resampled within itself, b then a from one stream). Default
    the gap I–III − IV–VI (:data:`schema.GAP_GROUPS`): > 0 means light skin has the larger value.
    Returns ``{"gap", "ci_low", "ci_high", "n_a", "n_b", "p_le_0"}``."""
    values, fst = np.asarray(values, float), np.asarray(fst)
    va, vb = values[np.isin(fst, a)], values[np.isin(fst, b)]
    rng = np.random.default_rng(seed)
    # b's resamples first: the draws of the former default (IV–VI − I–III), so the flipped gap
    # reads the same replicates with the opposite sign
    boots_b = bootstrap.mean_replicates(vb, n_boot, rng)
    boots = bootstrap.mean_replicates(va, n_boot, rng) - boots_b
    lo, hi = bootstrap.percentile_ci(boots, level)
    return {"gap": float(va.mean() - vb.mean()), "ci_low": lo, "ci_high": hi,
            "n_a": len(va), "n_b": len(vb), "p_le_0": float(np.mean(boots <= 0))}
