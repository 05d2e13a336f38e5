"""The validation protocol of a trained (or partly trained) denoiser: what recipes, samplers and
fairness settings are chosen on. It reads only the *training* and *validation* splits, never test.

    judges = validate.Judges.build(meta, image_size=32)          # cached CNNs + real val features
    row = validate.score(model, cfg, judges, per_cell=20)        # one dict of measures

Per call: ``per_cell`` samples for each FST × lesion cell (20 → 480 images; the protocol of
docs/fairness_loss.md) drawn with ``cfg.sampling``'s sampler, steps and guidance (or the ones
given), then

* **KID** to the real validation images (up to ``real_per_cell`` per cell, the same reference for
  every model), offline TF-Inception features; unbiased, with a 95% bootstrap CI over images of
  both sets (:func:`bmglib.metrics.image.kid_bootstrap`);
* **FST adherence** by ITA (a colour statistic) and by the auditor CNN (an independent FST
  classifier trained class-balanced on the real training split; no generator is trained against
  it): the share of samples whose estimated FST is the requested one, overall and for FST V;
* **lesion adherence**: the share the real-data lesion classifier assigns to the requested lesion
  (chance 0.25);
* the **validation denoising loss** (the v/ε MSE, unweighted) on fixed noise at t = 50, 200, 500,
  800 (their mean), which needs no sampling;
* ``sample_seconds`` / ``images_per_s`` of the sampling and ``feature_seconds`` of the features.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bmglib import classifiers, config
from bmglib.data import images
from bmglib.diffusion import balance, losses, sample, schedule
from bmglib.metrics import adherence, image

#: timesteps of the validation denoising loss
VAL_TIMESTEPS = (50, 200, 500, 800)


@dataclass
class Judges:
    """What scores a model on validation: the real references and the two CNN judges."""

    val_df: pd.DataFrame  # the real validation images the KID reference came from
    real_feats: np.ndarray  # (N, 2048) Inception features of ``val_df``'s reference subset
    auditor: torch.nn.Module  # FST CNN (logits (B, 6))
    lesion_clf: torch.nn.Module  # lesion CNN (logits (B, 4))
    val_x: torch.Tensor  # (M, 3, S, S) validation images in [-1, 1] for the denoising loss
    val_fst: torch.Tensor  # (M,)
    val_lesion: torch.Tensor  # (M,)

    @classmethod
    def build(cls, meta: pd.DataFrame, image_size: int, real_per_cell: int = 20, n_loss: int = 256,
              seed: int = 0, progress: bool = False) -> Judges:
        """From a prepared table (``split`` column): the judges are trained (or read from the cache)
        on its training split; every reference is drawn from its validation split."""
        for split in ("train", "val"):
            if not (meta["split"] == split).any():
                raise ValueError(f"validate.Judges.build: the prepared table has no {split!r} rows")
        train_df = meta[meta["split"] == "train"].reset_index(drop=True)
        val_df = meta[meta["split"] == "val"].reset_index(drop=True)
        ref = balance.per_cell_subset(val_df, real_per_cell, seed=seed)
        real_feats = image.image_features(ref["image_path"].tolist(), progress=progress)
        auditor, _ = classifiers.get_fst_auditor(train_df, val_df, image_size, seed=seed, progress=progress)
        lesion_clf, _ = classifiers.get_lesion_classifier(train_df, val_df, image_size, seed=seed,
                                                          progress=progress)
        sub = val_df.sample(min(n_loss, len(val_df)), random_state=seed).reset_index(drop=True)
        x = images.load_tensor(sub, image_size, progress)
        les = torch.tensor([images.LESION_INDEX[v] for v in sub["lesion"]])
        return cls(ref, real_feats, auditor.eval(), lesion_clf.eval(), x,
                   torch.tensor(sub["fitzpatrick_scale"].to_numpy()), les)


@torch.no_grad()
def denoising_loss(model: torch.nn.Module, d: config.DiffusionConfig, judges: Judges, seed: int = 0) -> float:
    """The mean over :data:`VAL_TIMESTEPS` of the unweighted v/ε MSE on the validation images, on
    noise fixed by ``seed`` (so two models see the same noise)."""
    sched = schedule.make_scheduler(d)
    x0 = judges.val_x
    gen = torch.Generator().manual_seed(seed)
    vals = []
    fst = judges.val_fst if d.fst_cond else None
    for t_val in VAL_TIMESTEPS:
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.full((len(x0),), t_val, dtype=torch.long)
        x_t = sched.add_noise(x0, noise, t)
        out = torch.cat([model(x_t[i:i + 128], t[i:i + 128], None if fst is None else fst[i:i + 128],
                               judges.val_lesion[i:i + 128]) for i in range(0, len(x0), 128)])
        vals.append(float(torch.nn.functional.mse_loss(out, losses.training_target(sched, x0, noise, t))))
    return float(np.mean(vals))


def _features(x: torch.Tensor) -> np.ndarray:
    """Inception features of images (B, 3, S, S) in [-1, 1], through PNG files (clean-fid's resize)."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, a in enumerate(arr):
            files.append(str(Path(tmp) / f"{i:05d}.png"))
            Image.fromarray(a).save(files[-1])
        return image.image_features(files, cache=False)


def score(model: torch.nn.Module, cfg: config.Config, judges: Judges, per_cell: int = 20, *,
          sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
          seed: int = 1, n_boot: int = 500, guidance_until: float = 1.0) -> dict:
    """The validation measures of ``model`` (trained with ``cfg.diffusion``), one flat dict (see the
    module docstring). ``sampler``/``steps``/``guidance`` default to ``cfg.sampling``'s;
    ``guidance_until`` is :func:`bmglib.diffusion.sample.sample`'s."""
    d, s = cfg.diffusion, cfg.sampling
    sampler, steps = sampler or s.sampler, steps or s.steps
    guidance = s.guidance if guidance is None else guidance
    model.eval()
    fst, lesion = sample.grid_requests(per_cell)
    t0 = time.perf_counter()
    x = sample.sample(model, schedule.model_scheduler(model, d), fst if d.fst_cond else None, lesion,
                      size=d.image_size, steps=steps, guidance=guidance, sampler=sampler, seed=seed,
                      batch_size=s.batch_size, guidance_until=guidance_until)
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = _features(x)
    feat_s = time.perf_counter() - t0
    boot = image.kid_bootstrap(judges.real_feats, feats, n_boot=n_boot, seed=seed)
    ita = adherence.estimated_fst(x)
    audited = adherence.audit_fst(judges.auditor, x)
    fst_np, v = fst.numpy(), fst.numpy() == 5
    lesion_hit = adherence.predict_lesion(judges.lesion_clf, x) == lesion.numpy()
    return {
        "n": len(x), "n_real": len(judges.real_feats), "sampler": f"{sampler}-{steps}", "guidance": guidance,
        "guidance_until": guidance_until,
        "kid": float(image.kid_subsets(judges.real_feats, feats).mean()),
        "kid_low": float(np.percentile(boot, 2.5)), "kid_high": float(np.percentile(boot, 97.5)),
        "fst_ita": float((ita == fst_np).mean()), "fst_ita_V": float((ita[v] == 5).mean()),
        "fst_auditor": float((audited == fst_np).mean()), "fst_auditor_V": float((audited[v] == 5).mean()),
        "lesion": float(lesion_hit.mean()),
        "val_loss": denoising_loss(model, d, judges),
        "sample_seconds": sample_s, "images_per_s": len(x) / sample_s, "feature_seconds": feat_s,
    }

