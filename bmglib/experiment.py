"""The protocol's experiment (docs/protocol.md) as one resumable command, without the figures:

    python -m bmglib.experiment --profile quick --variants bmg,standard,no_fairloss --seeds 0,1,2

For each generator seed g (outer loop, so that a run cut short still holds whole seeds) and each
variant: train the generator (notebook 02's :func:`bmglib.diffusion.train.train_variant`), draw its
augmentation set (notebook 03's :func:`bmglib.diffusion.sample.draw_set`), then train the classifier
arms of every finished generator seed (notebook 05's :func:`bmglib.downstream.protocol_predictions`).
Every stage goes through the cache the notebooks use, so a killed run resumes where it stopped and
``make paper`` afterwards reuses the models, sample sets and classifier runs (the augmentation sets
only: notebook 03's evaluation sets are not drawn here).

Writes to ``figures/<profile>/``: ``05_protocol_predictions.csv.gz`` (the long prediction table,
one row per arm × generator seed × classifier seed × test image), ``05_decisions.csv``
(:func:`bmglib.downstream.decision_rules`) and ``experiment_stages.csv`` (wall seconds of every
stage, ``cached`` when it was already done).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pandas as pd

from bmglib import config, downstream, paths
from bmglib.data import prepare
from bmglib.diffusion import sample, train
from bmglib.metrics import sample_sets


def _stage(log: list[dict], stage: str, variant: str, seed: int, t0: float, **extra) -> None:
    log.append({"stage": stage, "variant": variant, "generator_seed": seed,
                "seconds": round(time.perf_counter() - t0, 1), **extra})
    print(f"[experiment] {stage} {variant} seed {seed}: {log[-1]['seconds']:.0f} s {extra or ''}", flush=True)


def run(profile: str, variants: Sequence[str], seeds: Sequence[int], dataset: str = "synthetic",
        overrides: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """Run the design for ``variants`` × ``seeds``; returns the decision table (and writes the
    files named in the module docstring after every generator seed)."""
    variants, seeds = sample_sets.parse_variants(variants), sample_sets.parse_seeds(seeds)
    if "bmg" not in variants:
        raise ValueError(f"experiment: the variants {variants} lack 'bmg', the arm the rules are about")
    meta = prepare.load_prepared(profile, dataset)
    train_df, val_df, test_df = (meta[meta["split"] == s] for s in ("train", "val", "test"))
    base = config.get_config(profile, overrides)
    out = paths.figures_dir(profile)
    log: list[dict] = []
    decisions = pd.DataFrame()
    for i, g in enumerate(seeds):
        for v in variants:
            cfg = config.with_variant(config.get_config(profile, {**(overrides or {}), "diffusion.seed": g}), v)
            t0 = time.perf_counter()
            tr, _ = train.train_variant(cfg, meta, progress)
            _stage(log, "train", v, g, t0, step_seconds=round(float(tr.log["seconds"].sum()), 1),
                   cached=tr.resumed_from == cfg.diffusion.steps)
            t0 = time.perf_counter()
            plan = sample.augmentation_plan(cfg, train_df)
            aug = sample.draw_set(cfg, train_df, "augment", plan, cfg.sampling.seed, progress=progress)
            _stage(log, "augment", v, g, t0, n_images=len(aug))
        t0 = time.perf_counter()
        preds, decisions = downstream.run_protocol(profile, variants, seeds[: i + 1], train_df, val_df, test_df,
                                                   base.downstream, out, progress)
        _stage(log, "classifiers+rules", ",".join(variants), g, t0,
               n_runs=int(preds.groupby(["arm", "classifier_seed"]).ngroups))
        pd.DataFrame(log).to_csv(out / "experiment_stages.csv", index=False)
    return decisions


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bmglib.experiment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--variants", default="bmg,standard,no_fairloss")
    ap.add_argument("--seeds", default="0,1,2", help="generator seeds, comma-separated")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable), e.g. downstream.seeds=3")
    a = ap.parse_args(argv)
    decisions = run(a.profile, a.variants, a.seeds, a.dataset,
                    config.parse_overrides(a.set))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(decisions.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
