"""The ablation of notebook 06: each variant is ``bmg`` minus one component (``standard`` minus all
three), measured side by side in one tidy table, and the seed paper's two ablation claims tested
against our intervals.

    quality = sample_sets.image_quality(test_df, evalsets, cfg.metrics, reference="bmg")
    adh = sample_sets.adherence_shares(evalsets, train_df, test_df, size)
    tidy = collect(quality, adh, tables["summary"])     # tables: downstream.evaluate_arms(...)
    table = report.ablation_table(tidy)                 # the paper-style table (strings)
    write_table(fig_dir / "ablation_table.md", table, tables["summary"], cfg, meta, "synthetic")
    claim_verdicts(tidy)                                # claim, claimed, measured [CI], n, verdict
    spread = seed_spread("quick", variants, "0,1,2", test_df, cfg.metrics)   # per generator seed
    seed_claims(spread)                                 # the claims at every generator seed

The tidy table has one row per (variant, measure): :data:`COLUMNS`, measures :data:`MEASURES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bmglib import config, report
from bmglib.config import ImageMetricsConfig
from bmglib.data import schema
from bmglib.metrics import sample_sets
from bmglib.metrics.sample_sets import Adherence, ImageQuality

COLUMNS = ("variant", "measure", "value", "ci_low", "ci_high", "sd", "n", "note")
#: measure → what it is (every interval is 95%):
MEASURES = {
    "fid I-III": "FID of the I–III group against the real test images (n: images per side)",
    "fid IV-VI": "the same for IV–VI",
    "fid_sd": "SD of FID over the six FSTs (n: images per FST and side)",
    "fid_var_ratio": "FID variance over FST ÷ the reference variant's, paired-bootstrap interval",
    "fst": "FST adherence by ITA (exact share), every request; absent without FST conditioning",
    "fst_v_vi": "the same for V–VI requests",
    "fst_audit": "FST adherence by the auditor CNN, every request",
    "fst_audit_v_vi": "the same for V–VI requests",
    "light": "II–III share when V–VI was asked (``note``: over which draws)",
    "lesion": "lesion adherence (the real-data lesion classifier; chance 0.25)",
    "gap": "downstream accuracy gap I–III − IV–VI of real + the variant (sd over seeds; n: test images)",
    "edfr": "downstream EDFR, FNR(IV–VI) − FNR(I–III) (sd over seeds; n: test images)",
}
DOWNSTREAM = {"gap": "accuracy_gap", "edfr": "edfr"}  # measure → contrast of downstream's summary


def variant_list(variants: str, reference: str) -> list[str]:
    """The comma-separated ``variants`` parameter as a list; ``reference`` must be one of them."""
    names = sample_sets.parse_variants(variants)
    if reference not in names:
        raise ValueError(f"REFERENCE={reference!r} must be one of VARIANTS={names}")
    return names


def components(cfg: config.Config, evalsets: dict[str, pd.DataFrame],
               augment: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per variant: what it removes, its diffusion components and its sample-set sizes."""
    rows = {}
    for v in evalsets:
        d = config.with_variant(cfg, v).diffusion
        rows[v] = {"removed": report.VARIANT_OFF.get(v, "?"), "FST conditioned": d.fst_cond,
                   "resampling alpha": d.alpha, "lambda_kl": d.lambda_kl, "lambda_ce": d.lambda_ce,
                   "eval images": len(evalsets[v]), "augment images": len(augment[v])}
    return pd.DataFrame(rows).T


def _row(variant: str, measure: str, value: float, ci_low: float = np.nan, ci_high: float = np.nan,
         sd: float = np.nan, n: int = 0, note: str = "") -> dict:
    return dict(zip(COLUMNS, (variant, measure, float(value), float(ci_low), float(ci_high), float(sd),
                              int(n), note), strict=True))


def collect(quality: ImageQuality, adherence: Adherence, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """The tidy table of every variant's measures (:data:`MEASURES`), in the variants' order.

    ``quality``: :func:`~bmglib.metrics.sample_sets.image_quality` with a reference variant;
    ``adherence``: :func:`~bmglib.metrics.sample_sets.adherence_shares`; ``summary``: the
    ``summary`` table of :func:`bmglib.downstream.evaluate_arms` (arms ``real+<variant>``; a
    variant whose arm was not run has no gap/edfr rows). Undefined shares (no FST conditioning)
    have no row."""
    fid_groups = quality.metrics[quality.metrics["level"] == "fst_group"]
    rows = []
    for v, s in quality.spread.iterrows():
        g = fid_groups[fid_groups["variant"] == v].set_index("group")
        n_group, n_fst = int(g["n_used"].max()), int(s["n_used"])
        rows += [_row(v, f"fid {grp}", g.loc[grp, "fid"], n=n_group) for grp in schema.FST_GROUPS]
        rows.append(_row(v, "fid_sd", s["fid_sd"], n=n_fst))
        rows.append(_row(v, "fid_var_ratio", s["fid_var_ratio"], s["ratio_low"], s["ratio_high"], n=n_fst))
        for k, d in adherence.shares[v].items():
            if d is not None:
                rows.append(_row(v, k, d["share"], d["ci_low"], d["ci_high"], n=d["n"], note=d.get("over", "")))
        for measure, contrast in DOWNSTREAM.items():
            hit = (summary[(summary["arm"] == f"real+{v}") & (summary["contrast"] == contrast)]
                   if summary is not None else ())
            if len(hit):
                r = hit.iloc[0]
                rows.append(_row(v, measure, r["value"], r["ci_low"], r["ci_high"], r["sd"],
                                 n=r["n_a"] + r["n_b"], note=f"n I–III {r['n_a']}, IV–VI {r['n_b']}"))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def measure(tidy: pd.DataFrame, variant: str, name: str) -> dict | None:
    """One row of the tidy table as a dict (value, ci_low, ci_high, sd, n, note), None if absent."""
    hit = tidy[(tidy["variant"] == variant) & (tidy["measure"] == name)]
    return None if hit.empty else hit.iloc[0].to_dict()


# --- the two claims ------------------------------------------------------------------------------------


def verdict(low: float, high: float, claimed: float, null: float | None = None) -> str:
    """A claimed value against our 95% interval [low, high]: it holds only if the whole interval
    is at or above ``claimed``; ``null``: the no-effect value, if the claim has one."""
    if low >= claimed:
        return "holds"
    if high >= claimed:
        return "undecided: the interval contains the claimed value"
    if null is not None and low > null:
        return "direction holds, the size does not"
    if null is not None and high < null:
        return "does not hold: the effect is reversed"
    return "does not hold" + ("; no effect at all is within the interval" if null is not None else "")


@dataclass(frozen=True)
class Claim:
    """A claim of the seed paper about one variant's measure (at least ``threshold``)."""

    variant: str
    measure: str
    text: str
    claimed: str  # as the paper states it
    threshold: float
    null: float | None  # the no-effect value (None: the claim has none)
    measured: str  # format of the measured value, from value, ci_low, ci_high, n, note


CLAIMS = (
    Claim("no_fairloss", "fid_var_ratio", "removing the fairness loss increases the FID variance over FST",
          "4×", 4.0, 1.0, "{value:.2f}× [{ci_low:.2f}, {ci_high:.2f}], n={n} per FST"),
    Claim("no_fst_cond", "light", "without FST conditioning, V–VI requests come out II–III",
          "> 0.90", 0.9, None, "{value:.3f} [{ci_low:.3f}, {ci_high:.3f}], n={n} ({note})"),
)


def claim_verdicts(tidy: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """One row per claim whose variant was measured: the claim, the paper's value, ours with its
    95% interval (``value``, ``ci_low``, ``ci_high``, ``n`` and as text) and the :func:`verdict`."""
    rows = []
    for c in claims:
        m = measure(tidy, c.variant, c.measure)
        if m is None:
            continue
        rows.append({"claim": c.text, "claimed": c.claimed, "measured (95% interval)": c.measured.format(**m),
                     "value": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"],
                     "verdict": verdict(m["ci_low"], m["ci_high"], c.threshold, c.null)})
    return pd.DataFrame(rows, columns=["claim", "claimed", "measured (95% interval)", "value", "ci_low",
                                       "ci_high", "n", "verdict"])


# --- the claims over generator seeds ---------------------------------------------------------------


def seed_spread(profile: str, variants: Sequence[str], seeds: str | Sequence[int], test_df: pd.DataFrame,
                m: ImageMetricsConfig, reference: str = "bmg", progress: bool = True) -> pd.DataFrame:
    """The two claims' measures for every generator seed of every variant that has an evaluation
    set (03) at that seed: FID variance and SD over the six FSTs (equal N per FST, the same real test
    reference as :func:`sample_sets.image_quality`), its ratio to ``reference``'s at the same seed,
    and the II–III share when V–VI was asked. One row per (variant, generator_seed); a (variant,
    seed) without an evaluation set has no row. The KID bootstrap is cut to 20 replicates: only the
    point values are used here."""
    seeds = sample_sets.parse_seeds(seeds)
    m = dataclasses.replace(m, n_boot=20)
    rows, absent = [], []
    for g in seeds:
        sets = {}
        for v in variants:
            try:
                sets[v] = sample_sets.load(profile, [v], "eval", g)[v]
            except FileNotFoundError:
                absent.append(f"{v} seed {g}")
        if not sets:
            continue
        q = sample_sets.image_quality(test_df, sets, m, progress=progress)
        light = sample_sets.light_shares(sets, seed=m.seed)
        for v in sets:
            rows.append({"variant": v, "generator_seed": g, "fid_var": float(q.spread.loc[v, "fid_var"]),
                         "fid_sd": float(q.spread.loc[v, "fid_sd"]), "n_fst": int(q.n_fst),
                         "light": float(light.loc[v, "share"]), "light_n": int(light.loc[v, "n"]),
                         "light_over": light.loc[v, "over"]})
    if absent:
        print(f"seed_spread: no evaluation set (notebook 03) for {', '.join(absent)}: those rows are absent")
    out = pd.DataFrame(rows, columns=["variant", "generator_seed", "fid_var", "fid_sd", "n_fst", "light",
                                      "light_n", "light_over"])
    ref = out[out["variant"] == reference].set_index("generator_seed")["fid_var"]
    out["fid_var_ratio"] = out["fid_var"] / out["generator_seed"].map(ref)
    return out


def seed_claims(spread: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """Each claim on the seed-level distribution (:func:`seed_spread`): its measure at every
    generator seed of its variant (mean, min, max, n seeds) and a verdict by seeds — "holds at every
    seed", "does not hold at any seed" or "k of n seeds" (a single seed says so: its spread over
    generators is not known)."""
    rows = []
    for c in claims:
        vals = spread.loc[spread["variant"] == c.variant, ["generator_seed", c.measure]].dropna()
        if vals.empty:
            continue
        x = vals[c.measure].to_numpy(float)
        k = int((x >= c.threshold).sum())
        if len(x) == 1:
            verdict_ = f"{'holds' if k else 'does not hold'} at the one generator seed (no seed spread)"
        else:
            verdict_ = ("holds at every seed" if k == len(x) else "does not hold at any seed" if k == 0
                        else f"holds at {k} of {len(x)} seeds")
        rows.append({"claim": c.text, "claimed": c.claimed, "variant": c.variant, "measure": c.measure,
                     "per seed": ", ".join(f"{g}: {v:.3f}" for g, v in zip(vals["generator_seed"], x, strict=True)),
                     "mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()), "n_seeds": len(x),
                     "verdict": verdict_})
    return pd.DataFrame(rows, columns=["claim", "claimed", "variant", "measure", "per seed", "mean", "min", "max",
                                       "n_seeds", "verdict"])


# --- the table file ----------------------------------------------------------------------------------


def write_table(path: Path, table: pd.DataFrame, summary: pd.DataFrame, cfg: config.Config,
                metadata: pd.DataFrame, dataset: str) -> str:
    """Write ``ablation_table.md``: the title, commit and date, the real-only downstream gap (the
    ``real`` arm of downstream's ``summary``), ``table`` (:func:`report.ablation_table`) and its
    footnote. ``metadata``: the prepared dataset (its hash is stamped). Returns the text."""
    real = summary[(summary["arm"] == "real") & (summary["contrast"] == "accuracy_gap")].iloc[0]
    stamp = config.provenance(cfg, dataset_hash=config.hash_table(metadata), seed=cfg.metrics.seed)
    text = (f"# Ablation · {dataset} · {cfg.profile}\n\ncommit {stamp['git_commit']} · {stamp['created_utc']} · "
            f"real-only downstream gap {real['value']:.3f} ± {real['sd']:.3f} "
            f"[{real['ci_low']:.3f}, {real['ci_high']:.3f}]\n\n"
            + report.to_markdown(table)
            + "\n\n\\* a variant without FST conditioning cannot be asked for V–VI: share of all its draws.\n")
    Path(path).write_text(text)
    return text
