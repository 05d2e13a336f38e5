"""Sampler speed and quality on the CPU model, on validation data: which solver and step count.

    python benchmarks/sampling.py [--profile quick] [--variant bmg] [--run-dir DIR]
                                  [--samplers dpmpp:20,unipc:10,dpmpp:10@1.5,dpmpp:14@0.5/0.5]
                                  [--per-cell 20]
                                  [--batch-sizes 32,64,128] [--threads 2]

Needs a trained variant (notebook 02, ``python -m bmglib.diffusion.train``, or ``--run-dir`` of a
run with ``final/``, e.g. one of ``benchmarks/convergence.py``'s). Each sampler draws the same
requests (``--per-cell`` per FST × lesion cell) from the same seed (``name:steps``, or
``name:steps@w`` at guidance w instead of the profile's, or ``name:steps@w/f`` with the guidance on
the first fraction f of the solver steps only, one UNet pass per step after) and is scored with the
validation protocol of :mod:`bmglib.diffusion.validate` (KID to the real *validation* images with a
95% bootstrap CI, FST adherence by ITA and by the auditor, lesion adherence), with images/s of the
whole draw (one process, ``--threads`` torch threads). A sampler is "not worse" when its KID is not
above the first sampler's CI and its adherences are within 0.02 of the first's. Then images/s of the
first sampler at each batch size in ``--batch-sizes`` (the same requests). The machine's load average is printed: other jobs on the 2 cores inflate the times.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import pandas as pd
import torch

from bmglib import config, paths
from bmglib.data import prepare
from bmglib.diffusion import sample, schedule, train, validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--variant", default="bmg")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--run-dir", default="", help="a training run with final/ (default: the variant's run)")
    ap.add_argument("--samplers", default="dpmpp:20,unipc:10,dpmpp:10", help="name:steps, first = reference")
    ap.add_argument("--per-cell", type=int, default=20, help="images per FST × lesion cell and sampler")
    ap.add_argument("--batch-sizes", default="", help="comma-separated sampler batch sizes to time (first sampler)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, run_cfg = train.load_trained(args.run_dir or paths.run_dir(args.profile, args.variant))
    cfg = dataclasses.replace(config.get_config(args.profile), diffusion=run_cfg.diffusion)
    meta = prepare.load_prepared(args.profile, args.dataset)
    judges = validate.Judges.build(meta, run_cfg.diffusion.image_size)
    samplers = [_parse_sampler(s, cfg.sampling.guidance) for s in args.samplers.split(",")]
    for name, *_ in samplers:
        if name not in sample.SAMPLERS:
            raise SystemExit(f"unknown sampler {name!r}; choose from {list(sample.SAMPLERS)}")
    print(f"load average {os.getloadavg()[0]:.2f} · {args.variant} ({args.profile}) · {args.per_cell * 24} images "
          f"per sampler · guidance {cfg.sampling.guidance} · batch {cfg.sampling.batch_size} · "
          f"{len(judges.real_feats)} real validation images")
    rows = []
    for name, steps, guidance, until in samplers:
        row = validate.score(model, cfg, judges, args.per_cell, sampler=name, steps=steps, guidance=guidance,
                             guidance_until=until)
        row["sampler"] = f"{row['sampler']}@{guidance:g}" + (f"/{until:g}" if until < 1 else "")
        rows.append(row | {"load": os.getloadavg()[0]})
        print(f"  {row['sampler']}: {row['images_per_s']:.2f} img/s, KID {row['kid']:.4f}", flush=True)
    cols = ["sampler", "n", "images_per_s", "kid", "kid_low", "kid_high", "fst_ita", "fst_auditor", "lesion", "load"]
    table = pd.DataFrame(rows)[cols].set_index("sampler")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    ref = table.iloc[0]
    for name, row in table.iloc[1:].iterrows():
        ok = (row["kid"] <= ref["kid_high"] and row["fst_ita"] >= ref["fst_ita"] - 0.02
              and row["fst_auditor"] >= ref["fst_auditor"] - 0.02 and row["lesion"] >= ref["lesion"] - 0.02)
        print(f"{name}: {row['images_per_s'] / ref['images_per_s']:.2f}x the images/s of {table.index[0]}; "
              f"{'not worse' if ok else 'WORSE'} (KID vs its CI high {ref['kid_high']:.4f}, adherences within 0.02)")
    if args.batch_sizes:
        name, steps, *_ = samplers[0]
        fst, lesion = sample.grid_requests(args.per_cell)
        sched = schedule.model_scheduler(model, run_cfg.diffusion)
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            t0 = time.perf_counter()
            sample.sample(model, sched, fst if run_cfg.diffusion.fst_cond else None, lesion,
                          size=run_cfg.diffusion.image_size, steps=steps, guidance=cfg.sampling.guidance,
                          sampler=name, seed=1, batch_size=bs)
            print(f"batch {bs:>4}: {len(fst) / (time.perf_counter() - t0):.2f} img/s ({name}-{steps})")


def _parse_sampler(spec: str, default_guidance: float) -> tuple[str, int, float, float]:
    """``name:steps``, ``name:steps@guidance`` or ``name:steps@guidance/until`` → (name, steps,
    guidance, guidance_until)."""
    try:
        head, _, g = spec.partition("@")
        name, steps = head.split(":")
        g, _, until = g.partition("/")
        until = float(until) if until else 1.0
        if not 0 <= until <= 1:
            raise ValueError
        return name, int(steps), float(g) if g else default_guidance, until
    except ValueError:
        raise SystemExit(f"--samplers: {spec!r} is not name:steps, name:steps@guidance or "
                         f"name:steps@guidance/until (until in [0, 1])") from None


if __name__ == "__main__":
    main()
