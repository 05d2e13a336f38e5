"""Speed of the offline Inception feature extractor on the CPU (what FID/KID per FST cost).

    python benchmarks/inception_features.py [--n 64] [--batch 32] [--threads 1] [--size 64]

Prints images/s (median of 3 repeats) for: the network alone on (32, 3, 299, 299) tensors;
clean-fid's "clean" resize alone (PNG → 299×299 float, no network); the whole path of
``bmglib.metrics.image.image_features`` without its cache (PNG → resize → network); and a cache
hit (md5 of the files + loading the npz).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cleanfid import fid as cleanfid  # noqa: E402
from PIL import Image  # noqa: E402

from bmglib.data import schema, synthetic  # noqa: E402
from bmglib.metrics import image  # noqa: E402


def _rate(fn, n: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t))
    return float(np.median(rates))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="PNG files for the file-based rows")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64, help="side of the generated PNGs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = image.load_extractor("fid-helper")
    x = torch.rand(args.batch, 3, 299, 299) * 255

    def network():
        with torch.no_grad():
            model(x)

    rows = [("network only, 299² tensors", args.batch, _rate(network, args.batch))]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.n):
            img = synthetic.render(1 + i % 6, schema.LESIONS[i % 4], args.size, rng=i).image
            files.append(str(Path(tmp) / f"{i}.png"))
            Image.fromarray(img).save(files[-1])

        def resize():
            cleanfid.get_files_features(files, model=lambda b: b[:, :, 0, 0], num_workers=0,
                                        batch_size=args.batch, device=torch.device("cpu"),
                                        mode="clean", verbose=False)

        def full(cache=False):
            image.image_features(files, batch_size=args.batch, cache=cache,
                                 cache_root=Path(tmp) / "cache")

        rows.append((f"clean resize only, {args.size}² PNG", args.n, _rate(resize, args.n)))
        rows.append((f"PNG → features, {args.size}² PNG", args.n, _rate(full, args.n)))
        full(cache=True)
        rows.append(("cache hit (md5 + npz)", args.n, _rate(lambda: full(cache=True), args.n)))
    print(f"threads={args.threads} batch={args.batch} torch={torch.__version__}")
    print(f"{'stage':<32} {'images':>6} {'img/s':>9} {'s/img':>8}")
    for name, n, rate in rows:
        print(f"{name:<32} {n:>6} {rate:>9.2f} {1 / rate:>8.4f}")


if __name__ == "__main__":
    main()
