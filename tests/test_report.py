"""Report helpers: the ablation table's formatting and the README splice."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
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



def _tidy():
    """:func:`_measures` as the tidy table of ``bmglib.ablation.collect`` (one row per measure)."""
    rows = []
    for v, m in _measures().items():
        rows += [{"variant": v, "measure": f"fid {g}", "value": m["fid"][g], "n": m["n_group"]} for g in m["fid"]]
        rows.append({"variant": v, "measure": "fid_sd", "value": m["fid_sd"], "n": m["n_fst"]})
        r, lo, hi = m["var_ratio"]
        rows.append({"variant": v, "measure": "fid_var_ratio", "value": r, "ci_low": lo, "ci_high": hi,
                     "n": m["n_fst"]})
        for k in ("fst", "fst_v_vi", "fst_audit", "fst_audit_v_vi", "light", "lesion"):
            if (d := m.get(k)) is not None:
                rows.append({"variant": v, "measure": k, "value": d["share"], "ci_low": d["ci_low"],
                             "ci_high": d["ci_high"], "n": d["n"], "note": d.get("over", "")})
        for k in ("gap", "edfr"):
            if (d := m.get(k)) is not None:
                rows.append({"variant": v, "measure": k, **d, "n": 960})
    return pd.DataFrame(rows).fillna({"note": ""})

def test_ablation_table_states_every_n_and_interval():
    t = report.ablation_table(_tidy())
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
    fig = report.plot_ablation(_tidy())
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


RESULTS_MD = """# Results · synthetic · quick

commit abc · 2026-11-25 · resnet18 width 16, 3 seeds

| arm | FID I-III | EDFR | gap (acc I–III − IV–VI) | n test (mel) I–III / IV–VI | seeds | claimed (seed paper) |
|---|---|---|---|---|---|---|
| real | — | 0.036 ± 0.019 [-0.008, 0.089] | -0.058 | 480 (120) / 480 (120) | 3 | gap 27% |
"""


RESULTS_COLUMNS = ("arm", "EDFR", "gap (acc I–III − IV–VI)", "n test (mel) I–III / IV–VI", "seeds",
                   "claimed (seed paper)")

PROTOCOL_MD = """# The protocol's result · quick

commit abc · 2026-12-02 · resnet18 width 16

| arm | FNR gap IV–VI − I–III | Δ FNR gap vs real | AUC | ES-AUC | n test (mel) I–III / IV–VI | generator × classifier runs | model_id (generator seed: md5) | claimed (seed paper) |
|---|---|---|---|---|---|---|---|---|
| real | 0.179 [0.085, 0.271] | — | 0.91 [0.90, 0.92] | 0.86 [0.85, 0.87] | 480 (120) / 480 (120) | 9 runs | — | EDFR 0.21 |
"""


def test_the_headline_keeps_the_named_columns_and_the_stamp():
    out = report.select_columns(RESULTS_MD, RESULTS_COLUMNS)
    assert out.splitlines()[0] == "*Results · synthetic · quick* · commit abc · 2026-11-25 · resnet18 width 16, 3 seeds"
    assert "| arm | EDFR | gap (acc I–III − IV–VI) | n test (mel) I–III / IV–VI | seeds | claimed (seed paper) |" in out
    assert "| real | 0.036 ± 0.019 [-0.008, 0.089] | -0.058 | 480 (120) / 480 (120) | 3 | gap 27% |" in out
    assert "FID" not in out
    with pytest.raises(KeyError, match="accuracy I-III"):
        report.select_columns(RESULTS_MD, ("arm", "accuracy I-III"))


def test_make_readme_splices_every_block_from_the_profile_figures(tmp_path):
    (tmp_path / "docs").mkdir()
    fig = tmp_path / "figures" / "quick"
    fig.mkdir(parents=True)
    for target, name, _ in report.SPLICES:
        begin, end = report.markers(name)
        (tmp_path / target).write_text(f"text\n{begin}\nold\n{end}\nmore\n")
    (fig / "results_table.md").write_text(RESULTS_MD)
    (fig / "protocol_table.md").write_text(PROTOCOL_MD)
    (fig / "ablation_table.md").write_text("# Ablation\n\ncommit abc\n\n| variant |\n|---|\n| bmg |\n")
    with pytest.raises(FileNotFoundError, match="probe_table_synthetic.md"):
        report.splice_all("quick", tmp_path)
    (fig / "probe_table_synthetic.md").write_text("# Bias probe\n\ncommit abc\n\n| seed |\n|---|\n| 0 |\n")
    assert len(report.splice_all("quick", tmp_path)) == len(report.SPLICES)
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme and "| real | 0.179 [0.085, 0.271] | — | 0.86 [0.85, 0.87] |" in readme
    assert "| AUC |" not in readme  # a column the headline leaves to docs/results.md
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "### The protocol's result · quick" in results and "| AUC |" in results
    assert "### Results · synthetic · quick" in results and "### Ablation" in results and "FID I-III" in results
    assert "| 0 |" in (tmp_path / "docs" / "benchmark.md").read_text()
    (fig / "protocol_table.md").write_text(PROTOCOL_MD.replace("0.179", "0.150"))
    assert report.splice_all("quick", tmp_path, only=("headline",)) == ["README.md (headline)"]
    assert "0.150" in (tmp_path / "README.md").read_text() and "0.179" in (tmp_path / "docs" / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown block"):
        report.splice_all("quick", tmp_path, only=("headlines",))


def test_training_log_marks_where_progressive_resolution_ends():
    from bmglib import config

    log = pd.DataFrame({"step": range(1, 21), "denoise": [0.1] * 20, "fair_kl": [0.0] * 20, "fair_ce": [0.0] * 20})
    d = config.get_config("smoke", {"diffusion.steps": 20, "diffusion.lowres_until": 0.75}).diffusion
    ax = report.plot_training_log(log, "t", diffusion=d).axes[0]
    assert [line.get_xdata()[0] for line in ax.lines[2:]] == [15.5]  # after the 15th (1-based) step, the last at 16 px
    assert len(report.plot_training_log(log, "t").axes[0].lines) == 2
