"""Quality per CPU-second of diffusion training recipes: validation measures against step time.

    python benchmarks/convergence.py [--profile quick] [--variant bmg] [--recipes before,after]
                                     [--evals 4] [--per-cell 20] [--seeds 0] [--extra-seeds 1]

For each recipe (a named set of config overrides, :data:`RECIPES`) the variant is trained on the
prepared profile (notebook 01 / ``python -m bmglib.data.prepare``) and its EMA weights are kept at
``--evals`` evenly spaced steps. Every kept model is scored with the validation protocol of
:mod:`bmglib.diffusion.validate` (KID to real validation images with a 95% CI, FST adherence by ITA
and by the auditor CNN, lesion adherence, validation denoising loss; training and validation splits
only). The x axis is the *step time* (the sum of the logged per-step seconds up to that step, the
same measure as notebook 02's "training time"), so evaluation and checkpointing do not count.
``--extra-seeds`` trains the recipes again at other seeds and scores only their final models (the
seed spread of the end point).

Prints one table (recipe, seed, step, seconds, measures) and the step-time ratio at which the last
recipe first reaches the first recipe's final quality, and writes
``benchmarks/results/convergence_<profile>_<variant>.csv`` and ``docs/figures/convergence_<profile>_<variant>.png``.
Runs resume: trained recipes and scored models are read back (``--plot-only``: no training or
scoring, the table and figure of every row of ``--recipes`` already in the CSV). A recipe trained
again (its ``final/`` gone) has all its rows scored anew; ``--rescore before`` scores a recipe's
kept snapshots again (a retrain of the same config is not bitwise reproducible on the CPU, so
scores of an earlier training do not describe today's weights). Recipes run one after another, so
keep the machine otherwise idle (the load average is printed per row); every recipe's time is
measured in the same run, so their ratio survives a slower or faster machine.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from bmglib import config, paths, skintone  # noqa: E402
from bmglib.data import prepare  # noqa: E402
from bmglib.diffusion import train, validate  # noqa: E402

#: the settings some recipe changes, at the value the others run with (not the profile's: quick's own
#: recipe sets some of them since issue 14, and ``before`` must stay the recipe it was)
_RECIPE_BASE = {"warmup_steps": 50, "ema_power": 0.0, "batch_size": 32, "base_channels": 32,
                "weighting_until": 1.0, "lowres_size": 0, "lowres_until": 0.0}


def _recipe(steps: int, lr: float, lr_schedule: str, weighting: str, **extra) -> dict:
    """A complete recipe: every setting that any recipe changes (``diffusion.`` keys), ``extra`` over
    :data:`_RECIPE_BASE`."""
    named = {"steps": steps, "lr": lr, "lr_schedule": lr_schedule, "loss_weighting": weighting,
             **_RECIPE_BASE, **extra}
    return {f"diffusion.{k}": v for k, v in named.items()}


#: the recipes compared; each is complete (it names every setting that differs between them), so
#: the table keeps its meaning when the profile's defaults change
RECIPES: dict[str, dict] = {
    # quick's recipe until issue 14 (2026-12-03): 1,200 steps at a constant LR, unweighted v-loss
    "before": _recipe(1200, 1e-3, "constant", "none"),
    # Min-SNR-5 weighting, twice the peak LR, cosine decay to 0 over a third of the steps
    "after": _recipe(400, 2e-3, "cosine", "min_snr"),
    # the same over half of the steps
    "after600": _recipe(600, 2e-3, "cosine", "min_snr"),
    # the 400/600-step LR schedules without Min-SNR
    "cosine400": _recipe(400, 2e-3, "cosine", "none"),
    "cosine600": _recipe(600, 2e-3, "cosine", "none"),
    # `after600` with the v loss's own weight capped at γ = 5 (snr_cap): Min-SNR's cap on the low-noise
    # timesteps without its down-weighting of the high-noise ones (tests whether that costs FST adherence)
    "cap600": _recipe(600, 2e-3, "cosine", "snr_cap"),
    # `before` at batch 12 (1,200 steps, as many optimiser steps as `before`, 3/8 of its images), and
    # the same with Min-SNR-5
    "b12": _recipe(1200, 1e-3, "constant", "none", batch_size=12),
    "b12snr": _recipe(1200, 1e-3, "constant", "min_snr", batch_size=12),
    # `b12snr` with Min-SNR for the first half of the steps only, unweighted after (fidelity first,
    # then the labels: FST adherence follows the unweighted steps)
    "b12snr_half": _recipe(1200, 1e-3, "constant", "min_snr", batch_size=12, weighting_until=0.5),
    # `before` at half the UNet width (16, 32, 32): ~2x faster per training step, ~2.5x per sampling pass
    "w16": _recipe(1200, 1e-3, "constant", "none", base_channels=16),
    # the half-width UNet over 800 steps at twice the peak LR, cosine decay (about 1/3 of `before`'s step time)
    "w16cos800": _recipe(800, 2e-3, "cosine", "none", base_channels=16),
    # progressive resolution: `before` with its first 3/4 of the steps on the batches at 16 px (the
    # same UNet; a 16 px step costs a fraction of a 32 px one), the last 300 at 32 px; and the same
    # with twice the low-resolution steps
    "p16": _recipe(1200, 1e-3, "constant", "none", lowres_size=16, lowres_until=0.75),
    "p16_2100": _recipe(2100, 1e-3, "constant", "none", lowres_size=16, lowres_until=1800 / 2100),
    # progressive resolution with Min-SNR-5 (round 3: the 16 px phase carried FST adherence; rounds 1-2:
    # Min-SNR carried KID): `p16` weighted, and a shorter one at about a third of `before`'s step time
    # (750 steps at 16 px, 150 at 32 px; peak LR 2e-3 with cosine decay, as `after600`)
    "p16snr": _recipe(1200, 1e-3, "constant", "min_snr", lowres_size=16, lowres_until=0.75),
    "p16snr_900": _recipe(900, 2e-3, "cosine", "min_snr", lowres_size=16, lowres_until=750 / 900),
    # round 4: `p16snr` held KID at two seeds but lost lesion adherence, which `p16_2100` (the longer
    # 16 px phase) kept: the two together
    "p16snr_2100": _recipe(2100, 1e-3, "constant", "min_snr", lowres_size=16, lowres_until=1800 / 2100),
    # round 4: `p16snr_2100` lowered lesion adherence (which needs 32 px steps): at about its step
    # time, 300 fewer 16 px steps for 150 more at 32 px
    # (quick's recipe since 2026-12-03: bmglib.config.QUICK_RECIPE)
    "p16snr_1950": _recipe(1950, 1e-3, "constant", "min_snr", lowres_size=16, lowres_until=1500 / 1950),
}
MEASURES = ("kid", "lesion", "fst_ita", "fst_auditor")


def _root(profile: str, variant: str) -> Path:
    return paths.data_root() / "benchmarks" / "convergence" / profile / variant


def _csv(profile: str, variant: str) -> Path:
    return paths.BENCHMARKS / "results" / f"convergence_{profile}_{variant}.csv"


def _run_id(cfg: config.Config, meta: pd.DataFrame) -> str:
    """What a run's weights depend on (not how often it checkpoints), as a short key."""
    identity = train.model_identity(cfg)
    identity["diffusion"] = {k: v for k, v in identity["diffusion"].items() if k != "checkpoint_every"}
    return config.cache_key(**identity, meta=config.hash_table(meta))


def _snapshot_ema(run_dir: Path, steps: set[int]):
    """A training callback that copies the EMA weights of the checkpoint at each step in ``steps``
    to ``run_dir/snapshots/step_N.pt`` (the checkpoint is written before callbacks run)."""
    def cb(step: int, logs: dict) -> None:
        if step in steps:
            ck = run_dir / "checkpoints" / f"step_{step:07d}"
            (run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
            shutil.copy(ck / "state.pt", run_dir / "snapshots" / f"step_{step:07d}.pt")
    return cb


def _ema_model(cfg: config.Config, snapshot: Path) -> torch.nn.Module:
    model = train.build_model(cfg.diffusion)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = EMAModel(params, decay=cfg.diffusion.ema_decay)
    ema.load_state_dict(torch.load(snapshot, weights_only=False)["ema"])
    ema.copy_to(params)
    return model.eval()


def run_recipe(name: str, cfg: config.Config, meta: pd.DataFrame, eval_steps: list[int], judges, per_cell: int,
               done: pd.DataFrame) -> list[dict]:
    """Train (or resume) one recipe at ``cfg``'s seed and score the snapshots not yet in ``done``."""
    d = cfg.diffusion
    run_id = _run_id(cfg, meta)
    run_dir = _root(cfg.profile, d.variant) / f"{name}_seed{d.seed}_{run_id}"
    train_df = meta[meta["split"] == "train"].reset_index(drop=True)
    val_df = meta[meta["split"] == "val"].reset_index(drop=True)
    est = None
    if d.lambda_kl > 0 or d.lambda_ce > 0:
        est, _ = skintone.get_fst_estimator(d.estimator, train_df, val_df, d.image_size, d.estimator_epochs, d.seed)
    if not (run_dir / "final" / "model.safetensors").exists():
        train.train_diffusion(cfg, train_df, run_dir, estimator=est, callbacks=(_snapshot_ema(run_dir, set(eval_steps)),))
        # trained (again) here: scores of an earlier training under this run id are of other weights
        # (a retrain of the same config is not bitwise reproducible on the CPU); score every step anew
        stale = done["run_id"] == run_id
        if stale.any():
            print(f"{name} seed {d.seed}: retrained, its {int(stale.sum())} scored rows in the CSV are replaced")
        done = done[~stale]
    log = pd.read_csv(run_dir / "log.csv")
    seconds = log.set_index("step")["seconds"].cumsum()
    rows = []
    for step in eval_steps:
        if ((done["run_id"] == run_id) & (done["step"] == step)).any():
            continue
        model = _ema_model(cfg, run_dir / "snapshots" / f"step_{step:07d}.pt")
        row = {"recipe": name, "seed": d.seed, "run_id": run_id, "step": step, "seconds": float(seconds[step]),
               "load": os.getloadavg()[0], **validate.score(model, cfg, judges, per_cell)}
        print(_fmt(pd.DataFrame([row])), flush=True)
        rows.append(row)
    return rows


MEDIAN_BLOCK = 100  # steps per block of seconds_median


def with_median_seconds(table: pd.DataFrame, profile: str, variant: str) -> pd.DataFrame:
    """``seconds`` (the sum of the step times up to that step) and ``seconds_median`` (the sum over
    blocks of 100 steps of the block's median × its length: robust to a few steps slowed by another
    process, the sum is not; by block, so a recipe whose steps change cost, progressive resolution,
    is not priced at its cheap phase), from each run's log."""
    def from_log(row):
        log = pd.read_csv(_root(profile, variant) / f"{row['recipe']}_seed{row['seed']}_{row['run_id']}" / "log.csv")
        upto = log.loc[log["step"] <= row["step"], "seconds"].reset_index(drop=True)
        robust = upto.groupby(upto.index // MEDIAN_BLOCK).transform("median").sum()
        return pd.Series({"seconds": float(upto.sum()), "seconds_median": float(robust)})
    # a recipe retrained in this run (its scores read back) gets this run's step times, not the scored run's
    table[["seconds", "seconds_median"]] = table.apply(from_log, axis=1)
    return table


def _fmt(table: pd.DataFrame) -> str:
    cols = ["recipe", "seed", "step", "seconds", *(["seconds_median"] if "seconds_median" in table else []), "kid", "kid_low", "kid_high", "fst_ita", "fst_ita_V",
            "fst_auditor", "lesion", "val_loss", "images_per_s", "load"]
    return table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")


def first_reaching(table: pd.DataFrame, recipe: str, target: pd.Series) -> pd.Series | None:
    """The earliest seed-0 row of ``recipe`` at least as good as ``target`` on every measure of
    :data:`MEASURES` (KID: not above it; the adherences: not below), or None."""
    rows = table[(table["recipe"] == recipe) & (table["seed"] == table["seed"].min())].sort_values("seconds")
    ok = (rows["kid"] <= target["kid"]) & (rows["lesion"] >= target["lesion"]) & \
         (rows["fst_ita"] >= target["fst_ita"]) & (rows["fst_auditor"] >= target["fst_auditor"])
    return rows[ok].iloc[0] if ok.any() else None


def plot(table: pd.DataFrame, title: str, save_to: Path, order: list[str] | None = None,
         reference: pd.Series | None = None) -> None:
    """Quality against step time, one line per recipe (seed-0 curve; other seeds as points), the
    recipes in ``order`` (default: as they come in the table); ``reference`` (a row: the final
    quality every recipe is held to) as a dashed grey line in each panel."""
    panels = (("kid", "KID to real val (95% CI) ↓"), ("lesion", "lesion adherence ↑"),
              ("fst_ita", "FST adherence, ITA ↑"), ("fst_auditor", "FST adherence, auditor CNN ↑"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    seed0 = table["seed"].min()
    present, order = list(table["recipe"].unique()), order or []
    order = [r for r in order if r in present] + [r for r in present if r not in order]
    if reference is not None:
        for ax, (col, _) in zip(axes, panels, strict=True):
            ax.axhline(reference[col], color="0.5", ls="--", lw=1,
                       label=f"{reference['recipe']} final (step {reference['step']})")
    for k, recipe in enumerate(order):
        g = table[table["recipe"] == recipe]
        color = f"C{k}"
        curve, extra = g[g["seed"] == seed0].sort_values("seconds"), g[g["seed"] != seed0]
        for ax, (col, label) in zip(axes, panels, strict=True):
            ax.plot(curve["seconds"], curve[col], "o-", color=color, label=recipe)
            if col == "kid":
                ax.fill_between(curve["seconds"], curve["kid_low"], curve["kid_high"], color=color, alpha=0.2)
            if len(extra):
                ax.plot(extra["seconds"], extra[col], "x", color=color, ms=8, label=f"{recipe}, other seeds")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("step time (s)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_to.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_to, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--variant", default="bmg")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--recipes", default="before,after", help=f"comma-separated, from {list(RECIPES)}")
    ap.add_argument("--evals", type=int, default=4, help="scored models per recipe, evenly spaced in steps")
    ap.add_argument("--per-cell", type=int, default=20, help="samples per FST × lesion cell per score")
    ap.add_argument("--seeds", default="0", help="seeds whose curves are scored")
    ap.add_argument("--extra-seeds", default="", help="seeds whose final models only are scored")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    ap.add_argument("--rescore", default="", help="comma-separated recipes of --recipes whose snapshots are scored "
                                                  "again at the seeds asked for, replacing their rows")
    ap.add_argument("--plot-only", action="store_true",
                    help="train and score nothing: the table and figure of every scored row of --recipes in the CSV")
    args = ap.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    common = config.parse_overrides(args.set)
    out_csv = _csv(args.profile, args.variant)
    done = pd.read_csv(out_csv) if out_csv.exists() else pd.DataFrame(columns=["recipe", "seed", "run_id", "step"])
    if args.plot_only:
        return report(done[done["recipe"].isin(names)].copy(), names, _ints(args.seeds)[0], args)
    meta = prepare.load_prepared(args.profile, args.dataset)
    base = config.get_config(args.profile)
    judges = validate.Judges.build(meta, base.diffusion.image_size, progress=True)
    print(f"load average {os.getloadavg()[0]:.2f} · {args.variant} ({args.profile}) · {args.per_cell * 24} samples "
          f"per score · KID reference: {len(judges.real_feats)} real validation images")
    rows, run_ids = [], []
    plan = [(s, True) for s in _ints(args.seeds)] + [(s, False) for s in _ints(args.extra_seeds)]
    rescore = [r for r in args.rescore.split(",") if r]
    if set(rescore) - set(names):
        raise SystemExit(f"--rescore {sorted(set(rescore) - set(names))} not in --recipes")
    again = done["recipe"].isin(rescore) & done["seed"].isin([s for s, _ in plan])
    done = done[~again]
    for seed, curve in plan:
        for name in names:
            cfg = config.with_variant(config.apply_overrides(base, {**RECIPES[name], **common,
                                                                     "diffusion.seed": seed}), args.variant)
            steps = cfg.diffusion.steps
            eval_steps = [round(steps * (i + 1) / args.evals) for i in range(args.evals)] if curve else [steps]
            cfg = config.apply_overrides(cfg, {"diffusion.checkpoint_every": math.gcd(*eval_steps)})
            run_ids.append(_run_id(cfg, meta))
            rows += run_recipe(name, cfg, meta, eval_steps, judges, args.per_cell, done)
            new = pd.DataFrame(rows)
            if len(new):  # a re-scored (retrained) run's rows replace its old ones
                keys = set(zip(new["run_id"], new["step"], strict=True))
                done = done[[k not in keys for k in zip(done["run_id"], done["step"], strict=True)]]
            table = pd.concat([done, new], ignore_index=True)
            out_csv.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(out_csv, index=False)
    shown = with_median_seconds(table[table["run_id"].isin(run_ids)].copy(), args.profile, args.variant)
    # the step times of this run's logs (a recipe retrained here replaces its scored run's times)
    table.loc[shown.index, ["seconds", "seconds_median"]] = shown[["seconds", "seconds_median"]]
    table.to_csv(out_csv, index=False)
    report(shown, names, _ints(args.seeds)[0], args)


def report(table: pd.DataFrame, names: list[str], seed0: int, args) -> None:
    """Print the table and the first row of each recipe that reaches the first recipe's final
    quality; draw the figure."""
    if "seconds_median" not in table:
        table["seconds_median"] = float("nan")
    print("\n" + _fmt(table.sort_values(["recipe", "seed", "step"], key=_recipe_order(names))))
    ref = table[(table["recipe"] == names[0]) & (table["seed"] == seed0)].sort_values("step").iloc[-1]
    for name in names[1:]:
        hit = first_reaching(table, name, ref)
        if not (table["recipe"] == name).any():
            print(f"{name}: no scored rows in {_csv(args.profile, args.variant)} (run it without --plot-only)")
        elif hit is None:
            print(f"{name} does not reach {names[0]}'s final quality (step {ref['step']}, {ref['seconds']:.0f} s) "
                  f"on every measure within its steps")
        else:
            print(f"{name} reaches {names[0]}'s final quality at step {hit['step']}: {hit['seconds']:.0f} s vs "
                  f"{ref['seconds']:.0f} s = {hit['seconds'] / ref['seconds']:.2f}x the step time (median-based: "
                  f"{hit['seconds_median'] / ref['seconds_median']:.2f}x)")
    fig = paths.REPO_ROOT / "docs" / "figures" / f"convergence_{args.profile}_{args.variant}.png"
    plot(table, f"{args.variant} · {args.profile}: validation quality vs step time ({args.per_cell * 24} samples "
                f"per point)", fig, order=names, reference=ref)
    print(f"table → {_csv(args.profile, args.variant)}\nfigure → {fig}")


def _recipe_order(names):
    return lambda col: col.map({n: i for i, n in enumerate(names)}) if col.name == "recipe" else col


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


if __name__ == "__main__":
    main()
