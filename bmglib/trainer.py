"""One training loop for the small supervised models: ``fit(model, data, cfg, loss, ...)``.

    torch.manual_seed(seed)                       # the caller seeds and builds the model
    model = classifiers.SmallCNN(16, n_out=6)
    res = fit(model, class_balanced(x, y, 6), FitConfig(epochs=6, augment="flip_rot90_per_batch",
              seed=seed), cross_entropy)

What a caller chooses (improved-diffusion's ``TrainLoop(model=, diffusion=, data=)`` is the
model: the loop is given what it trains on, never builds it):

* **data** (:class:`TrainData`): tensors and the per-epoch order of their rows — a permutation
  (:func:`shuffled`), class-balanced draws (:func:`class_balanced`), or any ``order(epoch, gen)``
  (the downstream classifier's fixed melanoma share);
* **cfg** (:class:`FitConfig`): epochs, batch size, AdamW, LR schedule (OneCycle or none), the
  augmentation by name (:mod:`bmglib.augment`), which validation metric picks the epoch;
* **loss**: ``loss(model, x, y) -> loss`` or ``(loss, {name: part})`` (parts are logged);
* **validate**: ``validate(model) -> {metric: value}`` after every epoch;
* **callbacks**: ``fn(epoch, row)`` after every epoch, or objects with ``on_fit_start(state)`` /
  ``on_epoch_end(state, row)`` — :class:`Checkpoint` saves every epoch and resumes exactly.

Random numbers: one ``torch.Generator`` seeded with ``cfg.seed`` draws the order and the
augmentation of every epoch, in that order; with ``data.epoch_generator`` each epoch gets its own
(then an epoch depends only on its index, which makes resuming trivially exact). The global torch
generator is the caller's (model initialisation, dropout, a VAE's reparameterisation).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from bmglib import augment

Order = Callable[[int, torch.Generator], torch.Tensor]  # (0-based epoch, generator) → (M,) long
#: (model, x batch, y batch or None) → the loss, or (the loss, {name: a logged part})
Loss = Callable[..., torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]]
SCHEDULES = ("none", "onecycle")
LOSS_MEANS = ("batch", "image")


@dataclass
class FitConfig:
    """How :func:`fit` trains (the data and the model are its arguments)."""

    epochs: int
    batch_size: int = 64
    lr: float = 2e-3  # AdamW learning rate (OneCycle: its peak)
    weight_decay: float = 1e-4  # AdamW
    schedule: str = "none"  # none | onecycle (one step per batch)
    pct_start: float = 0.3  # OneCycle: share of the steps spent warming up
    augment: str = "none"  # a name in bmglib.augment.AUGMENTATIONS, applied to every batch
    select: str = ""  # validation metric whose highest epoch is kept ("": the last epoch)
    loss_mean: str = "batch"  # an epoch's logged loss: mean over batches | "image": over images
    seed: int = 0  # seeds the generator of data order and augmentation
    desc: str = "epochs"  # progress bar label
    progress: bool = True
    leave: bool = False  # keep the finished progress bar

    def __post_init__(self):
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES),
                                     ("loss_mean", self.loss_mean, LOSS_MEANS),
                                     ("augment", self.augment, tuple(augment.AUGMENTATIONS))):
            if value not in allowed:
                raise ValueError(f"FitConfig.{name} must be one of {allowed}, got {value!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"FitConfig needs epochs >= 0 and batch_size >= 1, got {self.epochs}, "
                             f"{self.batch_size}")


@dataclass
class TrainData:
    """What :func:`fit` trains on.

    ``x``: (N, C, H, W) float in [-1, 1], or uint8 in [0, 255] (converted per batch by
    :func:`to_float`, 4× less memory); ``y``: targets indexed like ``x`` ((N,) or (N, K)), or None
    (e.g. an autoencoder); ``order(epoch, gen)``: the rows of an epoch, ``size`` of them, batched
    in that order; ``epoch_generator(epoch)``: a fresh generator per epoch (None: one generator,
    seeded with ``FitConfig.seed``, for all epochs).
    """

    x: torch.Tensor
    y: torch.Tensor | None
    order: Order
    size: int
    epoch_generator: Callable[[int], torch.Generator] | None = None


def shuffled(x: torch.Tensor, y: torch.Tensor | None = None) -> TrainData:
    """Every row once per epoch, in a fresh random permutation."""
    n = len(x)
    return TrainData(x, y, lambda epoch, gen: torch.randperm(n, generator=gen), n)


def class_balanced(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> TrainData:
    """N rows per epoch drawn with replacement, each with weight 1 / (its class's count): every
    class ``0..n_classes-1`` of ``y`` (N,) long is drawn equally often in expectation."""
    weights = 1.0 / torch.bincount(y, minlength=n_classes).clamp_min(1).double()[y]
    n = len(x)
    return TrainData(x, y, lambda epoch, gen: torch.multinomial(weights, n, replacement=True,
                                                                generator=gen), n)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


@dataclass
class FitState:
    """What a callback sees (and :class:`Checkpoint` saves and restores)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator | None  # the shared generator (None with per-epoch generators)
    epoch: int = 0  # epochs done
    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0  # 1-based
    best_state: dict[str, torch.Tensor] | None = None  # CPU copy of the selected epoch's weights


@dataclass
class FitResult:
    model: nn.Module  # the selected epoch's weights, eval mode
    history: pd.DataFrame  # per epoch: epoch, loss (+ parts), validation metrics, lr, seconds,
    #                        images_per_s, best
    best_epoch: int  # 1-based
    resumed_from: int  # epoch of the checkpoint resumed from (0 = fresh)


class Callback:
    """Hooks of :func:`fit`; a plain function ``fn(epoch, row)`` is an ``on_epoch_end``."""

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch (e.g. restore a checkpoint into ``state``)."""

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        """After every epoch, once ``state`` holds it; raising interrupts training."""


class _EpochEnd(Callback):
    def __init__(self, fn: Callable[[int, dict], None]):
        self.fn = fn

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        self.fn(state.epoch, row)


def fit(model: nn.Module, data: TrainData, cfg: FitConfig, loss: Loss,
        validate: Callable[[nn.Module], dict] | None = None,
        callbacks: Sequence[Callback | Callable[[int, dict], None]] = ()) -> FitResult:
    """Train ``model`` (on its own device; batches are moved there) on ``data`` with AdamW.

    Every epoch: ``model.train()``, the epoch's order, batches of ``cfg.batch_size`` (augmented,
    then ``loss``, backward, optimiser and scheduler step), then ``validate(model)`` and the
    callbacks. With ``cfg.select`` the epoch with the highest ``validate()[cfg.select]`` is kept
    (the first epoch, then only a strictly higher score: a NaN never replaces it).
    """
    if cfg.select and validate is None:
        raise ValueError(f"FitConfig.select={cfg.select!r} needs a validate function")
    hooks = [cb if isinstance(cb, Callback) else _EpochEnd(cb) for cb in callbacks]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(data.size / cfg.batch_size)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1),
                                                 pct_start=cfg.pct_start)
             if cfg.schedule == "onecycle" else None)
    gen = None if data.epoch_generator else torch.Generator().manual_seed(cfg.seed)
    state = FitState(model, opt, sched, gen)
    for h in hooks:
        h.on_fit_start(state)
    resumed_from = state.epoch
    bar = tqdm(range(state.epoch, cfg.epochs), initial=state.epoch, total=cfg.epochs, desc=cfg.desc,
               disable=not cfg.progress, leave=cfg.leave)
    for epoch in bar:
        t0 = time.perf_counter()
        parts = _train_epoch(state, data, cfg, loss, epoch)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **_epoch_means(parts, cfg.loss_mean),
               **(validate(model) if validate else {}),
               "lr": sched.get_last_lr()[0] if sched else opt.param_groups[0]["lr"],
               "seconds": seconds, "images_per_s": data.size / seconds}
        state.history.append(row)
        if not cfg.select:
            state.best_epoch = epoch + 1
        elif state.best_state is None or row[cfg.select] > state.best_score:
            state.best_score, state.best_epoch = row[cfg.select], epoch + 1
            state.best_state = {k: v.detach().cpu().clone().contiguous()
                                for k, v in model.state_dict().items()}
        state.epoch = epoch + 1
        bar.set_postfix(loss=f"{row['loss']:.3f}",
                        **({cfg.select: f"{row[cfg.select]:.3f}"} if cfg.select else {}))
        for h in hooks:
            h.on_epoch_end(state, row)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    history = pd.DataFrame(state.history).assign(best=lambda h: h["epoch"] == state.best_epoch)
    return FitResult(model.eval(), history, state.best_epoch, resumed_from)


def _train_epoch(state: FitState, data: TrainData, cfg: FitConfig, loss: Loss,
                 epoch: int) -> list[tuple[int, dict[str, float]]]:
    """One pass over ``data.order(epoch)``; returns (batch size, logged values) per batch."""
    model, opt, sched = state.model, state.optimizer, state.scheduler
    device = next(model.parameters()).device
    gen = data.epoch_generator(epoch) if data.epoch_generator else state.generator
    transform = augment.get(cfg.augment)
    model.train()
    order = data.order(epoch, gen)
    parts = []
    for idx in order.split(cfg.batch_size):
        xb = data.x[idx]
        xb = transform(to_float(xb) if xb.dtype == torch.uint8 else xb, gen).to(device)
        yb = data.y[idx].to(device) if data.y is not None else None
        out = loss(model, xb, yb)
        value, logged = out if isinstance(out, tuple) else (out, {})
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if sched is not None:
            sched.step()
        parts.append((len(idx), {"loss": value.item(), **{k: v.item() for k, v in logged.items()}}))
    return parts


def _epoch_means(parts: list[tuple[int, dict[str, float]]], how: str) -> dict[str, float]:
    """Per logged name: the mean over batches (``batch``) or over images (``image``)."""
    if not parts:
        return {"loss": float("nan")}
    if how == "batch":
        return {k: float(np.mean([p[k] for _, p in parts])) for k in parts[0][1]}
    total, sums = sum(n for n, _ in parts), dict.fromkeys(parts[0][1], 0.0)
    for n, p in parts:
        for k in sums:
            sums[k] += n * p[k]
    return {k: s / total for k, s in sums.items()}


class Checkpoint(Callback):
    """Save everything after every epoch to ``path`` and resume from it when its ``run_id``
    matches: weights (safetensors), the selected epoch's weights, optimiser, scheduler, torch's
    global RNG and the shared generator, history. A resumed run ends with the same weights as an
    uninterrupted one. A checkpoint of another ``run_id`` is ignored (training starts afresh)."""

    def __init__(self, path: str | Path, run_id: str):
        self.path, self.run_id = Path(path), run_id

    def on_fit_start(self, state: FitState) -> None:
        ck = self.path
        if not (ck / "state.pt").exists():  # interrupted between the two renames of on_epoch_end
            ck = ck.with_name(ck.name + ".old")
        if not (ck / "state.pt").exists():
            return
        saved = torch.load(ck / "state.pt", weights_only=False)
        if saved.get("run_id") != self.run_id:
            return
        state.model.load_state_dict(load_file(ck / "model.safetensors"))
        state.optimizer.load_state_dict(saved["opt"])
        if state.scheduler is not None:
            state.scheduler.load_state_dict(saved["sched"])
        if state.generator is not None:
            state.generator.set_state(saved["gen"])
        torch.set_rng_state(saved["torch_rng"])
        state.epoch, state.history = saved["epoch"], saved["history"]
        state.best_score, state.best_epoch = saved["best_score"], saved["best_epoch"]
        if (ck / "best.safetensors").exists():
            state.best_state = load_file(ck / "best.safetensors")

    def on_epoch_end(self, state: FitState, row: dict) -> None:
        """Write atomically (a temporary folder renamed): the checkpoint exists only complete."""
        ck = self.path
        tmp = ck.with_name(ck.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.model.state_dict().items()},
                  tmp / "model.safetensors")
        if state.best_state is not None:
            save_file(state.best_state, tmp / "best.safetensors")
        torch.save({"run_id": self.run_id, "epoch": state.epoch, "history": state.history,
                    "best_score": state.best_score, "best_epoch": state.best_epoch,
                    "opt": state.optimizer.state_dict(),
                    "sched": state.scheduler.state_dict() if state.scheduler else None,
                    "gen": state.generator.get_state() if state.generator is not None else None,
                    "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
        old = ck.with_name(ck.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if ck.exists():
            ck.rename(old)
        tmp.rename(ck)
        shutil.rmtree(old, ignore_errors=True)
