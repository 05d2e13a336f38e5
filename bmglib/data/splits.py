"""Splits and cell tables: test balanced per FST, validation stratified by FST × lesion cell.

No image is in two splits; with ``group_col`` (e.g. PAD-UFES-20 ``patient_id``) all images of a
group land in the same split, so a patient never straddles train and test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bmglib.data import schema


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """FST (rows 1..6) × lesion (columns ``schema.LESIONS``) image counts; unknown FST excluded."""
    known = df[df["fitzpatrick_scale"].isin(schema.FST_LEVELS)]
    t = pd.crosstab(known["fitzpatrick_scale"], known["lesion"])
    t = t.reindex(index=list(schema.FST_LEVELS), columns=list(schema.LESIONS), fill_value=0)
    t.index.name, t.columns.name = "fitzpatrick_scale", "lesion"
    return t.astype(int)


def imbalance_ratios(table: pd.DataFrame) -> pd.Series:
    """Per lesion: largest FST cell / smallest FST cell (inf when a cell is empty), and overall."""
    def ratio(v):
        v = np.asarray(v, float)
        if v.max() == 0:
            return np.nan
        return float(v.max() / v.min()) if v.min() > 0 else np.inf
    out = {c: ratio(table[c]) for c in table.columns}
    out["all cells"] = ratio(table.values.ravel())
    return pd.Series(out, name="max/min")


def _unit_table(df: pd.DataFrame, group_col: str | None) -> pd.DataFrame:
    """One row per splitting unit (an image, or a group), with its FST, cell and member rows."""
    unit = df[group_col].astype(str) if group_col else df["md5hash"].astype(str)
    first = df.assign(_unit=unit.to_numpy()).groupby("_unit", sort=True)
    units = first.agg(fst=("fitzpatrick_scale", "first"), lesion=("lesion", "first"),
                      size=("md5hash", "size"))
    return units, unit


def make_splits(df: pd.DataFrame, *, test_per_fst: int, val_fraction: float, seed: int,
                group_col: str | None = None) -> pd.DataFrame:
    """Return ``DataFrame(md5hash, split)`` with split ∈ {train, val, test}.

    * test: ``test_per_fst`` images of each FST present (0 = no test split), drawn cell-stratified
      (proportional to the lesion mix of that FST, rounding by largest remainder);
    * val: ``val_fraction`` of each FST × lesion cell of what remains (at least one image from a
      cell of ≥ 3); train: the rest.
    Raises ``ValueError`` naming the FST when it has fewer than ``test_per_fst`` images.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    units, unit_of_row = _unit_table(df, group_col)
    split = pd.Series("train", index=units.index)
    if test_per_fst > 0:
        for fst in sorted(set(units["fst"]) & set(schema.FST_LEVELS)):  # the FSTs present
            u = units[units["fst"] == fst]
            if u["size"].sum() < test_per_fst:
                raise ValueError(f"FST {fst} has {int(u['size'].sum())} image(s), fewer than "
                                 f"test_per_fst={test_per_fst}: lower it or add data")
            split[_draw_stratified(u, test_per_fst, rng)] = "test"
    rest = units[split == "train"]
    for _, cell in rest.groupby(["fst", "lesion"]):
        n_val = int(round(val_fraction * cell["size"].sum()))
        if n_val == 0 and val_fraction > 0 and cell["size"].sum() >= 3:
            n_val = 1
        order = rng.permutation(cell.index.to_numpy())
        taken, picked = 0, []
        for uid in order:
            if taken >= n_val:
                break
            picked.append(uid)
            taken += int(cell.loc[uid, "size"])
        split[picked] = "val"
    return pd.DataFrame({"md5hash": df["md5hash"].to_numpy(), "split": split[unit_of_row].to_numpy()})


def _draw_stratified(units: pd.DataFrame, n: int, rng: np.random.Generator) -> list:
    """Units of one FST adding up to about ``n`` images, proportional to its lesion mix."""
    sizes = units.groupby("lesion")["size"].sum()
    exact = sizes / sizes.sum() * n
    quota = np.floor(exact).astype(int)
    for les in (exact - quota).sort_values(ascending=False).index[: n - quota.sum()]:
        quota[les] += 1
    picked = []
    for les, q in quota.items():
        taken = 0
        for uid in rng.permutation(units.index[units["lesion"] == les].to_numpy()):
            if taken >= q:
                break
            picked.append(uid)
            taken += int(units.loc[uid, "size"])
    return picked
