import numpy as np
import pandas as pd
import pytest

from bmglib.data import schema, splits


def _table(n_per_fst=40, seed=0, patients=False):
    rng = np.random.default_rng(seed)
    rows = []
    for f in schema.FST_LEVELS:
        for i in range(n_per_fst):
            rows.append({"md5hash": f"{f}_{i}", "fitzpatrick_scale": f,
                         "lesion": rng.choice(schema.LESIONS, p=[0.1, 0.2, 0.1, 0.6]),
                         "patient_id": f"p{f}_{i // 3}"})
    return pd.DataFrame(rows)


def test_test_is_balanced_per_fst_and_splits_are_disjoint():
    df = _table()
    s = splits.make_splits(df, test_per_fst=8, val_fraction=0.2, seed=1)
    assert len(s) == len(df) and s.md5hash.is_unique
    merged = df.merge(s, on="md5hash")
    test = merged[merged.split == "test"]
    assert (test.fitzpatrick_scale.value_counts() == 8).all() and test.fitzpatrick_scale.nunique() == 6
    val = merged[merged.split == "val"]
    assert 0.12 < len(val) / (len(df) - len(test)) < 0.3
    assert set(s.split) == {"train", "val", "test"}
    assert s.equals(splits.make_splits(df, test_per_fst=8, val_fraction=0.2, seed=1))  # seeded


def test_groups_never_straddle_splits():
    df = _table(patients=True)
    s = splits.make_splits(df, test_per_fst=6, val_fraction=0.2, seed=0, group_col="patient_id")
    merged = df.merge(s, on="md5hash")
    assert (merged.groupby("patient_id").split.nunique() == 1).all()


def test_too_small_fst_is_named():
    df = _table(n_per_fst=5)
    with pytest.raises(ValueError, match="FST 1 has 5 image"):
        splits.make_splits(df, test_per_fst=6, val_fraction=0.2, seed=0)


def test_cell_table_and_imbalance():
    df = pd.DataFrame({"fitzpatrick_scale": [1, 1, 1, 6, -1], "lesion": ["melanoma"] * 3 + ["melanoma", "nevus"],
                       "md5hash": list("abcde")})
    t = splits.cell_table(df)
    assert t.loc[1, "melanoma"] == 3 and t.loc[6, "melanoma"] == 1 and t.values.sum() == 4
    r = splits.imbalance_ratios(t)
    assert r["melanoma"] == np.inf  # FST II–V have no melanoma
    t2 = t.copy()
    t2["melanoma"] = [30, 20, 10, 10, 5, 3]
    assert splits.imbalance_ratios(t2)["melanoma"] == 10
