"""Training-step speed of the CPU denoiser vs the diffusers default layout, on 2 threads.

    python benchmarks/train_step.py [--steps N] [--quick] [--threads 2] [--no-64]

For each model: seconds per training step (forward + backward + AdamW step, median of ``--steps``
after 2 warm-up steps), images/s, parameters, and the achieved GFLOP/s — the FLOPs of one
forward + backward (``torch.utils.flop_counter.FlopCounterMode``; the AdamW update is elementwise
and not counted) divided by s/step — as a ratio to a dense fp32 1024² matmul measured in the same
run. A low ratio means the step is bound by memory traffic, norms and attention overhead rather
than arithmetic. The machine's load average is printed: other jobs on the 2 cores inflate s/step.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from bmglib.diffusion.model import build_default_unet, build_unet

THREADS = 2
WARMUP = 2
# (label, builder, image size, batch)
CONFIGS = (
    ("build_unet", lambda: build_unet(32), 32, 32),
    ("build_default_unet", lambda: build_default_unet(32), 32, 32),
    ("build_unet", lambda: build_unet(64), 64, 16),
)


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the CUDA attention kernels only; on the CPU ``scaled_dot_product_
    attention`` runs ``_scaled_dot_product_flash_attention_for_cpu`` and would count 0 FLOPs."""
    aten = torch.ops.aten
    fwd, bwd = (aten._scaled_dot_product_flash_attention_for_cpu,
                aten._scaled_dot_product_flash_attention_for_cpu_backward)
    if fwd not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(fwd)
        def _fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query, key, value)
    if bwd not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(bwd)
        def _bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def matmul_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Dense fp32 ``torch.mm`` of two (n, n) matrices: GFLOP/s, median of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _step_fn(model: torch.nn.Module, size: int, batch: int):
    """A closure doing forward + backward (+ AdamW step unless ``optimize=False``) on fixed data."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    noise = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    fst = torch.randint(1, 7, (batch,), generator=g)
    lesion = torch.randint(0, 4, (batch,), generator=g)
    ctx = torch.randn(batch, 2, 64, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    default = not hasattr(model, "conditioner")

    def step(optimize: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        pred = (model(x, t, encoder_hidden_states=ctx).sample if default
                else model(x, t, fst, lesion))
        F.mse_loss(pred, noise).backward()
        if optimize:
            opt.step()

    return step


def measure(builder, size: int, batch: int, steps: int) -> dict:
    """s/step (median), img/s, params and FLOPs of one forward + backward for one model."""
    torch.manual_seed(0)
    model = builder().train()
    step = _step_fn(model, size, batch)
    with flop_counter.FlopCounterMode(display=False) as counter:
        step(optimize=False)
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    gflop = counter.get_total_flops() / 1e9
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "sec": sec,
            "img_s": batch / sec, "gflop": gflop, "gflop_s": gflop / sec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model (median)")
    ap.add_argument("--quick", action="store_true", help="3 timed steps per model")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 2)")
    ap.add_argument("--no-64", action="store_true", help="skip the 64×64 configuration")
    args = ap.parse_args()
    steps = 3 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    _register_cpu_attention_flops()
    load = os.getloadavg()[0]
    mm = matmul_gflops()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {steps} timed steps after {WARMUP} "
          f"warm-up, load average {load:.2f}; fp32 1024² matmul: {mm:.1f} GFLOP/s")
    head = (f"{'model':<20} {'size':>4} {'batch':>5} {'params M':>8} {'s/step':>7} {'img/s':>6} "
            f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'/matmul':>7}")
    print(head)
    print("-" * len(head))
    for name, builder, size, batch in CONFIGS:
        if args.no_64 and size == 64:
            continue
        r = measure(builder, size, batch, steps)
        print(f"{name:<20} {size:>4} {batch:>5} {r['params_m']:>8.2f} {r['sec']:>7.3f} "
              f"{r['img_s']:>6.1f} {r['gflop']:>10.1f} {r['gflop_s']:>8.1f} "
              f"{r['gflop_s'] / mm:>7.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
