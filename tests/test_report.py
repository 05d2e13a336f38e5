"""Report helpers: the ablation table's formatting and the README splice."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from bmglib import report  # noqa: E402


def _share(share, n, over=None):
    d = {"n": n, "share": share, "ci_low": share - 0.1, "ci_high": share + 0.1}
    return d if over is None else {**d, "over": over}


def _measures():
    gap = {"value": 0.12, "sd": 0.03, "ci_low": 0.05, "ci_high": 0.2}
    base = {"fid": {"I-III": 100.0, "IV-VI": 120.0}, "n_group": 240, "fid_sd": 10.0, "n_fst": 80,
            "lesion": _share(0.8, 480), "gap": gap, "edfr": gap}
    return {
        "bmg": {**base, "var_ratio": (1.0, 1.0, 1.0), "fst": _share(0.9, 480), "fst_v_vi": _share(0.8, 160),
                "fst_audit": _share(0.85, 480), "fst_audit_v_vi": _share(0.75, 160),
                "light": _share(0.0, 160, "samples requested as V-VI")},
        "no_fst_cond": {**base, "var_ratio": (2.5, 1.2, 5.0), "fst": None, "fst_v_vi": None,
                        "light": _share(0.6, 480, "all samples (FST not requested)"), "gap": None},
    }


def test_ablation_table_states_every_n_and_interval():
    t = report.ablation_table(_measures())
    assert list(t.index) == ["bmg", "no_fst_cond"]
    assert t.loc["bmg", "FID variance ÷ bmg"] == "1 (reference)"
    assert t.loc["no_fst_cond", "FID variance ÷ bmg"] == "2.50 [1.20, 5.00]"
    assert t.loc["bmg", "FST adherence V–VI (ITA)"] == "0.800 [0.700, 0.900] (n=160)"
    assert t.loc["bmg", "FST adherence V–VI (auditor CNN)"] == "0.750 [0.650, 0.850] (n=160)"
    assert t.loc["no_fst_cond", "FST adherence (ITA)"] == "—"
    assert t.loc["no_fst_cond", "FST adherence (auditor CNN)"] == "—"
    assert t.loc["no_fst_cond", "II–III share when V–VI asked"].endswith("(n=480) *")
    assert not t.loc["bmg", "II–III share when V–VI asked"].endswith("*")
    assert t.loc["bmg", "downstream gap (acc I–III − IV–VI)"] == "0.120 ± 0.030 [0.050, 0.200]"
    assert t.loc["no_fst_cond", "downstream gap (acc I–III − IV–VI)"] == "—"
    assert t.loc["no_fst_cond", "claimed (seed paper)"] == report.CLAIMED_ABLATION["no_fst_cond"]
    assert "n=240 each" in t.loc["bmg", "FID I–III / IV–VI"]
    fig = report.plot_ablation(_measures())
    assert len(fig.axes) == 5


def test_a_value_that_rounds_to_zero_is_not_printed_negative():
    assert report._ci(-0.0001, 0.008, -0.031, 0.032) == "0.000 ± 0.008 [-0.031, 0.032]"
    assert report._ci(-0.0006, float("nan"), -0.01, 0.0) == "-0.001 [-0.010, 0.000]"


def test_splice_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold numbers\n{report.README_END}\noutro\n")
    table = tmp_path / "results_table.md"
    table.write_text("# Results · synthetic · quick\n\ncommit abc · 2026-11-24\n\n| a |\n|---|\n| 1 |\n")
    new = report.splice_readme(readme, [table])
    assert "old numbers" not in new and new.startswith("intro\n") and new.endswith("outro\n")
    assert "### Results · synthetic · quick" in new and "commit abc" in new
    assert report.splice_readme(readme, [table]) == new  # idempotent
    with pytest.raises(FileNotFoundError, match="ablation_table.md"):
        report.splice_readme(readme, [tmp_path / "ablation_table.md"])
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="marker"):
        report.splice_readme(readme, [table])
