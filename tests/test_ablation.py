"""The ablation of notebook 06: the tidy table of per-variant measures and the verdicts on the seed
paper's two claims, on hand-made inputs (a clear hold, a clear fail, an interval that straddles
the claimed value)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmglib import ablation, config, report
from bmglib.metrics.sample_sets import Adherence, ImageQuality


def _share(share, n, over=None):
    d = {"n": n, "share": share, "ci_low": share - 0.05, "ci_high": share + 0.05}
    return d if over is None else {**d, "over": over}


def _inputs(ratio=(4.6, 4.2, 5.1), light=0.95):
    """ImageQuality, Adherence and a downstream summary for bmg, no_fairloss and no_fst_cond."""
    variants = ["bmg", "no_fairloss", "no_fst_cond"]
    metrics = pd.DataFrame([{"level": "fst_group", "group": g, "variant": v, "n_used": 240,
                             "fid": 100.0 + 10 * i + (20 if g == "IV-VI" else 0)}
                            for i, v in enumerate(variants) for g in ("I-III", "IV-VI")])
    spread = pd.DataFrame({"n_used": [80.0] * 3, "fid_sd": [10.0, 21.0, 12.0],
                           "fid_var_ratio": [1.0, ratio[0], 1.4], "ratio_low": [1.0, ratio[1], 0.6],
                           "ratio_high": [1.0, ratio[2], 2.9]}, index=variants)
    quality = ImageQuality(pd.DataFrame(), np.zeros((0, 2048)), {}, metrics, spread, 80)
    conditioned = {"fst": _share(0.9, 480), "fst_v_vi": _share(0.85, 160), "fst_audit": _share(0.8, 480),
                   "fst_audit_v_vi": _share(0.0, 0), "light": _share(0.02, 160, "samples requested as V-VI"),
                   "lesion": _share(0.8, 480)}
    shares = {"bmg": conditioned, "no_fairloss": conditioned,
              "no_fst_cond": {"fst": None, "fst_v_vi": None, "fst_audit": None, "fst_audit_v_vi": None,
                              "light": _share(light, 480, "all samples (FST not requested)"),
                              "lesion": _share(0.7, 480)}}
    adh = Adherence(shares, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    summary = pd.DataFrame([{"arm": arm, "contrast": c, "value": 0.1, "sd": 0.02, "ci_low": 0.0, "ci_high": 0.2,
                             "n_a": 480, "n_b": 480}
                            for arm in ("real", "real+bmg", "real+no_fairloss") for c in ("accuracy_gap", "edfr")])
    return quality, adh, summary


def test_collect_is_one_row_per_variant_and_measure():
    tidy = ablation.collect(*_inputs())
    assert list(tidy.columns) == list(ablation.COLUMNS)
    assert list(dict.fromkeys(tidy["variant"])) == ["bmg", "no_fairloss", "no_fst_cond"]
    assert set(tidy["measure"]) == set(ablation.MEASURES)
    assert not tidy.duplicated(["variant", "measure"]).any()
    bmg = tidy[tidy["variant"] == "bmg"].set_index("measure")
    assert bmg.loc["fid IV-VI", "value"] == 120.0 and bmg.loc["fid IV-VI", "n"] == 240
    assert bmg.loc["fid_var_ratio", "n"] == 80 and bmg.loc["fst_v_vi", "n"] == 160
    assert bmg.loc["gap", "sd"] == 0.02 and bmg.loc["gap", "n"] == 960
    nofst = tidy[tidy["variant"] == "no_fst_cond"].set_index("measure")
    assert "fst" not in nofst.index and "gap" not in nofst.index  # not conditioned; arm not run
    assert nofst.loc["light", "note"].startswith("all samples")
    assert ablation.measure(tidy, "no_fst_cond", "fst") is None


def test_the_table_and_figure_read_the_tidy_table(tmp_path):
    quality, adh, summary = _inputs()
    tidy = ablation.collect(quality, adh, summary)
    t = report.ablation_table(tidy)
    assert t.loc["no_fairloss", "FID variance ÷ bmg"] == "4.60 [4.20, 5.10]"
    assert t.loc["bmg", "FID I–III / IV–VI"] == "100.0 / 120.0 (n=240 each)"
    assert t.loc["bmg", "FST adherence V–VI (auditor CNN)"] == "—"  # n=0
    assert t.loc["no_fst_cond", "II–III share when V–VI asked"].endswith("(n=480) *")
    assert t.loc["no_fst_cond", "downstream EDFR"] == "—"
    assert len(report.plot_ablation(tidy).axes) == 5
    cfg = config.get_config("smoke")
    meta = pd.DataFrame({"md5hash": ["a"], "fitzpatrick_scale": [1], "label": ["x"]})
    text = ablation.write_table(tmp_path / "ablation_table.md", t, summary, cfg, meta, "synthetic")
    assert text.startswith("# Ablation · synthetic · smoke\n") and "real-only downstream gap 0.100 ± 0.020" in text
    assert (tmp_path / "ablation_table.md").read_text() == text


@pytest.mark.parametrize(("low", "high", "expected"), [
    (4.2, 5.1, "holds"),
    (3.0, 5.0, "undecided: the interval contains the claimed value"),
    (1.2, 2.5, "direction holds, the size does not"),
    (0.3, 0.8, "does not hold: the effect is reversed"),
    (0.6, 2.5, "does not hold; no effect at all is within the interval"),
])
def test_verdict_against_a_ratio_claim(low, high, expected):
    assert ablation.verdict(low, high, 4.0, null=1.0) == expected


def test_verdict_without_a_null_value():
    assert ablation.verdict(0.91, 0.97, 0.9) == "holds"
    assert ablation.verdict(0.85, 0.93, 0.9).startswith("undecided")
    assert ablation.verdict(0.3, 0.5, 0.9) == "does not hold"


def test_claims_hold_on_clear_evidence():
    v = ablation.claim_verdicts(ablation.collect(*_inputs(ratio=(4.6, 4.2, 5.1), light=0.96)))
    assert list(v["verdict"]) == ["holds", "holds"]
    assert v.loc[0, "measured (95% interval)"] == "4.60× [4.20, 5.10], n=80 per FST"
    assert v.loc[1, "measured (95% interval)"] == "0.960 [0.910, 1.010], n=480 (all samples (FST not requested))"
    assert list(v["n"]) == [80, 480] and v.loc[0, "claimed"] == "4×"


def test_claims_fail_on_clear_evidence():
    v = ablation.claim_verdicts(ablation.collect(*_inputs(ratio=(0.7, 0.4, 0.9), light=0.3)))
    assert list(v["verdict"]) == ["does not hold: the effect is reversed", "does not hold"]


def test_an_interval_straddling_the_claim_is_undecided():
    v = ablation.claim_verdicts(ablation.collect(*_inputs(ratio=(3.5, 2.0, 6.0), light=0.9)))
    assert (v["verdict"] == "undecided: the interval contains the claimed value").all()
    assert (v["ci_low"] < [4.0, 0.9]).all() and (v["ci_high"] >= [4.0, 0.9]).all()


def test_a_claim_about_a_variant_not_run_is_left_out():
    quality, adh, summary = _inputs()
    tidy = ablation.collect(quality, adh, summary)
    v = ablation.claim_verdicts(tidy[tidy["variant"] != "no_fst_cond"])
    assert list(v["claim"]) == [ablation.CLAIMS[0].text]


def test_variant_list_and_components():
    assert ablation.variant_list("bmg, standard,", "bmg") == ["bmg", "standard"]
    with pytest.raises(ValueError, match="REFERENCE='bmg' must be one of"):
        ablation.variant_list("standard", "bmg")
    sets = {"bmg": pd.DataFrame(index=range(4)), "standard": pd.DataFrame(index=range(2))}
    t = ablation.components(config.get_config("smoke"), sets, sets)
    assert not t.loc["standard", "FST conditioned"] and t.loc["bmg", "FST conditioned"]
    assert t.loc["bmg", "eval images"] == 4 and t.loc["standard", "removed"] == report.VARIANT_OFF["standard"]
