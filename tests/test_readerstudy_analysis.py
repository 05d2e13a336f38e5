"""The reader-study analysis recovers what simulated readers were built to show."""

from __future__ import annotations

import krippendorff
import pandas as pd
import pytest

from bmglib.data import schema
from bmglib.readerstudy import analysis, simulate


def make_key(n_per_cell: int, sources=("real", "bmg", "standard")) -> pd.DataFrame:
    rows = [{"source": s, "is_synthetic": s != "real", "fitzpatrick_scale": f, "fst_group": schema.fst_group(f),
             "lesion": les} for s in sources for f in schema.FST_LEVELS for les in schema.LESIONS
            for _ in range(n_per_cell)]
    key = pd.DataFrame(rows)
    key.insert(0, "image_id", [f"{i:016x}" for i in range(len(key))])
    return key


@pytest.fixture(scope="module")
def simulated():
    key = make_key(5)  # 360 images, 10 readers: 3,600 ratings
    model = simulate.ReaderModel(n_readers=10, seed=0,
                                 quality={"real": (4.4, 4.4), "bmg": (4.4, 4.4), "standard": (4.0, 2.4)})
    answers = simulate.answer_key(key, model)
    truth = simulate.expected(key, model)
    return key, model, answers, truth


@pytest.fixture(scope="module")
def tables(simulated):
    _, _, answers, truth = simulated
    return analysis.realism_table(answers, n_boot=500), analysis.auc_table(answers, n_boot=500)


def merged(table, truth):
    return table.merge(truth, on=["source", "level", "group"])


def test_known_auc_is_recovered_within_its_ci(simulated, tables):
    truth = simulated[3]
    auc = merged(tables[1], truth)
    headline = auc[auc["level"] != "fst"].set_index(["source", "group"])
    std = headline.loc[("standard", "IV-VI")]
    assert std["true_auc"] > 0.8 and std["auc_ci_low"] <= std["true_auc"] <= std["auc_ci_high"]
    assert std["auc_ci_low"] > 0.5  # a real effect is found ...
    same = headline.loc[("bmg", "all")]  # ... and a null one (bmg built as realistic as real) is not
    assert same["true_auc"] == pytest.approx(0.5)
    assert same["auc_ci_low"] <= 0.5 <= same["auc_ci_high"]
    covered = (auc["auc_ci_low"] <= auc["true_auc"]) & (auc["true_auc"] <= auc["auc_ci_high"])
    assert covered.mean() >= 0.8, auc[~covered]
    assert {"auc_R01", "auc_R10"} <= set(auc.columns)


def test_known_realism_is_recovered_within_its_ci(simulated, tables):
    truth = simulated[3]
    t = merged(tables[0], truth)
    assert len(t) == 3 * 9 and (t["n_readers"] == 10).all()
    covered_mean = (t["mean_ci_low"] <= t["true_mean_realism"]) & (t["true_mean_realism"] <= t["mean_ci_high"])
    covered_share = (t["share_ci_low"] <= t["true_share_ge4"]) & (t["true_share_ge4"] <= t["share_ci_high"])
    assert covered_mean.mean() >= 0.8 and covered_share.mean() >= 0.8
    row = t[(t["source"] == "standard") & (t["group"] == "IV-VI")].iloc[0]
    assert row["mean_ci_high"] < 3 and row["mean_ci_low"] <= row["true_mean_realism"] <= row["mean_ci_high"]


def test_interval_widens_with_reader_spread():
    """Readers are a sample too: the same images rated by readers whose leniency varies get a wider
    interval for the mean (an images-only bootstrap would not see the difference)."""
    key = make_key(2, sources=("real",))
    widths = []
    for sd_reader in (0.0, 1.0):
        answers = simulate.answer_key(key, simulate.ReaderModel(n_readers=6, sd_reader=sd_reader, seed=1))
        m = analysis.crossed_mean(answers, "realism", 500, 0)
        widths.append(m["ci_high"] - m["ci_low"])
    assert widths[1] > 1.5 * widths[0]


def test_lesion_accuracy_follows_quality(simulated):
    _, _, answers, truth = simulated
    t = merged(analysis.lesion_table(answers, n_boot=300), truth).set_index(["source", "group"])
    assert t.loc[("standard", "IV-VI"), "accuracy_ci_high"] < t.loc[("real", "IV-VI"), "accuracy_ci_low"]
    assert 0.7 < t.loc[("real", "all"), "share_named"] < 0.9
    for idx in [("real", "all"), ("standard", "IV-VI")]:
        r = t.loc[idx]
        assert r["accuracy_ci_low"] <= r["true_lesion_accuracy"] <= r["accuracy_ci_high"]


def test_hand_made_auc_and_means():
    rows = []
    for r, (syn, real) in {"R1": ([10, 9], [1, 2]), "R2": ([1, 1], [10, 9]), "R3": ([5, 5], [5, 5])}.items():
        for k, s in enumerate(syn):
            rows.append({"reader_id": r, "image_id": f"s{k}", "synthetic_score": s, "source": "bmg"})
        for k, s in enumerate(real):
            rows.append({"reader_id": r, "image_id": f"r{k}", "synthetic_score": s, "source": "real"})
    df = pd.DataFrame(rows)
    a = analysis.reader_auc(df[df["source"] == "bmg"], df[df["source"] == "real"], 200, 0)
    assert a["per_reader"] == {"R1": 1.0, "R2": 0.0, "R3": 0.5} and a["auc"] == pytest.approx(0.5)
    m = analysis.crossed_mean(df.assign(v=df["synthetic_score"]), "v", 200, 0)
    assert m["value"] == pytest.approx(df["synthetic_score"].mean()) and m["n_ratings"] == 12
    assert analysis.roc_points(df, "bmg")["tpr"].iloc[-1] == 1.0


def test_krippendorff_alpha_matches_the_package(simulated):
    _, _, answers, _ = simulated
    sub = answers[answers["source"] == "standard"]
    a = analysis.kripp_alpha(sub, "realism", n_boot=50)
    data = sub.pivot(index="reader_id", columns="image_id", values="realism").to_numpy(float)
    want = krippendorff.alpha(reliability_data=data - 1, level_of_measurement="ordinal", value_domain=range(5))
    assert a["alpha"] == pytest.approx(want) and a["ci_low"] < a["alpha"] < a["ci_high"]
    perfect = sub.assign(realism=sub["image_id"].map(lambda i: 1 + int(i, 16) % 5))
    assert analysis.kripp_alpha(perfect, "realism", n_boot=20)["alpha"] == pytest.approx(1.0)
    table = analysis.agreement_table(answers, n_boot=20)
    assert set(table["measure"]) == {"realism", "synthetic_score", "judgement"}
    assert set(table["source"]) == {"all", "real", "bmg", "standard"}


def test_summary_quotes_the_paper_apart_and_names_the_readers(simulated, tables):
    s = analysis.summary_table(*tables, simulated[3], readers="simulated readers")
    claimed = [c for c in s.columns if c.startswith("claimed (seed paper")]
    assert len(claimed) == 1 and "3 board-certified dermatologists, 300" in claimed[0]
    assert s.loc[("bmg", "IV-VI"), claimed[0]] == "89% rated ≥ 4; mean 4.3"
    assert s.loc[("standard", "IV-VI"), claimed[0]] == "mean 2.1"
    assert all("simulated readers" in c for c in s.columns if c.startswith(("mean", "rated", "AUC")))
    assert "simulation truth" in s.columns
    recovery = analysis.recovery_table(*tables, simulated[3])
    assert len(recovery) == 3 * 3 + 3 * 3 + 2 * 3 and recovery["inside CI"].mean() >= 0.8


def test_simulated_study_runs_through_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    model = simulate.ReaderModel(n_readers=2)
    study, table = simulate.simulated_study("sim", "smoke", ["bmg"], 1, model)
    assert len(table) == 2 * 48 and table["simulated"].all() and study.meta["notes"][0].startswith("rated by SIM")
    assert any("stand-ins" in n for n in study.meta["notes"])
    assert table.groupby("reader_id")["image_id"].nunique().eq(48).all()


def test_demo_pool_uses_what_exists_and_stands_in_for_the_rest(tmp_path, monkeypatch):
    from _readerstudy import make_pool

    from bmglib import paths

    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path / "data"))
    pool = make_pool(tmp_path / "pool", n_per_cell=1)
    real = pool[pool["source"] == "real"]
    meta = paths.processed_dir("smoke", "synthetic")
    meta.mkdir(parents=True)
    real.assign(split="test", md5hash=[f"m{i}" for i in range(len(real))], label="x", three_partition_label="benign",
                nine_partition_label="x").drop(columns="source").to_csv(meta / "metadata.csv", index=False)
    sample_set = paths.samples_dir("smoke", "bmg", "eval")
    sample_set.mkdir(parents=True)
    bmg = pool[pool["source"] == "bmg"]
    pd.DataFrame({"image_path": bmg["image_path"], "lesion": bmg["lesion"], "plan_fst": bmg["fitzpatrick_scale"],
                  "fitzpatrick_scale": 1}).to_csv(sample_set / "manifest.csv", index=False)
    got, notes = simulate.demo_pool("smoke", ["bmg", "standard"], n_per_cell=1)
    assert set(got.loc[got["source"] == "real", "image_path"]) == set(real["image_path"])
    assert set(got.loc[got["source"] == "bmg", "image_path"]) == set(bmg["image_path"])
    assert (got.loc[got["source"] == "bmg", "fitzpatrick_scale"].to_numpy() == bmg["fitzpatrick_scale"]).all()
    assert len(notes) == 1 and notes[0].startswith("standard: no sample set") and "stand-ins" in notes[0]
    assert (got["source"] == "standard").sum() == 24
