"""Splits: disjoint, test exactly balanced per FST, groups intact; cell tables and ratios."""

import numpy as np
import pandas as pd
import pytest

from bmglib.data import schema, splits


def _table(n_per_fst=60, seed=0, unknown=0):
    """Images of FST 1..6 (+ ``unknown`` of FST -1) with a skewed lesion mix and 1-3 images per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in [*schema.FST_LEVELS, *[schema.FST_UNKNOWN] * (unknown > 0)]:
        n = unknown if f == schema.FST_UNKNOWN else n_per_fst
        for i in range(n):
            rows.append({"md5hash": f"{f}_{i}", "fitzpatrick_scale": f,
                         "lesion": rng.choice(schema.LESIONS, p=[0.15, 0.25, 0.1, 0.5]),
                         "patient_id": f"p{f}_{i // 2 if i % 5 else i}"})  # groups of 1 and 2
    return pd.DataFrame(rows)


def _merged(df, **kw):
    s = splits.make_splits(df, **kw)
    assert list(s.columns) == ["md5hash", "split"] and list(s.md5hash) == list(df.md5hash)
    return df.assign(split=s.split.to_numpy())


def test_test_is_balanced_per_fst_and_splits_are_disjoint():
    df = _table(unknown=10)
    m = _merged(df, test_per_fst=12, val_fraction=0.2, seed=1)
    assert set(m.split) == set(splits.SPLITS)  # one split per image, every image assigned
    test = m[m.split == "test"]
    assert test.fitzpatrick_scale.value_counts().to_dict() == {f: 12 for f in schema.FST_LEVELS}
    rest = m[(m.split != "test")]
    assert 0.15 < (rest.split == "val").mean() < 0.25
    # val is stratified: every FST × lesion cell of ≥ 3 remaining images has some val
    cells = rest.groupby(["fitzpatrick_scale", "lesion"]).split
    assert all((g == "val").any() for _, g in cells if len(g) >= 3)
    s = splits.make_splits(df, test_per_fst=12, val_fraction=0.2, seed=1)
    assert s.equals(splits.make_splits(df, test_per_fst=12, val_fraction=0.2, seed=1))  # seeded
    assert not s.equals(splits.make_splits(df, test_per_fst=12, val_fraction=0.2, seed=2))


def test_unknown_fst_never_in_test():
    m = _merged(_table(unknown=30), test_per_fst=10, val_fraction=0.3, seed=0)
    assert set(m[m.fitzpatrick_scale == schema.FST_UNKNOWN].split) <= {"train", "val"}


def test_test_lesion_mix_is_stratified():
    df = _table(n_per_fst=200)
    m = _merged(df, test_per_fst=40, val_fraction=0.1, seed=0)
    mix = m[m.split == "test"].groupby("fitzpatrick_scale").lesion.value_counts().unstack(fill_value=0)
    target = df.lesion.value_counts(normalize=True) * 40
    assert (mix.sub(target, axis=1).abs() <= 1).all().all()  # same overall mix in every FST, ±1 rounding
    m = _merged(df, test_per_fst=40, val_fraction=0.1, seed=0, test_mix="per_fst")
    mix = m[m.split == "test"].groupby("fitzpatrick_scale").lesion.value_counts().unstack(fill_value=0)
    own = df.groupby("fitzpatrick_scale").lesion.value_counts(normalize=True).unstack(fill_value=0) * 40
    assert (mix - own).abs().max().max() <= 1


def test_rare_cell_shortfall_is_redistributed():
    df = _table(n_per_fst=100)
    df = df[~((df.fitzpatrick_scale == 6) & (df.lesion == "melanoma"))].iloc[:-1]  # FST VI: no melanoma
    df = pd.concat([df, pd.DataFrame([{"md5hash": "mel6", "fitzpatrick_scale": 6,
                                       "lesion": "melanoma", "patient_id": "q"}])])
    m = _merged(df, test_per_fst=30, val_fraction=0.0, seed=0)
    test6 = m[(m.split == "test") & (m.fitzpatrick_scale == 6)]
    assert len(test6) == 30 and (test6.lesion == "melanoma").sum() == 1  # all it has, rest elsewhere
    assert set(m.split) == {"train", "test"}  # val_fraction 0: no val


def test_groups_never_straddle_splits_and_test_stays_exact():
    df = _table()
    m = _merged(df, test_per_fst=9, val_fraction=0.2, seed=0, group_col="patient_id")
    assert (m.groupby("patient_id").split.nunique() == 1).all()
    assert m[m.split == "test"].fitzpatrick_scale.value_counts().to_dict() == {f: 9 for f in schema.FST_LEVELS}
    # a patient seen on two FSTs is never a test patient (the balance could not be exact)
    df.loc[df.md5hash == "1_1", "fitzpatrick_scale"] = 2
    m = _merged(df, test_per_fst=9, val_fraction=0.2, seed=0, group_col="patient_id")
    assert (m[m.patient_id == "p1_0"].split != "test").all()


def test_too_small_fst_is_named_with_its_count():
    df = _table(n_per_fst=20)
    df = df[(df.fitzpatrick_scale != 5) | df.md5hash.isin([f"5_{i}" for i in range(5)])]  # FST V: 5 left
    with pytest.raises(ValueError, match=r"FST 5 has 5 image\(s\), fewer than test_per_fst=6"):
        splits.make_splits(df, test_per_fst=6, val_fraction=0.2, seed=0)
    no6 = _table(n_per_fst=20).query("fitzpatrick_scale != 6")
    assert len(splits.make_splits(no6, test_per_fst=6, val_fraction=0.2, seed=0)) == len(no6)  # present FSTs
    with pytest.raises(ValueError, match="FST 6 has 0 image"):
        splits.make_splits(no6, test_per_fst=6, val_fraction=0.2, seed=0, fst_levels=schema.FST_LEVELS)


def test_real_fitzpatrick17k_split(shared_real):
    from bmglib.data import sources

    df = sources.load_fitzpatrick17k(shared_real / "fitzpatrick17k.csv")
    m = _merged(df, test_per_fst=120, val_fraction=0.1, seed=0)
    test = m[m.split == "test"]
    assert test.fitzpatrick_scale.value_counts().to_dict() == {f: 120 for f in schema.FST_LEVELS}
    assert (test.lesion == "melanoma").groupby(test.fitzpatrick_scale).sum().min() >= 4


def test_cell_table_and_imbalance():
    df = pd.DataFrame({"fitzpatrick_scale": [1, 1, 1, 6, -1], "lesion": ["melanoma"] * 4 + ["nevus"],
                       "md5hash": list("abcde")})
    t = splits.cell_table(df)
    assert list(t.index) == list(schema.FST_LEVELS) and list(t.columns) == list(schema.LESIONS)
    assert t.loc[1, "melanoma"] == 3 and t.loc[6, "melanoma"] == 1 and t.to_numpy().sum() == 4  # -1 excluded
    r = splits.imbalance_ratios(t)
    assert r["melanoma"] == np.inf and np.isnan(r["nevus"]) and r["overall"] == np.inf
    t2 = t.copy()
    t2[:] = 1
    t2["melanoma"] = [30, 20, 10, 10, 5, 3]
    r2 = splits.imbalance_ratios(t2)
    assert r2["melanoma"] == 10 and r2["nevus"] == 1 and r2["overall"] == 30
