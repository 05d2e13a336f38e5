"""Splits and cell tables: a test split balanced per FST, validation stratified by FST × lesion.

No image is in two splits; with ``group_col`` (e.g. PAD-UFES-20 ``patient_id``) all images of a
group land in the same split, so a patient never straddles train and test. Splitting works on
*units* — one image, or one group — and counts images, so balance is exact whenever the group
sizes allow it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from bmglib.data import schema

SPLITS = ("train", "val", "test")


# --- cell tables ------------------------------------------------------------------------------


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """FST (rows 1..6) × lesion (columns ``schema.LESIONS``) image counts, int; unknown FST excluded."""
    known = df[df["fitzpatrick_scale"].isin(schema.FST_LEVELS)]
    t = pd.crosstab(known["fitzpatrick_scale"], known["lesion"])
    t = t.reindex(index=list(schema.FST_LEVELS), columns=list(schema.LESIONS), fill_value=0)
    t.index.name, t.columns.name = "fitzpatrick_scale", "lesion"
    return t.astype(int)


def _max_over_min(v) -> float:
    v = np.asarray(v, dtype=float)
    if v.size == 0 or v.max() == 0:
        return float("nan")  # nothing to compare
    return float(v.max() / v.min()) if v.min() > 0 else float("inf")


def imbalance_ratios(table: pd.DataFrame) -> pd.Series:
    """Per lesion: largest FST cell / smallest FST cell; ``overall``: largest / smallest cell.

    ``inf`` when the smallest cell is empty but another is not; ``nan`` when all are empty.
    """
    out = {c: _max_over_min(table[c]) for c in table.columns}
    out["overall"] = _max_over_min(table.to_numpy().ravel())
    return pd.Series(out, name="max/min")


# --- units ------------------------------------------------------------------------------------


def _units(df: pd.DataFrame, group_col: str | None) -> tuple[pd.DataFrame, pd.Series]:
    """One row per splitting unit (an image or a group) and each image's unit id.

    Unit columns: ``fst`` (the most common FST of its images), ``pure`` (all its images share that
    FST; only pure units can make an exactly balanced test split), ``lesion`` (most common lesion,
    the stratum), ``size`` (images).
    """
    if group_col is None:  # every image its own unit: no per-group aggregation (fast on 16k rows)
        unit = df["md5hash"].astype(str)
        units = pd.DataFrame({"fst": df["fitzpatrick_scale"].astype(int).to_numpy(), "pure": True,
                              "lesion": df["lesion"].to_numpy(), "size": 1}, index=unit.to_numpy())
        return units.sort_index(), unit
    if group_col not in df.columns:
        raise KeyError(f"group_col {group_col!r} is not a column of the table")
    unit = df[group_col].astype(str)
    g = df.assign(_unit=unit.to_numpy()).groupby("_unit", sort=True)
    units = pd.DataFrame({
        "fst": g["fitzpatrick_scale"].agg(lambda s: s.mode().iloc[0]).astype(int),
        "pure": g["fitzpatrick_scale"].nunique() == 1,
        "lesion": g["lesion"].agg(lambda s: s.mode().iloc[0]),
        "size": g.size(),
    })
    return units, unit


def _allocate(n: int, weight: pd.Series, capacity: pd.Series) -> pd.Series:
    """Split ``n`` over strata ∝ ``weight`` (largest remainder), capped by ``capacity``.

    What a full stratum cannot take is redistributed over the others, so the quotas sum to
    ``min(n, capacity.sum())``.
    """
    quota = pd.Series(0, index=capacity.index)
    left = min(n, int(capacity.sum()))
    while left > 0:
        room = capacity - quota
        room = room[room > 0]
        w = weight.reindex(room.index).fillna(0).astype(float)
        w = w if w.sum() > 0 else room.astype(float)  # no weight left: fill by what is there
        exact = w / w.sum() * left
        add = np.floor(exact).astype(int)
        for k in (exact - add).sort_values(ascending=False, kind="stable").index[: left - add.sum()]:
            add[k] += 1
        add = np.minimum(add, room)
        quota[add.index] += add
        left -= int(add.sum())
    return quota


def _pick(units: pd.DataFrame, n: int, rng: np.random.Generator, taken: set) -> list:
    """Units (in random order) adding up to at most ``n`` images, skipping ones that overshoot."""
    picked, total = [], 0
    for uid in rng.permutation(units.index.to_numpy()):
        if total == n:
            break
        size = int(units.at[uid, "size"])
        if uid not in taken and total + size <= n:
            picked.append(uid)
            total += size
    return picked


# --- the test split ---------------------------------------------------------------------------


def _test_units(units: pd.DataFrame, fst: int, n: int, weight: pd.Series,
                rng: np.random.Generator) -> list:
    """Exactly ``n`` images of FST ``fst`` (if the group sizes allow), stratified by lesion."""
    pool = units[(units["fst"] == fst) & units["pure"]]
    have = int(pool["size"].sum())
    if have < n:
        mixed = int(units.loc[(units["fst"] == fst) & ~units["pure"], "size"].sum())
        extra = f" (+{mixed} in groups of mixed FST, not eligible)" if mixed else ""
        raise ValueError(f"FST {fst} has {have} image(s){extra}, fewer than test_per_fst={n}: "
                         "lower test_per_fst or add data")
    quota = _allocate(n, weight, pool.groupby("lesion")["size"].sum())
    picked: set = set()
    for lesion, q in quota.items():
        picked.update(_pick(pool[pool["lesion"] == lesion], int(q), rng, picked))
    short = n - int(pool.loc[list(picked), "size"].sum())
    if short:  # groups did not fit their lesion quotas: top up from any lesion
        picked.update(_pick(pool, short, rng, picked))
        short = n - int(pool.loc[list(picked), "size"].sum())
    if short:
        warnings.warn(f"FST {fst}: group sizes allow {n - short} test images, not {n}", stacklevel=3)
    return sorted(picked)


def _test_weights(units: pd.DataFrame, fst: int, test_mix: str) -> pd.Series:
    """Target lesion mix of FST ``fst``'s test images: the whole table's, or that FST's own."""
    if test_mix == "overall":
        known = units[units["fst"].isin(schema.FST_LEVELS)]
    elif test_mix == "per_fst":
        known = units[units["fst"] == fst]
    else:
        raise ValueError(f"test_mix must be 'overall' or 'per_fst', got {test_mix!r}")
    return known.groupby("lesion")["size"].sum()


# --- validation and the whole ------------------------------------------------------------------


def _val_units(rest: pd.DataFrame, val_fraction: float, rng: np.random.Generator) -> list:
    """``val_fraction`` of each FST × lesion cell (≥ 1 image from a cell of ≥ 3 images)."""
    picked: list = []
    if val_fraction == 0:
        return picked
    for _, cell in rest.groupby(["fst", "lesion"], sort=True):
        size = int(cell["size"].sum())
        n_val = int(round(val_fraction * size))
        if n_val == 0 and size >= 3:  # a rare cell still gets validated
            n_val = 1
        picked += _pick(cell, n_val, rng, set())
    return picked


def make_splits(df: pd.DataFrame, *, test_per_fst: int, val_fraction: float, seed: int,
                group_col: str | None = None, fst_levels=None,
                test_mix: str = "overall") -> pd.DataFrame:
    """Assign every image of ``df`` to train / val / test.

    Args:
        df: a schema table (``md5hash`` unique, ``fitzpatrick_scale``, ``lesion``).
        test_per_fst: images per FST in test (0 = no test split). Drawn from each FST in
            ``fst_levels`` (default: the known FSTs present in ``df``, so a table keyed on DDI's
            ranges 2/4/6 works; pass ``schema.FST_LEVELS`` to demand all six). Rows of unknown FST
            never go to test.
        val_fraction: in [0, 1); the share of each FST × lesion cell of the rest that goes to val.
        seed: the split is a pure function of ``(df, arguments)``.
        group_col: e.g. ``patient_id``: all images of a group share one split; test only draws
            groups whose images share one FST.
        test_mix: the lesion mix aimed at within each FST's test images, as far as the cell counts
            allow: ``overall`` (the whole table's mix, the same for every FST, so per-FST metrics
            compare like with like) or ``per_fst`` (proportional to that FST's own mix).
    Returns:
        ``DataFrame(md5hash, split)`` in ``df``'s row order, split ∈ ``SPLITS``.
    Raises:
        ValueError: an FST has fewer than ``test_per_fst`` eligible images (named with its count).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if df["md5hash"].duplicated().any():
        raise ValueError("md5hash must be unique to split by image")
    rng = np.random.default_rng(seed)
    units, unit_of_row = _units(df, group_col)
    split = pd.Series("train", index=units.index, dtype=object)
    if test_per_fst > 0:
        present = sorted(set(units["fst"]) & set(schema.FST_LEVELS))
        for fst in (present if fst_levels is None else fst_levels):
            weight = _test_weights(units, fst, test_mix)
            split[_test_units(units, int(fst), test_per_fst, weight, rng)] = "test"
    split[_val_units(units[split == "train"], val_fraction, rng)] = "val"
    return pd.DataFrame({"md5hash": df["md5hash"].to_numpy(),
                         "split": split[unit_of_row].to_numpy()})
