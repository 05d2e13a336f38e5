"""Speed of the procedural generator on one core (target: ≥ 200 images/s at 64×64).

    python benchmarks/generator_speed.py [--n 400]

Prints a table: size, images/s for rendering alone and for render + PNG encode + md5 (what
``generate_dataset`` does per image, minus the disk write), median of 3 repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: numpy's BLAS stays single-threaded

import numpy as np  # noqa: E402

from bmglib.data import schema, synthetic  # noqa: E402


def _rate(fn, n: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        rates.append(n / (time.perf_counter() - t))
    return float(np.median(rates))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    n = ap.parse_args().n
    print(f"{'size':>5} {'render img/s':>13} {'+png+md5 img/s':>15} {'target':>8}")
    for size in (32, 64, 128, 256):
        k = max(20, n * 64 * 64 // (size * size))

        def render(i, size=size):
            return synthetic.render(1 + i % 6, schema.LESIONS[i % 4], size, synthetic.image_rng(0, "pool", i))

        def full(i, size=size):
            return hashlib.md5(synthetic._encode_png(render(i, size).image)).hexdigest()

        r1 = _rate(render, k)
        r2 = _rate(full, k)
        target = "≥200" if size == 64 else ""
        print(f"{size:>5} {r1:>13.0f} {r2:>15.0f} {target:>8}")


if __name__ == "__main__":
    main()
