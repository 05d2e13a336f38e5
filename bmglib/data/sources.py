"""Source adapters: each real dataset's own table → the one schema (``bmglib.data.schema``).

Every adapter reads its CSV, checks the columns it needs (a missing one is named with the file),
translates its codes to Fitzpatrick17k-style ``label``/``nine_partition_label``/
``three_partition_label`` strings, and ends in :func:`schema.finalize`, which validates FST values
(with CSV row numbers) and derives the lesion type by the one mapping.

Default paths point into ``../shared/data/real`` (metadata tables; ISIC images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bmglib import paths
from bmglib.data import schema


def _read_csv(path: str | Path, needed) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"metadata table not found: {path}")
    df = pd.read_csv(path)
    schema.require_columns(df, needed, str(path))
    return df


def _image_paths(image_dir, names) -> list[str]:
    if image_dir is None:
        return [""] * len(names)
    image_dir = Path(image_dir).resolve()
    return [str(image_dir / n) for n in names]


# --- Fitzpatrick17k ---------------------------------------------------------------------------


def load_fitzpatrick17k(csv_path=None, image_dir=None) -> pd.DataFrame:
    """Fitzpatrick17k (Groh et al. 2021): images are ``<image_dir>/<md5hash>.jpg``.

    Keeps ``fitzpatrick_centaur`` (the second FST annotation), ``qc`` and ``url`` as extra columns.
    """
    csv_path = Path(csv_path or paths.SHARED_REAL / "fitzpatrick17k.csv")
    df = _read_csv(csv_path, ("md5hash", "fitzpatrick_scale", "label", "nine_partition_label",
                              "three_partition_label"))
    df["image_path"] = _image_paths(image_dir, [f"{h}.jpg" for h in df["md5hash"]])
    df["source"] = "fitzpatrick17k"
    if "fitzpatrick_centaur" in df:
        df["fitzpatrick_centaur"] = pd.to_numeric(df["fitzpatrick_centaur"], errors="coerce").fillna(-1).astype(int)
    return schema.finalize(df, where=str(csv_path))


# --- DDI --------------------------------------------------------------------------------------

DDI_FST_RANGES = {12: (1, 2), 34: (3, 4), 56: (5, 6)}


def _ddi_partitions(disease: str, malignant: bool) -> tuple[str, str]:
    """DDI disease name → (nine_partition_label, three_partition_label), Fitzpatrick17k vocabulary.

    Melanoma → ``malignant melanoma``; melanocytic/dysplastic/blue naevi → ``benign melanocyte``;
    seborrheic keratoses → ``benign epidermal``; anything else → ``malignant epidermal`` or
    ``benign dermal`` by DDI's ``malignant`` flag (a coarse bucket; the lesion mapping only needs
    the first three).
    """
    d = disease.lower()
    if "melanoma" in d:
        return "malignant melanoma", "malignant"
    if "nevi" in d or ("nevus" in d and ("melanocytic" in d or "dysplastic" in d or "blue" in d)):
        return "benign melanocyte", "benign"
    if d.startswith("seborrheic keratosis"):
        return "benign epidermal", "benign"
    return ("malignant epidermal", "malignant") if malignant else ("benign dermal", "benign")


def load_ddi(csv_path=None, image_dir=None) -> pd.DataFrame:
    """Diverse Dermatology Images: ``skin_tone`` 12/34/56 is kept as the range it is.

    ``fitzpatrick_scale`` = -1 with ``fst_low``/``fst_high`` = 1–2 / 3–4 / 5–6 (no invented single
    types); ``fst_group_ddi`` keeps the original code. ``md5hash`` = ``ddi_<DDI_ID>`` (DDI ships no
    hash).
    """
    csv_path = Path(csv_path or paths.SHARED_REAL / "ddi_metadata.csv")
    df = _read_csv(csv_path, ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"))
    tone = pd.to_numeric(df["skin_tone"], errors="coerce")
    bad = ~tone.isin(list(DDI_FST_RANGES))
    if bad.any():
        rows = ", ".join(str(i + 2) for i in df.index[bad][:10])
        raise schema.SchemaError(f"{csv_path}: skin_tone must be 12, 34 or 56; bad at CSV row(s) {rows}")
    malignant = df["malignant"].astype(str).str.lower().isin(["true", "1"])
    label = df["disease"].astype(str).str.replace("-", " ")
    parts = [_ddi_partitions(d, m) for d, m in zip(label, malignant, strict=True)]
    out = pd.DataFrame({
        "md5hash": "ddi_" + df["DDI_ID"].astype(str),
        "fitzpatrick_scale": schema.FST_UNKNOWN,
        "label": label,
        "nine_partition_label": [p[0] for p in parts],
        "three_partition_label": [p[1] for p in parts],
        "image_path": _image_paths(image_dir, df["DDI_file"].astype(str)),
        "source": "ddi",
        "fst_low": [DDI_FST_RANGES[int(t)][0] for t in tone],
        "fst_high": [DDI_FST_RANGES[int(t)][1] for t in tone],
        "fst_group_ddi": tone.astype(int),
        "malignant": malignant,
    })
    return schema.finalize(out, where=str(csv_path))


# --- PAD-UFES-20 ------------------------------------------------------------------------------

PAD_DIAGNOSES = {  # code → (label, nine_partition_label, three_partition_label)
    "ACK": ("actinic keratosis", "malignant epidermal", "malignant"),
    "BCC": ("basal cell carcinoma", "malignant epidermal", "malignant"),
    "MEL": ("melanoma", "malignant melanoma", "malignant"),
    "NEV": ("melanocytic nevus", "benign melanocyte", "benign"),
    "SCC": ("squamous cell carcinoma", "malignant epidermal", "malignant"),
    "SEK": ("seborrheic keratosis", "benign epidermal", "benign"),
}


def load_pad_ufes_20(csv_path=None, image_dir=None) -> pd.DataFrame:
    """PAD-UFES-20 smartphone images: FST column spelled ``fitspatrick`` (blank → -1).

    Actinic keratosis is filed under ``malignant epidermal`` as Fitzpatrick17k does. Keeps
    ``patient_id`` (for patient-level splits) and ``lesion_id``.
    """
    csv_path = Path(csv_path or paths.SHARED_REAL / "pad_ufes_20_metadata.csv")
    df = _read_csv(csv_path, ("patient_id", "lesion_id", "fitspatrick", "diagnostic", "img_id"))
    unknown = sorted(set(df["diagnostic"].astype(str)) - set(PAD_DIAGNOSES))
    if unknown:
        rows = ", ".join(str(i + 2) for i in df.index[~df["diagnostic"].isin(list(PAD_DIAGNOSES))][:10])
        raise schema.SchemaError(f"{csv_path}: unknown diagnostic code(s) {unknown} at CSV row(s) {rows}")
    fst = pd.to_numeric(df["fitspatrick"], errors="coerce")
    fst = fst.where(fst.notna(), schema.FST_UNKNOWN)
    # keep non-integer values (e.g. 2.5) visible to validate_fst instead of truncating them
    fst = fst.map(lambda v: int(v) if float(v).is_integer() else v)
    codes = df["diagnostic"].map(PAD_DIAGNOSES)
    out = pd.DataFrame({
        "md5hash": df["img_id"].astype(str).str.rsplit(".", n=1).str[0],
        "fitzpatrick_scale": fst,
        "label": [c[0] for c in codes],
        "nine_partition_label": [c[1] for c in codes],
        "three_partition_label": [c[2] for c in codes],
        "image_path": _image_paths(image_dir, df["img_id"].astype(str)),
        "source": "pad_ufes_20",
        "patient_id": df["patient_id"].astype(str),
        "lesion_id": df["lesion_id"],
    })
    return schema.finalize(out, where=str(csv_path))


# --- ISIC-style -------------------------------------------------------------------------------


def _find_isic_file(image_dir: Path, image_id: str) -> str:
    for name in (f"{image_id}.jpg", f"resized_{image_id}.jpg", f"{image_id}.png", f"{image_id}.jpeg"):
        if (image_dir / name).exists():
            return str(image_dir / name)
    return str(image_dir / f"{image_id}.jpg")  # reported as missing by images.check_images


def load_isic(labels_csv=None, image_dir=None, estimate_fst: bool = False) -> pd.DataFrame:
    """ISIC-style: ``image_id`` + one-hot ``melanoma``, ``seborrheic_keratosis`` (neither → nevus).

    FST is unknown (-1). With ``estimate_fst`` it is estimated from the ITA of the healthy skin
    and the rows are flagged ``fst_estimated`` (an estimate, not an annotation).
    """
    labels_csv = Path(labels_csv or paths.SHARED_REAL / "isic2017" / "labels.csv")
    image_dir = Path(image_dir or labels_csv.parent / "images").resolve()
    df = _read_csv(labels_csv, ("image_id", "melanoma", "seborrheic_keratosis"))
    mel = df["melanoma"].astype(float) > 0.5
    sk = df["seborrheic_keratosis"].astype(float) > 0.5
    label = np.where(mel, "melanoma", np.where(sk, "seborrheic keratosis", "melanocytic nevus"))
    nine = np.where(mel, "malignant melanoma", np.where(sk, "benign epidermal", "benign melanocyte"))
    out = pd.DataFrame({
        "md5hash": df["image_id"].astype(str),
        "fitzpatrick_scale": schema.FST_UNKNOWN,
        "label": label,
        "nine_partition_label": nine,
        "three_partition_label": np.where(mel, "malignant", "benign"),
        "image_path": [_find_isic_file(image_dir, i) for i in df["image_id"].astype(str)],
        "source": "isic2017",
        "fst_estimated": False,
    })
    if estimate_fst:
        from bmglib.skintone import estimate_fst_from_image

        found = [Path(p).exists() for p in out["image_path"]]
        out.loc[found, "fitzpatrick_scale"] = [estimate_fst_from_image(p)
                                               for p, f in zip(out["image_path"], found, strict=True) if f]
        out.loc[found, "fst_estimated"] = True
    return schema.finalize(out, where=str(labels_csv))


# --- generic CSV + folder ---------------------------------------------------------------------


def load_csv_folder(csv_path, image_dir, column_map: dict[str, str], source: str = "csv") -> pd.DataFrame:
    """Any CSV + image folder. ``column_map``: schema name → the user's column name.

    Needs ``md5hash`` (any unique image id), ``fitzpatrick_scale``, ``label`` and ``image_path``
    (file names relative to ``image_dir``). Absent partitions are filled plainly:
    ``three_partition_label`` = ``malignant`` when the label names melanoma or carcinoma, else
    ``benign``; ``nine_partition_label`` = ``malignant melanoma`` for melanoma labels, else "".
    """
    csv_path = Path(csv_path)
    required = ("md5hash", "fitzpatrick_scale", "label", "image_path")
    missing = [k for k in required if k not in column_map]
    if missing:
        raise schema.SchemaError(f"column_map for {csv_path} must map {missing} to your columns")
    raw = _read_csv(csv_path, list(column_map.values()))
    out = pd.DataFrame({k: raw[v] for k, v in column_map.items()})
    out["label"] = out["label"].astype(str).str.lower()
    if "three_partition_label" not in out:
        malignant = out["label"].str.contains("melanoma|carcinoma")
        out["three_partition_label"] = np.where(malignant, "malignant", "benign")
    if "nine_partition_label" not in out:
        out["nine_partition_label"] = np.where(out["label"].str.contains("melanoma"), "malignant melanoma", "")
    out["image_path"] = _image_paths(image_dir, out["image_path"].astype(str))
    out["source"] = source
    return schema.finalize(out, where=str(csv_path))


LOADERS = {"fitzpatrick17k": load_fitzpatrick17k, "ddi": load_ddi, "pad_ufes_20": load_pad_ufes_20,
           "isic2017": load_isic, "csv": load_csv_folder}


def load_source(name: str, path=None, image_dir=None, **kw) -> pd.DataFrame:
    """Dispatch to a source adapter by name (``schema.SOURCES`` except ``synthetic``)."""
    if name not in LOADERS:
        raise ValueError(f"unknown source {name!r}; choose one of {list(LOADERS)} "
                         "(the synthetic dataset is made by bmglib.data.synthetic)")
    if name == "csv" and path is None:
        raise ValueError("source 'csv' needs a CSV path (DATA_PATH) and a column_map")
    return LOADERS[name](path, image_dir, **kw)
