"""Sampler speed and quality on the CPU model: DDIM-50 vs DPM-Solver++-20 (both with guidance).

    python benchmarks/sampling.py [--profile quick] [--variant bmg] [--per-cell 10] [--threads 2]

Needs a trained variant (notebook 02 or ``python -m bmglib.diffusion.train``). For each sampler: images/s
(wall time of the whole set, one process, ``--threads`` torch threads), then KID of each set
against the real test images (the same reference, equal N, bootstrap 95% CI) and the KID between
the two sample sets. The fast sampler passes when its KID to the real images is not above DDIM-50's
CI. Images are drawn balanced per FST × lesion cell, the same labels and seed for both samplers.
The machine's load average is printed: other jobs on the 2 cores inflate the times.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bmglib import config, paths
from bmglib.data import prepare
from bmglib.diffusion import balance, sample, schedule, train
from bmglib.metrics import image

SAMPLERS = (("ddim", 50), ("dpmpp", 20))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--variant", default="bmg")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--per-cell", type=int, default=10, help="images per FST × lesion cell and sampler")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.get_config(args.profile)
    model, run_cfg = train.load_trained(paths.run_dir(args.profile, args.variant))
    sched = schedule.model_scheduler(model, run_cfg.diffusion)
    meta = prepare.load_prepared(args.profile, args.dataset)
    train_df, test_df = meta[meta["split"] == "train"], meta[meta["split"] == "test"]
    plan = balance.plan_quota(train_df, "per_cell", per_cell=args.per_cell, max_ratio=None)
    print(f"load average {os.getloadavg()[0]:.2f} · {args.variant} ({args.profile}) · "
          f"{plan['n_synthetic'].sum()} images per sampler · guidance {cfg.sampling.guidance}")
    rows, feats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in SAMPLERS:
            t0 = time.perf_counter()
            df = sample.generate_to_disk(model, sched, plan, Path(tmp) / name, variant=args.variant,
                                         fst_cond=run_cfg.diffusion.fst_cond, model_id="benchmark",
                                         size=run_cfg.diffusion.image_size, steps=steps,
                                         guidance=cfg.sampling.guidance, sampler=name, seed=0,
                                         batch_size=cfg.sampling.batch_size, progress=False)
            sec = time.perf_counter() - t0
            feats[name] = image.image_features(df["image_path"].tolist(), cache=False)
            rows.append({"sampler": f"{name}-{steps}", "images": len(df), "seconds": sec,
                         "images/s": len(df) / sec})
    real = balance.per_cell_subset(test_df, args.per_cell, seed=0)
    real_feats = image.image_features(real["image_path"].tolist())
    n = min(len(real_feats), *(len(f) for f in feats.values()))
    for row, f in zip(rows, feats.values(), strict=True):
        boot = image.kid_bootstrap(real_feats[:n], f[:n], n_boot=500)
        row |= {"KID to real": float(image.kid_subsets(real_feats[:n], f[:n]).mean()),
                "CI low": float(np.percentile(boot, 2.5)), "CI high": float(np.percentile(boot, 97.5))}
    table = pd.DataFrame(rows).set_index("sampler")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    between = image.kid_subsets(feats["ddim"], feats["dpmpp"]).mean()
    print(f"KID(ddim-50, dpmpp-20) = {between:.4g}  (n={n} real reference images)")
    fast, slow = table.iloc[1], table.iloc[0]
    verdict = "not worse" if fast["KID to real"] <= slow["CI high"] else "WORSE"
    print(f"speed-up {fast['images/s'] / slow['images/s']:.2f}x; dpmpp-20 is {verdict} than ddim-50's CI")


if __name__ == "__main__":
    main()
