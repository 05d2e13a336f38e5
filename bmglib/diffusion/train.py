"""Training of the conditional diffusion model: an ``accelerate`` loop that resumes exactly.

    run = train_diffusion(cfg, train_df, out_dir, estimator=est)      # or resumes out_dir

* ``accelerate`` (``accelerate launch`` scales it to several GPUs): gradient accumulation, mixed
  precision where the device supports it; EMA weights (diffusers ``EMAModel``); tqdm progress; a
  CSV log of every step's losses; callbacks ``fn(step, logs)``.
* Every ``checkpoint_every`` steps: weights (safetensors), EMA, optimiser, scheduler and every
  random state (noise, timesteps, label drop, augmentation, data order position). A killed run
  resumed from its last checkpoint ends with the same weights as an uninterrupted one.
* A non-finite loss stops the run, naming the step and the last good checkpoint (kept).

Batches come from :class:`bmglib.diffusion.balance.CellBalancedSampler` (distribution-aware resampling,
``alpha``). The noise, learning-rate and fairness-ramp schedules are ``bmglib.diffusion.schedule``;
the loss of a batch (noise, timesteps, label drop, denoising target, fairness terms with a frozen
FST estimator given as argument, gradient balancing) is ``bmglib.diffusion.losses.training_losses``;
this loop only batches, back-propagates, clips, steps and checkpoints.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from bmglib import augment, config
from bmglib.data.images import LESION_INDEX, load_image
from bmglib.diffusion import losses, schedule
from bmglib.diffusion.balance import CellBalancedSampler
from bmglib.diffusion.model import build_unet

Callback = Callable[[int, dict], None]
LOG_COLUMNS = ["step", "loss", "denoise", "fair_kl", "fair_ce", "n_fair", "fair_scale", "lr", "seconds"]


def build_model(d: config.DiffusionConfig) -> torch.nn.Module:
    """The denoiser named by ``d.backbone``: the CPU UNet, or Stable Diffusion from ``d.sd_path``."""
    if d.backbone == "unet":
        c = d.base_channels
        return build_unet(d.image_size, (c, 2 * c, 2 * c), d.cond_dim, pooled=d.pooled_cond)
    if d.backbone == "sd":
        from bmglib.diffusion import model_sd

        if not d.sd_path:
            raise ValueError("diffusion.backbone='sd' needs diffusion.sd_path: a local diffusers SD folder")
        return model_sd.build_sd(d.sd_path, mode=d.sd_mode, trainable=d.sd_trainable,
                                 lora_rank=d.lora_rank, cond_dim=d.cond_dim)
    raise ValueError(f"diffusion.backbone must be 'unet' or 'sd', got {d.backbone!r}")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights training changes (all of the CPU UNet; LoRA/UNet + conditioner of SD)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise KeyError(f"checkpoint does not match the model: missing {sorted(trainable & set(missing))[:5]}, "
                       f"unexpected {unexpected[:5]}")


class BatchStream:
    """Deterministic, resumable batches: (epoch, position) in the sampler's per-epoch order.

    Images are decoded once (``size``×``size``) and kept as a uint8 tensor (N, 3, S, S).
    """

    def __init__(self, df: pd.DataFrame, d: config.DiffusionConfig, progress: bool = True):
        self.df = df.reset_index(drop=True)
        imgs = [load_image(p, d.image_size) for p in tqdm(self.df["image_path"], desc="loading images",
                                                          disable=not progress, leave=False)]
        self.images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
        self.fst = torch.tensor(self.df["fitzpatrick_scale"].to_numpy(), dtype=torch.long)
        self.lesion = torch.tensor([LESION_INDEX[v] for v in self.df["lesion"]], dtype=torch.long)
        cap = d.repeat_cap if d.repeat_cap > 0 else None
        self.sampler = CellBalancedSampler(self.df, alpha=d.alpha, repeat_cap=cap, seed=d.seed)
        self.batch_size, self.epoch, self.pos = d.batch_size, 0, 0
        self._order: list[int] | None = None

    def _ensure_order(self):
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(iter(self.sampler))

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images uint8 (B,3,S,S), fst (B,), lesion (B,)) — full batches only."""
        self._ensure_order()
        if self.pos + self.batch_size > len(self._order):
            self.epoch, self.pos, self._order = self.epoch + 1, 0, None
            self._ensure_order()
        idx = torch.tensor(self._order[self.pos:self.pos + self.batch_size])
        self.pos += self.batch_size
        return self.images[idx], self.fst[idx], self.lesion[idx]

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, s: dict):
        self.epoch, self.pos, self._order = s["epoch"], s["pos"], None


@dataclass
class TrainRun:
    model: torch.nn.Module  # EMA weights, eval mode
    log: pd.DataFrame
    out_dir: Path
    resumed_from: int  # step of the checkpoint resumed from (0 = fresh)


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def _save_checkpoint(out_dir, step, model, ema, opt, sched, gen, stream, log_rows, keep=2) -> Path:
    ck = out_dir / "checkpoints" / f"step_{step:07d}"
    tmp = ck.with_name(ck.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "model.safetensors")
    torch.save({"ema": ema.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "gen": gen.get_state(), "stream": stream.state(), "step": step}, tmp / "state.pt")
    pd.DataFrame(log_rows, columns=LOG_COLUMNS).to_csv(tmp / "log.csv", index=False)
    tmp.rename(ck)  # a checkpoint exists only once it is complete
    for old in _checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)
    return ck


def train_diffusion(cfg: config.Config, train_df: pd.DataFrame, out_dir: str | Path,
                    estimator: torch.nn.Module | None = None, callbacks: tuple[Callback, ...] = (),
                    progress: bool = True, resume: bool = True) -> TrainRun:
    """Train (or resume) the variant ``cfg.diffusion`` on ``train_df`` (schema table with images).

    ``estimator``: frozen FST estimator for the fairness loss, (B,3,H,W) in [-1,1] → (B,6)
    probabilities; required when ``lambda_kl`` or ``lambda_ce`` > 0.
    """
    d, out_dir = cfg.diffusion, Path(out_dir)
    if (d.lambda_kl > 0 or d.lambda_ce > 0) and estimator is None:
        raise ValueError("the fairness loss is on (lambda_kl/lambda_ce > 0) but no FST estimator was given")
    if d.fair_target not in ("requested", "calibrated"):
        raise ValueError(f"diffusion.fair_target must be 'requested' or 'calibrated', got {d.fair_target!r}")
    if (estimator is not None and d.fair_target == "calibrated"
            and getattr(estimator, "real_probs", None) is None):
        raise ValueError("diffusion.fair_target='calibrated' needs the estimator's mean output on real images "
                         "per FST as estimator.real_probs (skintone.get_fst_estimator sets it; or "
                         "skintone.real_fst_probs)")
    torch.manual_seed(d.seed)
    accel = Accelerator(gradient_accumulation_steps=d.grad_accum,
                        mixed_precision=d.mixed_precision if torch.cuda.is_available() else "no")
    model = build_model(d)
    sched = schedule.model_scheduler(model, d)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=d.lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule.lr_factor(s, d))
    ema = EMAModel(params, decay=d.ema_decay, use_ema_warmup=d.ema_power > 0, power=d.ema_power or 2 / 3)
    gen = torch.Generator().manual_seed(d.seed)
    stream = BatchStream(train_df, d, progress)
    start, log_rows = 0, []
    ckpts = _checkpoints(out_dir) if resume else []
    if ckpts:
        start, log_rows = _load_checkpoint(ckpts[-1], model, ema, opt, lr_sched, gen, stream)
    elif out_dir.exists() and not resume:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    model, opt = accel.prepare(model, opt)
    if estimator is not None:
        estimator.to(accel.device).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=2))
    last_ck = ckpts[-1] if ckpts else None
    bar = tqdm(range(start, d.steps), initial=start, total=d.steps, desc=f"train {d.variant}",
               disable=not progress)
    for step in bar:
        t0 = time.perf_counter()
        logs = _train_step(model, opt, lr_sched, accel, sched, stream, gen, schedule.step_config(step, d), estimator,
                           schedule.fair_factor(step, d))
        if not np.isfinite(logs["loss"]):
            raise FloatingPointError(f"loss is {logs['loss']} at step {step + 1}: training stopped; "
                                     f"last good checkpoint: {last_ck or 'none (no checkpoint yet)'}")
        ema.step(params)
        logs.update(step=step + 1, lr=lr_sched.get_last_lr()[0], seconds=time.perf_counter() - t0)
        log_rows.append([logs[c] for c in LOG_COLUMNS])
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if (step + 1) % d.checkpoint_every == 0 or step + 1 == d.steps:
            last_ck = _save_checkpoint(out_dir, step + 1, accel.unwrap_model(model), ema, opt, lr_sched,
                                       gen, stream, log_rows)
        for cb in callbacks:  # after the checkpoint: a callback sees the step fully done
            cb(step + 1, logs)
    log = pd.DataFrame(log_rows, columns=LOG_COLUMNS)
    log.to_csv(out_dir / "log.csv", index=False)
    final = _export_ema(accel.unwrap_model(model), params, ema, out_dir, cfg, config.hash_table(train_df))
    return TrainRun(final, log, out_dir, start)


def _train_step(model, opt, lr_sched, accel, sched, stream, gen, d, estimator, factor=1.0) -> dict:
    """One optimiser step over ``d.grad_accum`` micro-batches; returns their mean logged losses."""
    sums = {"loss": 0.0, "denoise": 0.0, "fair_kl": 0.0, "fair_ce": 0.0, "n_fair": 0, "fair_scale": 0.0}
    net = accel.unwrap_model(model)
    latent = hasattr(net, "encode_images")  # Stable Diffusion denoises VAE latents
    for _ in range(d.grad_accum):
        imgs, fst, lesion = stream.next()
        x0 = augment.flips_per_image_rot90_per_batch(imgs.float() / 127.5 - 1.0, gen).to(accel.device)
        if d.lowres_size:  # progressive resolution: this step trains on the batch at the lower size
            x0 = torch.nn.functional.interpolate(x0, size=(d.lowres_size, d.lowres_size), mode="area")
        with accel.accumulate(model):
            terms = losses.training_losses(model, sched, x0, fst, lesion, d, gen, estimator=estimator,
                                           fair_factor=factor, encode=net.encode_images if latent else None,
                                           decode=net.decode_latents if latent else None)
            accel.backward(terms.loss)
            if accel.sync_gradients:
                accel.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()  # accelerate skips it until the last micro-batch of the accumulation
            if accel.sync_gradients:
                lr_sched.step()
            opt.zero_grad()
        for k, v in terms.logs().items():
            sums[k] += v if k == "n_fair" else v / d.grad_accum
    return sums


def _load_checkpoint(ck: Path, model, ema, opt, lr_sched, gen, stream):
    load_trainable_state(model, load_file(ck / "model.safetensors"))
    st = torch.load(ck / "state.pt", weights_only=False)
    ema.load_state_dict(st["ema"])
    opt.load_state_dict(st["opt"])
    lr_sched.load_state_dict(st["sched"])
    gen.set_state(st["gen"])
    stream.load_state(st["stream"])
    rows = pd.read_csv(ck / "log.csv").reindex(columns=LOG_COLUMNS, fill_value=0.0).values.tolist()
    return int(st["step"]), rows


def _export_ema(model, params, ema, out_dir: Path, cfg: config.Config, dataset_hash: str) -> torch.nn.Module:
    """Write ``final/`` (EMA weights, config, provenance) and return the EMA model in eval mode."""
    ema.store(params)
    ema.copy_to(params)
    final = out_dir / "final"
    final.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone() for k, v in trainable_state(model).items()}, final / "model.safetensors")
    (final / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=2))
    config.write_provenance(final / "provenance.json",
                            config.provenance(cfg, dataset_hash=dataset_hash, seed=cfg.diffusion.seed))
    exported = build_model(cfg.diffusion)
    load_trainable_state(exported, load_file(final / "model.safetensors"))
    ema.restore(params)
    return exported.eval()


def load_trained(run_dir: str | Path) -> tuple[torch.nn.Module, config.Config]:
    """Rebuild a trained model (EMA weights) from ``run_dir/final`` and its stored config."""
    final = Path(run_dir) / "final"
    if not (final / "model.safetensors").exists():
        raise FileNotFoundError(f"{final}/model.safetensors not found: train the variant first "
                                "(notebooks/02_conditional_finetune.ipynb)")
    cfg = config.from_dict(json.loads((final / "config.json").read_text()))
    model = build_model(cfg.diffusion)
    load_trainable_state(model, load_file(final / "model.safetensors"))
    return model.eval(), cfg


#: the config sections a trained model depends on (a change elsewhere, e.g. sampling, keeps it)
MODEL_SECTIONS = ("profile", "data", "diffusion")
#: diffusion settings that act only through the fairness loss: with it off they change nothing
FAIRNESS_ONLY = ("fair_target", "t_fair", "fair_start", "fair_ramp", "fair_balance", "estimator",
                 "estimator_epochs")


def model_identity(cfg: config.Config) -> dict:
    """What a trained model depends on: :data:`MODEL_SECTIONS` of the config, without the
    :data:`FAIRNESS_ONLY` settings when the fairness loss is off (both λ = 0; the weights are then
    the same whatever they are, tested), so that changing them does not retrain ``standard``, and
    without ``weighting_until`` or the ``lowres_`` settings where they have no effect."""
    raw = config.to_dict(cfg)
    out = {k: raw[k] for k in MODEL_SECTIONS}
    d, drop = out["diffusion"], set()
    if d["lambda_kl"] == 0 and d["lambda_ce"] == 0:
        drop |= set(FAIRNESS_ONLY)
    if d["loss_weighting"] == "none" or d["weighting_until"] == 1.0:
        # no effect (unweighted, or weighted throughout): the identity of the runs before the setting
        drop.add("weighting_until")
    if d["lowres_size"] == 0 or d["lowres_until"] == 0.0:  # progressive resolution off
        drop |= {"lowres_size", "lowres_until"}
    out["diffusion"] = {k: v for k, v in d.items() if k not in drop}
    return out


def train_variant(cfg: config.Config, meta: pd.DataFrame, progress: bool = True):
    """What notebook 02 calls: the variant ``cfg.diffusion.variant`` trained on the prepared
    table's ``train`` split, in ``paths.run_dir(profile, variant, diffusion.seed)`` (each generator
    seed is its own model, with its own estimator seed).

    Skips training when ``final/`` holds a model of the same resolved config and data; otherwise
    trains or resumes from the last checkpoint. Returns ``(TrainRun, estimator_report)``.
    """
    from bmglib import paths, skintone

    d = cfg.diffusion
    train_df = meta[meta["split"] == "train"].reset_index(drop=True)
    val_df = meta[meta["split"] == "val"].reset_index(drop=True)
    out = paths.run_dir(cfg.profile, d.variant, d.seed)
    est, report = None, {"kind": "none"}
    if d.lambda_kl > 0 or d.lambda_ce > 0:
        est, report = skintone.get_fst_estimator(d.estimator, train_df, val_df, d.image_size,
                                                 d.estimator_epochs, d.seed, progress)
    final = out / "final"
    if (final / "config.json").exists() and (final / "provenance.json").exists():
        try:
            stored = config.from_dict(json.loads((final / "config.json").read_text()))
            same_cfg = model_identity(stored) == model_identity(cfg)
        except config.ConfigError:  # stored by a version with other keys: retrain
            same_cfg = False
        same_data = json.loads((final / "provenance.json").read_text())["dataset_hash"] == config.hash_table(train_df)
        if same_cfg and same_data:
            model, _ = load_trained(out)
            return TrainRun(model, pd.read_csv(out / "log.csv"), out, d.steps), report
    if (final / "config.json").exists():  # a different config or dataset: start afresh
        shutil.rmtree(out)
    return train_diffusion(cfg, train_df, out, estimator=est, progress=progress), report


def main(argv=None) -> None:
    """``python -m bmglib.diffusion.train`` or, on several GPUs, ``accelerate launch -m bmglib.diffusion.train``."""
    import argparse

    from bmglib.data import prepare

    ap = argparse.ArgumentParser(prog="python -m bmglib.diffusion.train", description="train one diffusion variant")
    ap.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    ap.add_argument("--variant", default="bmg", choices=list(config.VARIANTS))
    ap.add_argument("--dataset", default="synthetic", help="a dataset notebook 01 prepared")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="strict overrides, e.g. diffusion.sd_path=/models/sd15 diffusion.steps=500")
    a = ap.parse_args(argv)
    cfg = config.with_variant(config.get_config(a.profile, config.parse_overrides(a.set)), a.variant)
    run, _ = train_variant(cfg, prepare.load_prepared(a.profile, a.dataset))
    print(f"{a.variant}: {len(run.log)} steps → {run.out_dir / 'final'}")


if __name__ == "__main__":
    main()
