"""The CUDA code paths (``make test-gpu``); skipped, with the reason printed, without a CUDA device.

Tiny in-code configs as in the CPU tests, a few steps each: the UNet and a tiny SD-shaped pipeline
trained through accelerate with mixed precision (fp16, bf16), sampling on the GPU (checked against
the CPU where the numbers must agree), and the downstream classifier trained on cuda.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file

from bmglib import config, skintone
from bmglib import downstream as D
from bmglib.data import schema
from bmglib.data.images import load_tensor
from bmglib.diffusion import balance, model_sd, sample, schedule, train

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
PRECISIONS = ("fp16", "bf16")


@pytest.fixture(autouse=True)
def fresh_accelerate_and_fp32(monkeypatch):
    """accelerate keeps one process-wide state and refuses a second Accelerator with another
    ``mixed_precision``: every test starts afresh. TF32 convolutions off, so that the CUDA and CPU
    results compared below differ by float32 rounding only."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.cuda.reset_peak_memory_stats()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _cfg(**over) -> config.Config:
    base = {"diffusion.steps": 3, "diffusion.batch_size": 4, "diffusion.checkpoint_every": 2,
            "diffusion.base_channels": 16, "diffusion.lambda_kl": 1.0, "diffusion.t_fair": 999}
    return config.get_config("smoke", {**base, **over})


def _ita(pool):
    est = skintone.ITAEstimator()
    est.real_probs = skintone.real_fst_probs(est, load_tensor(pool, 32, progress=False),
                                             torch.tensor(pool["fitzpatrick_scale"].to_numpy()))
    return est


def _train_on_cuda(cfg, pool, out, precision):
    """Train; check that accelerate ran it on cuda in ``precision`` and that it learned finitely."""
    run = train.train_diffusion(cfg, pool, out, estimator=_ita(pool), progress=False)
    assert PartialState().device.type == "cuda" and torch.cuda.max_memory_allocated() > 0
    assert AcceleratorState().mixed_precision == precision
    assert np.isfinite(run.log[["loss", "denoise", "fair_kl"]].to_numpy()).all()
    assert (run.log["n_fair"] > 0).any()  # the fairness loss ran on the GPU too
    weights = load_file(out / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    return run


def _plan() -> pd.DataFrame:
    table = pd.DataFrame({"fitzpatrick_scale": [1, 2, 5, 6], "lesion": ["melanoma", "nevus"] * 2})
    return balance.plan_quota(table, "per_cell", per_cell=1, max_ratio=None,
                              lesions=("melanoma", "nevus"))  # 12 images, every FST


def _samples_to_disk(model, sched, out):
    df = sample.generate_to_disk(model.to(CUDA), sched, _plan(), out, variant="bmg", fst_cond=True,
                                 model_id="gpu", steps=2, guidance=0.5, batch_size=5, progress=False)
    assert len(df) == 12 and sorted(df["plan_fst"].unique()) == list(schema.FST_LEVELS)
    assert set(df["estimated_fst"]) <= set(schema.FST_LEVELS)
    return df


@pytest.mark.parametrize("precision", PRECISIONS)
def test_unet_trains_with_mixed_precision_and_samples_on_cuda(tiny_synthetic, tmp_path, precision):
    pool, _ = tiny_synthetic
    cfg = _cfg(**{"diffusion.mixed_precision": precision})
    _train_on_cuda(cfg, pool, tmp_path / "unet", precision)
    model, run_cfg = train.load_trained(tmp_path / "unet")
    sched = schedule.model_scheduler(model, run_cfg.diffusion)
    fst, lesion = torch.tensor([1, 6, 3]), torch.tensor([0, 1, 3])
    on_cpu = sample.sample(model, sched, fst, lesion, steps=5, seed=1)
    on_gpu = sample.sample(model.to(CUDA), sched, fst, lesion, steps=5, seed=1)
    assert on_gpu.device.type == "cpu" and on_gpu.shape == (3, 3, 32, 32)
    assert (on_gpu - on_cpu).abs().max() < 1e-3  # same noise (CPU generator), same DDIM steps
    _samples_to_disk(model, sched, tmp_path / "samples")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_stable_diffusion_pipeline_trains_with_mixed_precision_and_samples_on_cuda(
        tiny_synthetic, tmp_path, precision):
    pool, _ = tiny_synthetic
    base = model_sd.build_tiny_sd(tmp_path)
    cfg = _cfg(**{"diffusion.backbone": "sd", "diffusion.sd_path": str(base),
                  "diffusion.mixed_precision": precision})
    _train_on_cuda(cfg, pool, tmp_path / "sd", precision)
    model, run_cfg = train.load_trained(tmp_path / "sd")
    model = model.to(CUDA)
    x = sample.sample(model, None, torch.tensor([1, 6]), torch.tensor([0, 3]), steps=2)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all() and x.abs().max() <= 1
    _samples_to_disk(model, schedule.model_scheduler(model, run_cfg.diffusion), tmp_path / "samples")


# a tiny ResNet-18 (first stage 4 channels) on 16 px images, as in test_downstream.py
TINY = {"downstream.width": 4, "downstream.image_size": 16, "downstream.epochs": 2,
        "downstream.epoch_images": 64, "downstream.batch_size": 16, "downstream.seeds": 1}


def test_downstream_classifier_trains_on_cuda_and_reloads_on_the_cpu(tiny_synthetic, tmp_path):
    pool, test = tiny_synthetic
    val_mask = np.zeros(len(pool), bool)
    for _, rows in pool.groupby("lesion"):
        val_mask[rows.index[::3]] = True  # melanomas in validation too, for its AUC
    train_df, val_df = pool[~val_mask].reset_index(drop=True), pool[val_mask].reset_index(drop=True)
    cfg = config.get_config("quick", TINY).downstream
    r = D.run_arm("real", train_df, val_df, test, cfg, seed=0, out_dir=tmp_path / "run", progress=False)
    assert torch.cuda.max_memory_allocated() > 0 and np.isfinite(r.history["loss"]).all()
    p = r.predictions["p_melanoma"].to_numpy()
    model = D.load_arm_model(r)  # weights saved from the GPU, rebuilt on the CPU
    assert next(model.parameters()).device.type == "cpu"
    p_cpu = 1 / (1 + np.exp(-D.predict_logits(model, D.load_images(test, 16, False))))
    np.testing.assert_allclose(p_cpu, p, atol=1e-4)
