"""Turn a dataset choice into the tables every later notebook reads (01_data_audit writes them).

    prepared = prepare(cfg, "synthetic")           # or "fitzpatrick17k", "ddi", ..., "csv"
    prepared.metadata                               # schema table + a ``split`` column
    load_prepared("quick", "synthetic")             # later notebooks: the same table from disk

Written to ``paths.processed_dir(profile, dataset)``: ``metadata.csv`` (with ``split``),
``cell_table.csv`` (FST × lesion counts of the training split), ``image_report.csv`` (unusable
images, when the source has images) and ``provenance.json``.

Splits: the test set is balanced per FST and never shares an image with train/val. For the
synthetic dataset it is a separately generated set, balanced per FST × lesion (``test_per_cell``),
while train/val come from the Fitzpatrick17k-proportioned pool; for real sources it is drawn from
the table itself by :func:`bmglib.data.splits.make_splits`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bmglib import config, paths
from bmglib.data import schema, splits, synthetic

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """The outcome of :func:`prepare` (also what 01_data_audit shows)."""

    dataset: str
    metadata: pd.DataFrame  # schema columns + ``split``
    image_report: pd.DataFrame  # one row per unusable image (empty when all were fine)
    n_unknown_fst: int  # rows with unknown FST, handled by ``cfg.data.unknown_fst``
    has_images: bool
    out_dir: Path
    notes: list[str]

    def split(self, name: str) -> pd.DataFrame:
        return self.metadata[self.metadata["split"] == name].reset_index(drop=True)


def _no_problems() -> pd.DataFrame:
    """An empty image report (the columns ``images.check_images`` writes)."""
    from bmglib.data.images import REPORT_COLUMNS

    return pd.DataFrame(columns=list(REPORT_COLUMNS))


def _synthetic(cfg: config.Config, progress: bool):
    d = cfg.data
    root = paths.synthetic_dir(cfg.profile, d.seed)
    pool = synthetic.generate_dataset(root / "pool", d.n_images, d.image_size, d.seed, d.counts,
                                      d.min_per_cell, "pool", d.workers, progress)
    test = synthetic.generate_dataset(root / "test", d.test_per_cell * len(schema.FST_LEVELS) * len(schema.LESIONS),
                                      d.image_size, d.seed, "balanced", 0, "test", d.workers, progress)
    s = splits.make_splits(pool, test_per_fst=0, val_fraction=d.val_fraction, seed=d.seed)
    pool = pool.merge(s, on="md5hash", how="left")
    meta = pd.concat([pool, test.assign(split="test")], ignore_index=True)
    return meta, _no_problems(), 0, True, []


def _real(cfg: config.Config, dataset: str, data_path, image_dir, column_map, progress: bool):
    from bmglib.data import images, sources

    kw = {"column_map": column_map} if dataset == "csv" else {}
    notes = []
    if dataset == "isic2017":  # no FST labels: estimate from ITA, flagged as estimated
        kw["estimate_fst"] = True
        notes.append("isic2017 carries no FST labels: FST is estimated from ITA (fst_estimated=True).")
    df = sources.load_source(dataset, data_path, image_dir=image_dir, **kw)
    df, n_unknown = schema.apply_unknown_fst_policy(df, cfg.data.unknown_fst)
    if df.empty:
        raise ValueError(f"{dataset}: every row has an unknown FST and the policy is "
                         f"{cfg.data.unknown_fst!r}; nothing is left to audit")
    has_images = bool((df["image_path"] != "").any())
    report = _no_problems()
    if has_images:
        df, report = images.check_images(df)
    # DDI knows FST only as ranges (1-2, 3-4, 5-6): balance and stratify on the range instead
    key = df["fitzpatrick_scale"].where(df["fitzpatrick_scale"] > 0, df["fst_high"])
    counts = key[key > 0].value_counts()
    test_per_fst = max(1, int(0.2 * counts.min())) if len(counts) else 0
    if len(counts) and counts.min() < 10:
        notes.append(f"FST {counts.idxmin()} has only {counts.min()} image(s): a test split balanced "
                     f"per FST holds {test_per_fst} image(s) per FST; per-FST metrics are not meaningful.")
    keyed = df.assign(fitzpatrick_scale=key)
    group_col = "patient_id" if "patient_id" in df.columns else None
    s = splits.make_splits(keyed[keyed["fitzpatrick_scale"] > 0], test_per_fst=test_per_fst,
                           val_fraction=cfg.data.val_fraction, seed=cfg.data.seed, group_col=group_col)
    df = df.merge(s, on="md5hash", how="left")
    df["split"] = df["split"].fillna("unassigned")  # only with unknown_fst="keep"
    return df, report, n_unknown, has_images, notes


def prepare(cfg: config.Config, dataset: str = "synthetic", data_path: str | Path | None = None,
            image_dir: str | Path | None = None, column_map: dict[str, str] | None = None,
            progress: bool = True) -> PreparedData:
    """Load or generate ``dataset``, validate it, split it and write the processed tables."""
    if dataset == "synthetic":
        meta, report, n_unknown, has_images, notes = _synthetic(cfg, progress)
    elif dataset in schema.SOURCES:
        meta, report, n_unknown, has_images, notes = _real(cfg, dataset, data_path, image_dir,
                                                           column_map, progress)
    else:
        raise ValueError(f"DATASET must be one of {schema.SOURCES}, got {dataset!r}")
    out = paths.processed_dir(cfg.profile, dataset)
    tables = {"metadata.csv": meta.to_csv(index=False), "image_report.csv": report.to_csv(index=False),
              "cell_table.csv": splits.cell_table(meta[meta["split"] == "train"]).to_csv()}
    stamp = config.provenance(cfg, dataset_hash=config.hash_table(meta), seed=cfg.data.seed,
                              dataset=dataset, n_unknown_fst=n_unknown,
                              n_unusable_images=len(report), split_sizes=meta["split"].value_counts().to_dict())
    _write_outputs(out, tables, stamp)
    return PreparedData(dataset, meta, report, n_unknown, has_images, out, notes)


# provenance fields that differ between two preparations of the same data
_VOLATILE = ("created_utc", "git_commit")


def _write_outputs(out: Path, tables: dict[str, str], stamp: dict) -> bool:
    """Write the tables and ``provenance.json`` unless the folder already holds exactly these tables
    and this provenance (its time and commit aside): a later notebook that prepares again (07)
    leaves notebook 01's files as they were, so `make paper` can tell they are unchanged. True
    when written."""
    prov = out / "provenance.json"
    try:
        unchanged = (all((out / name).read_text() == text for name, text in tables.items())
                     and _stable(json.loads(prov.read_text())) == _stable(json.loads(json.dumps(stamp, default=str))))
    except (OSError, ValueError):
        unchanged = False
    if unchanged:
        return False
    out.mkdir(parents=True, exist_ok=True)
    for name, text in tables.items():
        (out / name).write_text(text)
    config.write_provenance(prov, stamp)
    return True


def _stable(stamp: Any) -> Any:
    return {k: v for k, v in stamp.items() if k not in _VOLATILE} if isinstance(stamp, dict) else stamp


def load_prepared(profile: str, dataset: str = "synthetic") -> pd.DataFrame:
    """The table 01_data_audit wrote (schema + ``split``); a clear error if it has not run."""
    path = paths.processed_dir(profile, dataset) / "metadata.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebooks/01_data_audit.ipynb "
                                f"(PROFILE={profile!r}, DATASET={dataset!r}) or `make data` first")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for col in ("label", "three_partition_label", "nine_partition_label", "image_path"):
        df[col] = df[col].fillna("").astype(str)
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bmglib.data.prepare", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    ap.add_argument("--dataset", default="synthetic", choices=list(schema.SOURCES))
    ap.add_argument("--data-path", default=None)
    ap.add_argument("--image-dir", default=None)
    a = ap.parse_args(argv)
    p = prepare(config.get_config(a.profile), a.dataset, a.data_path, a.image_dir)
    print(f"{a.dataset}: {p.metadata['split'].value_counts().to_dict()} → {p.out_dir}")
    for n in p.notes:
        print("note:", n)


if __name__ == "__main__":
    main()
