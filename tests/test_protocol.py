"""The protocol's tables and figure (docs/protocol.md) on simulated predictions with known effects."""

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

from bmglib import downstream as D
from bmglib import report

EFFECTS = {"real+bmg": -0.35, "real+standard": 0.0, "real+no_fairloss": 0.0}  # on the FNR of IV–VI


def _preds(G=3, C=2, n_per_fst=40, seed=0):
    """Real-only runs at classifier seeds 0..G·C−1; arm a's generator g at seeds g·C .. g·C+C−1 (the
    protocol's layout), detecting melanomas on IV–VI with probability 0.5 − EFFECTS[a] (0.8 on I–III)."""
    rng = np.random.default_rng(seed)
    fst = np.repeat(np.arange(1, 7), n_per_fst)
    n = len(fst)
    y = np.tile([1, 0], n // 2)
    ids = [f"img{i:03d}" for i in range(n)]
    rows = []

    def add(arm, g, c, effect):
        hit = np.where(fst >= 4, 0.5 - effect, 0.8)
        p = np.where(y == 1, (rng.random(n) < hit) * 0.6 + 0.2, rng.random(n) * 0.5)
        rows.append(pd.DataFrame({"arm": arm, "generator_seed": g, "classifier_seed": c, "md5hash": ids,
                                  "fitzpatrick_scale": fst, "y_true": y, "p_melanoma": p,
                                  "y_pred": (p >= 0.5).astype(int)}))

    for c in range(G * C):
        add("real", -1, c, 0.0)
    for arm, eff in EFFECTS.items():
        for g in range(G):
            for c in range(g * C, (g + 1) * C):
                add(arm, g, c, eff)
    return pd.concat(rows, ignore_index=True)


def test_decision_rules_cover_the_three_rules_with_their_arms():
    rules = D.decision_rules(_preds(), n_boot=80)
    assert len(rules) == 15 and (rules["role"] == "primary").sum() == 5
    primary = rules[rules["role"] == "primary"].set_index("rule")
    assert list(primary.index) == ["real+bmg narrows the gap", "real+standard narrows the gap",
                                   "real+no_fairloss narrows the gap", "real+bmg beats real+standard",
                                   "the fairness loss matters downstream"]
    assert primary.loc["real+bmg narrows the gap", "verdict"] == "shown"  # a large true effect
    assert primary.loc["real+standard narrows the gap", "verdict"] == "not shown"  # none
    assert primary.loc["real+bmg beats real+standard", "versus"] == "real+standard"
    assert primary.loc["the fairness loss matters downstream", "verdict"] == "shown"  # -0.35 vs 0, two-sided
    assert (rules.loc[rules["versus"] == "real", "n_generator_seeds"] == 3).all()
    # without the no_fairloss arm the table has the first two rules only
    two = D.decision_rules(_preds().query("arm != 'real+no_fairloss'"), n_boot=50)
    assert len(two) == 9 and "the fairness loss matters downstream" not in set(two["rule"])
    with pytest.raises(ValueError, match="no 'real\\+bmg' runs"):
        D.decision_rules(_preds().query("arm != 'real+bmg'"), n_boot=10)


def test_rule_three_is_two_sided():
    p = _preds()
    worse = p[p["arm"] == "real+no_fairloss"].assign(arm="real+bmg")  # bmg := no_fairloss ...
    better = p[p["arm"] == "real+bmg"].assign(arm="real+no_fairloss")  # ... and the other way round
    swapped = pd.concat([p[~p["arm"].isin(["real+bmg", "real+no_fairloss"])], worse, better])
    row = D.decision_rules(swapped, n_boot=80).set_index("rule").loc["the fairness loss matters downstream"]
    assert row["ci_low"] > 0 and row["verdict"] == "shown: it widens the gap"


def test_generator_effects_one_row_per_generator_with_its_own_classifier_seeds():
    eff = D.generator_effects(_preds(), n_boot=60)
    assert len(eff) == 9 and set(eff["arm"]) == set(EFFECTS)
    assert (eff["n_classifier_seeds"] == 2).all() and (eff["n_images"] == 240).all()
    bmg = eff[eff["arm"] == "real+bmg"]
    assert (bmg["ci_high"] < 0).all()  # each generator alone shows the simulated effect
    assert abs(bmg["estimate"].mean() - EFFECTS["real+bmg"]) < 0.1
    with pytest.raises(ValueError, match="measure 'auc'"):
        D.generator_effects(_preds(), measure="auc")


def test_plot_protocol_writes_a_figure(tmp_path):
    p = _preds()
    rules = D.decision_rules(p, n_boot=30)
    fig = report.plot_protocol(rules, D.generator_effects(p, n_boot=30), "test", save_to=tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000 and len(fig.axes) == 3


def test_protocol_summary_and_table_one_row_per_arm_with_model_ids():
    from bmglib import report

    p = _preds()
    rules = D.decision_rules(p, n_boot=30)
    ids = {"real+bmg": {0: "a" * 32, 1: "b" * 32, 2: "c" * 32}}
    summary = D.protocol_summary(p, rules, ids, n_boot=30)
    assert list(summary["arm"]) == ["real", *EFFECTS]
    s = summary.set_index("arm")
    assert s.loc["real", "n_runs"] == 6 and s.loc["real+bmg", "n_runs"] == 6 and s.loc["real+bmg", "n_generator_seeds"] == 3
    assert s.loc["real+bmg", "model_id"] == "0: aaaaaaaa, 1: bbbbbbbb, 2: cccccccc" and s.loc["real", "model_id"] == "—"
    assert s.loc["real", "n IV-VI"] == 120 and s.loc["real", "n_pos IV-VI"] == 60
    assert s.loc["real+bmg", "delta_fnr_gap"] < 0 and pd.isna(s.loc["real", "delta_fnr_gap"])
    assert s.loc["real+bmg", "sensitivity IV-VI"] > s.loc["real", "sensitivity IV-VI"] + 0.2
    table = report.protocol_table(summary)
    assert list(table.index) == ["real", *EFFECTS]
    assert list(report.protocol_table(summary.iloc[::-1]).index) == ["real", *reversed(EFFECTS)]  # real first
    assert table.loc["real", "Δ FNR gap vs real"] == "—" and "shown" in table.loc["real+bmg", "Δ FNR gap vs real"]
    assert set(report.HEADLINE_COLUMNS) - {"arm"} <= set(table.columns)


def test_seed_claims_judge_every_generator_seed():
    from bmglib import ablation

    spread = pd.DataFrame({"variant": ["bmg"] * 3 + ["no_fairloss"] * 3 + ["no_fst_cond"],
                           "generator_seed": [0, 1, 2, 0, 1, 2, 0],
                           "fid_var_ratio": [1, 1, 1, 4.5, 2.0, 5.0, 0.4], "light": [0, 0, 0, 0, 0, 0, 0.95]})
    c = ablation.seed_claims(spread).set_index("variant")
    assert c.loc["no_fairloss", "verdict"] == "holds at 2 of 3 seeds" and c.loc["no_fairloss", "n_seeds"] == 3
    assert c.loc["no_fairloss", "per seed"] == "0: 4.500, 1: 2.000, 2: 5.000"
    assert c.loc["no_fst_cond", "verdict"] == "holds at the one generator seed (no seed spread)"
    spread.loc[spread["variant"] == "no_fairloss", "fid_var_ratio"] = 1.1
    assert ablation.seed_claims(spread).set_index("variant").loc["no_fairloss", "verdict"] == "does not hold at any seed"


def test_dose_effects_one_row_per_arm_and_dose():
    p = _preds()
    arms = p[p["arm"].isin(["real+bmg", "real+standard"]) & (p["generator_seed"] == 0)]
    parts = [p[p["arm"] == "real"].assign(dose=0.0, n_synthetic=0)]
    for dose in (0.5, 1.0):  # the same runs at two doses: equal effects
        parts.append(arms.assign(dose=dose, n_synthetic=int(600 * dose)))
    eff = D.dose_effects(pd.concat(parts), n_boot=40)
    assert list(zip(eff["arm"], eff["dose"], strict=True)) == [("real+bmg", 0.5), ("real+bmg", 1.0),
                                                               ("real+standard", 0.5), ("real+standard", 1.0)]
    assert list(eff["n_synthetic"]) == [300, 600, 300, 600] and (eff["n_classifier_seeds"] == 2).all()
    assert eff.loc[0, "estimate"] == eff.loc[1, "estimate"] and eff.loc[0, "ci_high"] < 0
    assert "one generator seed" in eff.loc[0, "variance_sources"]
    fig = __import__("bmglib.report", fromlist=["x"]).plot_dose_response(eff, "t")
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="positive multiples"):
        D._doses("0,1")
