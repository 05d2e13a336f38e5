"""Training and inference speed of the downstream classifier, and the projected time of a profile.

    python benchmarks/classifier_speed.py [--threads 2] [--profile quick] [--steps 6] [--widths 64,32]

For each first-stage width of the profile's architecture: training images/s (forward + backward +
AdamW step on a batch of the profile's size, median of ``--steps`` after 2 warm-up steps, with the
D4 augmentation and uint8 → float conversion as in training) and inference images/s. The projection
for arms × seeds assumes the quick data (5.1k real + up to 1.5k synthetic training images — only
``epoch_images`` per epoch count —, 903 validation images scored every epoch, 960 test images).
The load average is printed: other jobs on the 2 cores slow every number down.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from bmglib import augment, config, trainer
from bmglib import downstream as D

N_VAL, N_TEST, ARMS = 903, 960, 3


def train_rate(cfg: config.DownstreamConfig, steps: int) -> float:
    """Training images/s of ``cfg``'s model on random uint8 images."""
    model = D.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))
    s, b = cfg.image_size, cfg.batch_size
    x = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)
    y = (torch.rand(b) < 0.25).float()
    gen = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        loss = loss_fn(model(augment.get(D.AUGMENT)(trainer.to_float(x), gen)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return b / float(np.median(times[2:]))


def eval_rate(cfg: config.DownstreamConfig) -> float:
    model = D.build_model(cfg)
    x = torch.randint(0, 256, (512, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    D.predict_logits(model, x[:64])
    t = time.perf_counter()
    D.predict_logits(model, x)
    return len(x) / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--widths", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = config.get_config(args.profile).downstream
    widths = [int(w) for w in args.widths.split(",")] if args.widths else [base.width]
    print(f"threads={args.threads} load average={os.getloadavg()} profile={args.profile}")
    for w in widths:
        cfg = dataclasses.replace(base, width=w)
        tr, ev = train_rate(cfg, args.steps), eval_rate(cfg)
        per_run = (cfg.epochs * cfg.epoch_images / tr + (cfg.epochs * N_VAL + N_TEST) / ev)
        total = per_run * ARMS * cfg.seeds
        print(f"{cfg.arch} width={w} {cfg.image_size}px small_stem={cfg.small_stem}: "
              f"train {tr:.0f} img/s, eval {ev:.0f} img/s; {cfg.epochs}×{cfg.epoch_images} "
              f"images/run → {per_run:.0f} s/run, {ARMS} arms × {cfg.seeds} seeds {total / 60:.1f} min")


if __name__ == "__main__":
    main()
