"""Does the real-only downstream classifier have the gap? The protocol's precondition (docs/protocol.md).

    python benchmarks/baseline_gap.py [--profile quick] [--seeds 9] [--target 0.90]

Trains (or reads from the cache) the real-only arm of notebook 05 for ``--seeds`` classifier seeds
with the protocol's operating point (``downstream.threshold = "val_sensitivity"``), then, per seed,
applies each threshold rule to that classifier's *validation* scores (the fixed p ≥ 0.5, Youden's J,
sensitivity ≥ ``--target``) and reads the real test split at it. Prints, per rule: the threshold's
mean, sensitivity / specificity per FST group, the FNR gap FNR(IV–VI) − FNR(I–III) (the primary
measure), the AUC per group, ES-AUC, each with a 95% CI over classifier seeds and test images
(within FST; ``bmglib.metrics.hierarchical.arm_value``), beside the bias probe's gap of notebook 01
when its table exists. Only the real-only arm is run: no synthetic data is looked at.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from bmglib import config, downstream, paths
from bmglib.data import prepare, schema
from bmglib.metrics import fairness, hierarchical

RULES = ("fixed", "val_youden", "val_sensitivity")


def _sensitivity(group: str):
    def stat(sp) -> float:
        m = (sp.y_true == 1) & np.isin(sp.fst, schema.FST_GROUPS[group])
        return float(sp.y_pred[:, m].mean())
    stat.__name__ = f"sensitivity {group}"
    return stat


def _specificity(group: str):
    def stat(sp) -> float:
        m = (sp.y_true == 0) & np.isin(sp.fst, schema.FST_GROUPS[group])
        return float(1 - sp.y_pred[:, m].mean())
    stat.__name__ = f"specificity {group}"
    return stat


def _auc(group: str):
    def stat(sp) -> float:
        m = np.isin(sp.fst, schema.FST_GROUPS[group])
        return float(np.mean([fairness.auc(sp.y_true[m], s[m]) for s in sp.y_score]))
    stat.__name__ = f"AUC {group}"
    return stat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--seeds", type=int, default=9)
    ap.add_argument("--target", type=float, default=0.90, help="validation sensitivity of val_sensitivity")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    cfg = config.get_config(args.profile, {"downstream.threshold": "val_sensitivity",
                                           "downstream.target_sensitivity": args.target,
                                           "downstream.seeds": args.seeds})
    d = cfg.downstream
    meta = prepare.load_prepared(args.profile, args.dataset)
    train_df, val_df, test_df = (meta[meta["split"] == s] for s in ("train", "val", "test"))
    arms = downstream.build_arms(train_df, None, seed=d.seed)
    x_val = downstream.load_images(val_df, d.image_size, progress=False)
    y_val = (val_df["lesion"] == "melanoma").to_numpy(int)
    rows, thresholds = [], {r: [] for r in RULES}
    for seed in range(d.seed, d.seed + d.seeds):
        res = downstream.run_arm("real", arms["real"], val_df, test_df, d, seed)
        p_val = 1 / (1 + np.exp(-downstream.predict_logits(downstream.load_arm_model(res), x_val)))
        for rule in RULES:
            t = downstream.choose_threshold(y_val, p_val, rule, target_sensitivity=args.target)
            thresholds[rule].append(t)
            rows.append(res.predictions.assign(arm=rule, generator_seed=hierarchical.NO_GENERATOR,
                                               classifier_seed=seed,
                                               y_pred=(res.predictions["p_melanoma"] >= t).astype(int)))
    preds = pd.concat(rows, ignore_index=True)
    light, dark = schema.GAP_GROUPS
    stats = [_sensitivity(light), _sensitivity(dark), _specificity(light), _specificity(dark),
             hierarchical.fnr_gap, _auc(light), _auc(dark), hierarchical.es_auc]
    table = []
    for rule in RULES:
        row = {"rule": rule, "threshold (mean)": f"{np.mean(thresholds[rule]):.3f}"}
        for stat in stats:
            r = hierarchical.arm_value(preds, rule, stat, n_boot=args.n_boot, rng=0)
            row[r["statistic"]] = f"{r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        table.append(row)
    n = r  # the counts and variance sources are those of every rule's rows (the same runs and images)
    print(f"real-only arm · {args.profile} · {d.arch} width {d.width} · {n['n_classifier_seeds']} classifier seeds · "
          f"test {n['n_images']} images ({n['n_pos']} melanomas) · val {len(val_df)} ({int(y_val.sum())} melanomas)")
    print(f"95% CIs over {n['variance_sources']}; fnr_gap = FNR(IV–VI) − FNR(I–III)\n")
    print(pd.DataFrame(table).set_index("rule").T.to_string())
    probe = paths.figures_dir(args.profile) / f"probe_table_{args.dataset}.md"
    print("\nbias probe (notebook 01): " + (probe.read_text() if probe.exists() else f"{probe} not found (run 01)"))


if __name__ == "__main__":
    main()
