"""Source adapters: each real dataset's own table → the one schema (``bmglib.data.schema``).

Every adapter reads its CSV with :func:`read_table`: as text (so ids such as ``001`` keep their
zeros and a stray ``abc`` in a number column is reported, not silently coerced), with an error
naming the file when it is empty, binary or not CSV, or lacks a column it needs. It translates
its codes to Fitzpatrick17k-vocabulary ``label`` / ``nine_partition_label`` /
``three_partition_label`` strings and ends in :func:`schema.finalize`, which validates FST values
(naming CSV row numbers) and derives the lesion type by the one mapping.

Default paths point into ``paths.SHARED_REAL`` (the read-only metadata tables and 150 ISIC images).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bmglib import paths
from bmglib.data import schema

#: Each source's table inside ``paths.SHARED_REAL`` (ISIC's images sit in ``images/`` beside it).
DEFAULT_TABLES = {
    "fitzpatrick17k": "fitzpatrick17k.csv",
    "ddi": "ddi_metadata.csv",
    "pad_ufes_20": "pad_ufes_20_metadata.csv",
    "isic2017": "isic2017/labels.csv",
}


# --- shared helpers ---------------------------------------------------------------------------


def read_table(path: str | Path, needed=(), where: str | None = None) -> pd.DataFrame:
    """A user-supplied CSV as strings ("" for blanks) with its RangeIndex: index i is CSV row i + 2.

    The one reader of every table a user hands the package (the source adapters here, the
    downloader's metadata CSV). Each failure names the file (``where``, default the path) and says
    what is wrong: :class:`FileNotFoundError` when there is no such file; :class:`schema.SchemaError`
    when it is empty, is not UTF-8 text (an image, a spreadsheet, another encoding), does not parse
    as CSV, or lacks a column of ``needed``. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped.
    """
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata table not found: {where}")
    expected = "expected a CSV table (UTF-8 text, a header row of column names, comma-separated)"
    with open(path, "rb") as fh:
        if b"\0" in fh.read(1 << 16):  # pandas would read NULs as text; no CSV contains them
            raise schema.SchemaError(f"{where}: not a text file (it contains NUL bytes: an image, "
                                     f"a spreadsheet or an archive?); {expected}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise schema.SchemaError(f"{where}: the file is empty (no header row, "
                                 f"{path.stat().st_size} bytes); {expected}") from None
    except UnicodeDecodeError as e:
        raise schema.SchemaError(f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot "
                                 f"be decoded); {expected}: re-save it as CSV UTF-8") from None
    except pd.errors.ParserError as e:
        raise schema.SchemaError(f"{where}: not a readable CSV ({str(e).strip()}); {expected}") from None
    schema.require_columns(df, needed, where)
    return df


def _bad_rows(where, column: str, bad: pd.Series, values: pd.Series, expected: str):
    """Raise :class:`schema.SchemaError` listing the CSV rows (header = row 1) where ``bad``."""
    if bad.any():
        rows = schema._rows(pd.Index(values.index[bad.to_numpy()] + 2))
        examples = ", ".join(repr(v) for v in values[bad].head(5))
        raise schema.SchemaError(f"{where}: column {column!r} must be {expected}; "
                                 f"{int(bad.sum())} bad value(s) at CSV row(s) {rows} (e.g. {examples})")


def _flags(df: pd.DataFrame, column: str, where) -> pd.Series:
    """A 0/1 or true/false column as bool; anything else (blank, 'yes', 0.5) is an error."""
    v = df[column].str.strip().str.lower()
    truth = {"1": True, "1.0": True, "true": True, "0": False, "0.0": False, "false": False}
    _bad_rows(where, column, ~v.isin(list(truth)), df[column], "0/1 or true/false")
    return v.map(truth).astype(bool)


def _fst_or_unknown(values: pd.Series) -> pd.Series:
    """Blank → ``FST_UNKNOWN``; everything else is left for ``schema.validate_fst`` to judge."""
    return values.where(values.str.strip() != "", str(schema.FST_UNKNOWN))


def _image_paths(image_dir, names) -> list[str]:
    """Absolute paths ``image_dir/name``, or "" for every row when there is no image folder."""
    if image_dir is None:
        return [""] * len(names)
    image_dir = Path(image_dir).resolve()
    return [str(image_dir / n) for n in names]


# --- Fitzpatrick17k ---------------------------------------------------------------------------


def load_fitzpatrick17k(csv_path=None, image_dir=None) -> pd.DataFrame:
    """Fitzpatrick17k (Groh et al. 2021): images are ``<image_dir>/<md5hash>.jpg``.

    Without ``image_dir`` the table is metadata only (``image_path`` = ""). Extra columns are kept:
    ``fitzpatrick_centaur`` (the second FST annotation, int, -1 when blank), ``qc``, ``url``.
    """
    csv_path = Path(csv_path or paths.SHARED_REAL / DEFAULT_TABLES["fitzpatrick17k"])
    df = read_table(csv_path, ("md5hash", "fitzpatrick_scale", "label", "nine_partition_label",
                              "three_partition_label"))
    df["image_path"] = _image_paths(image_dir, [f"{h}.jpg" for h in df["md5hash"]])
    df["source"] = "fitzpatrick17k"
    if "fitzpatrick_centaur" in df:
        centaur = pd.to_numeric(df["fitzpatrick_centaur"], errors="coerce")
        df["fitzpatrick_centaur"] = centaur.fillna(schema.FST_UNKNOWN).astype(int)
    return schema.finalize(df, where=str(csv_path))


# --- DDI --------------------------------------------------------------------------------------

DDI_FST_RANGES = {"12": (1, 2), "34": (3, 4), "56": (5, 6)}
# Melanocytic naevi among DDI's disease names ("epidermal nevus" and "nevus lipomatosus" are not).
DDI_NEVI = ("melanocytic nevi", "dysplastic nevus", "blue nevus", "pigmented spindle cell nevus of reed")
DDI_LYMPHOID = ("lymphoma", "mycosis fungoides", "leukemia", "plasmacytoid")
DDI_EPIDERMAL = ("keratosis", "carcinoma", "verruca", "wart", "condyloma", "acanthoma",
                 "epidermal", "lentigo")


def ddi_partitions(disease: str, malignant: bool) -> tuple[str, str]:
    """A DDI disease name (``-`` already → space) → (nine_partition, three_partition).

    Fitzpatrick17k vocabulary; only the first three rules matter for the lesion type:

    1. a name containing ``melanoma`` → ``malignant melanoma``;
    2. benign melanocytic naevi (``DDI_NEVI``) → ``benign melanocyte``;
    3. ``seborrheic keratosis*`` → ``benign epidermal``;
    4. otherwise by DDI's ``malignant`` flag and a keyword: lymphoid names → ``malignant cutaneous
       lymphoma``; epidermal names (``DDI_EPIDERMAL``: BCC, SCC, keratoses, warts...) →
       ``malignant epidermal`` / ``benign epidermal``; the rest → ``malignant dermal`` /
       ``benign dermal``.

    ``three_partition`` follows DDI's flag alone: ``malignant`` or ``benign`` (DDI does not mark
    inflammatory conditions, so ``non-neoplastic`` is never invented).
    """
    d = disease.lower()
    three = "malignant" if malignant else "benign"
    if "melanoma" in d:
        return "malignant melanoma", three
    if not malignant and d in DDI_NEVI:
        return "benign melanocyte", three
    if d.startswith("seborrheic keratosis"):
        return "benign epidermal", three
    if malignant and any(w in d for w in DDI_LYMPHOID):
        return "malignant cutaneous lymphoma", three
    layer = "epidermal" if any(w in d for w in DDI_EPIDERMAL) else "dermal"
    return f"{three} {layer}", three


def load_ddi(csv_path=None, image_dir=None) -> pd.DataFrame:
    """Diverse Dermatology Images: ``skin_tone`` 12/34/56 is kept as the range it is.

    ``fitzpatrick_scale`` = -1 with ``fst_low``/``fst_high`` = 1–2 / 3–4 / 5–6 (no invented single
    types); ``fst_group_ddi`` keeps the original code (int 12/34/56), ``malignant`` DDI's flag.
    ``md5hash`` = ``ddi_<DDI_ID>`` (DDI ships no hash). ``label`` = ``disease`` with ``-`` → space;
    partitions by :func:`ddi_partitions`. Images: ``<image_dir>/<DDI_file>``.
    """
    csv_path = Path(csv_path or paths.SHARED_REAL / DEFAULT_TABLES["ddi"])
    df = read_table(csv_path, ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"))
    tone = df["skin_tone"].str.strip().str.replace(r"\.0$", "", regex=True)
    _bad_rows(csv_path, "skin_tone", ~tone.isin(list(DDI_FST_RANGES)), df["skin_tone"], "12, 34 or 56")
    malignant = _flags(df, "malignant", csv_path)
    label = df["disease"].str.strip().str.lower().str.replace("-", " ")
    parts = [ddi_partitions(d, m) for d, m in zip(label, malignant, strict=True)]
    out = pd.DataFrame({
        "md5hash": "ddi_" + df["DDI_ID"].str.strip(),
        "fitzpatrick_scale": schema.FST_UNKNOWN,
        "label": label,
        "nine_partition_label": [p[0] for p in parts],
        "three_partition_label": [p[1] for p in parts],
        "image_path": _image_paths(image_dir, df["DDI_file"]),
        "source": "ddi",
        "fst_low": [DDI_FST_RANGES[t][0] for t in tone],
        "fst_high": [DDI_FST_RANGES[t][1] for t in tone],
        "fst_group_ddi": tone.astype(int),
        "malignant": malignant,
    })
    return schema.finalize(out, where=str(csv_path))


# --- PAD-UFES-20 ------------------------------------------------------------------------------

PAD_DIAGNOSES = {  # code → (label, nine_partition_label, three_partition_label)
    "ACK": ("actinic keratosis", "malignant epidermal", "malignant"),  # as Fitzpatrick17k files it
    "BCC": ("basal cell carcinoma", "malignant epidermal", "malignant"),
    "MEL": ("melanoma", "malignant melanoma", "malignant"),
    "NEV": ("melanocytic nevus", "benign melanocyte", "benign"),
    "SCC": ("squamous cell carcinoma", "malignant epidermal", "malignant"),
    "SEK": ("seborrheic keratosis", "benign epidermal", "benign"),
}


def load_pad_ufes_20(csv_path=None, image_dir=None) -> pd.DataFrame:
    """PAD-UFES-20 smartphone images; the FST column is spelled ``fitspatrick`` (blank → -1).

    ``md5hash`` = the ``img_id`` stem; images are ``<image_dir>/<img_id>``. Keeps ``patient_id``
    (for patient-level splits) and ``lesion_id``. Codes → labels by ``PAD_DIAGNOSES``; an unknown
    code is an error naming its rows.
    """
    csv_path = Path(csv_path or paths.SHARED_REAL / DEFAULT_TABLES["pad_ufes_20"])
    df = read_table(csv_path, ("patient_id", "lesion_id", "fitspatrick", "diagnostic", "img_id"))
    code = df["diagnostic"].str.strip().str.upper()
    _bad_rows(csv_path, "diagnostic", ~code.isin(list(PAD_DIAGNOSES)), df["diagnostic"],
              f"one of {sorted(PAD_DIAGNOSES)}")
    parts = code.map(PAD_DIAGNOSES)
    out = pd.DataFrame({
        "md5hash": df["img_id"].map(lambda s: Path(s).stem),
        # a float column in the CSV ("2.0"); validate_fst accepts it and rejects 2.5 or 'abc'
        "fitzpatrick_scale": _fst_or_unknown(df["fitspatrick"]),
        "label": [p[0] for p in parts],
        "nine_partition_label": [p[1] for p in parts],
        "three_partition_label": [p[2] for p in parts],
        "image_path": _image_paths(image_dir, df["img_id"]),
        "source": "pad_ufes_20",
        "patient_id": df["patient_id"],
        "lesion_id": df["lesion_id"],
    })
    return schema.finalize(out, where=str(csv_path))


# --- ISIC-style -------------------------------------------------------------------------------

ISIC_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _isic_files(image_dir: Path) -> dict[str, str]:
    """image_id → file name, for ``<id>.jpg`` and ``resized_<id>.jpg`` (one directory listing)."""
    found = {}
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in ISIC_EXTENSIONS:
            found.setdefault(stem.removeprefix("resized_"), name)
    return found


def _estimate_fst(out: pd.DataFrame) -> None:
    """Fill ``fitzpatrick_scale`` from ITA for rows whose file exists; flag them ``fst_estimated``.

    A file that cannot be read keeps FST -1 here; :func:`images.check_images` reports it later.
    """
    from bmglib.skintone import estimate_fst_from_image  # lazy: torch-heavy, optional here

    for i, p in tqdm(out["image_path"].items(), total=len(out), desc="estimating FST (ITA)",
                     disable=len(out) < 200, leave=False):
        if not Path(p).is_file():
            continue
        try:
            fst = int(estimate_fst_from_image(p))
        except (OSError, ValueError):  # undecodable: leave unknown rather than guess
            continue
        out.loc[i, ["fitzpatrick_scale", "fst_estimated"]] = [fst, True]


def load_isic(labels_csv=None, image_dir=None, estimate_fst: bool = False) -> pd.DataFrame:
    """ISIC-style: ``image_id`` + one-hot ``melanoma``, ``seborrheic_keratosis`` (neither → nevus).

    Files are found in ``image_dir`` (default: ``images/`` beside the CSV) as ``<image_id>.jpg`` or
    ``resized_<image_id>.jpg`` (also .jpeg/.png); a missing one keeps the path ``<image_id>.jpg`` so
    that :func:`images.check_images` reports it. FST is unknown (-1); with ``estimate_fst`` it is
    estimated from ITA by :func:`bmglib.skintone.estimate_fst_from_image` and those rows get
    ``fst_estimated=True`` (an estimate, never an annotation).
    """
    labels_csv = Path(labels_csv or paths.SHARED_REAL / DEFAULT_TABLES["isic2017"])
    image_dir = Path(image_dir or labels_csv.parent / "images").resolve()
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ISIC image folder not found: {image_dir}")
    df = read_table(labels_csv, ("image_id", "melanoma", "seborrheic_keratosis"))
    mel = _flags(df, "melanoma", labels_csv)
    sk = _flags(df, "seborrheic_keratosis", labels_csv)
    _bad_rows(labels_csv, "melanoma", mel & sk, df["image_id"], "exclusive of seborrheic_keratosis")
    files = _isic_files(image_dir)
    ids = df["image_id"].str.strip()
    out = pd.DataFrame({
        "md5hash": ids,
        "fitzpatrick_scale": schema.FST_UNKNOWN,
        "label": np.where(mel, "melanoma", np.where(sk, "seborrheic keratosis", "melanocytic nevus")),
        "nine_partition_label": np.where(mel, "malignant melanoma",
                                         np.where(sk, "benign epidermal", "benign melanocyte")),
        "three_partition_label": np.where(mel, "malignant", "benign"),
        "image_path": [str(image_dir / files.get(i, f"{i}.jpg")) for i in ids],
        "source": "isic2017",
        "fst_estimated": False,
    })
    if estimate_fst:
        _estimate_fst(out)
    return schema.finalize(out, where=str(labels_csv))


# --- generic CSV + folder ---------------------------------------------------------------------

CSV_REQUIRED = ("fitzpatrick_scale", "label", "image_path")


def load_csv_folder(csv_path, image_dir, column_map: dict[str, str], source: str = "csv") -> pd.DataFrame:
    """Any CSV + image folder. ``column_map``: schema name → the user's column name, e.g.
    ``{'md5hash': 'img', 'fitzpatrick_scale': 'fst', 'label': 'dx', 'image_path': 'file'}``.

    Must map ``fitzpatrick_scale`` (-1 or blank = unknown), ``label`` and ``image_path`` (file names
    relative to ``image_dir``, or absolute); ``md5hash`` (any unique id) defaults to the file-name
    stem. Other mapped columns are copied under their schema name. Absent partitions are filled
    plainly, nothing inferred beyond the label's words: ``three_partition_label`` = ``malignant``
    when the label contains "melanoma" or "carcinoma", else ``benign``; ``nine_partition_label`` =
    ``malignant melanoma`` for melanoma labels, else "". Labels are lower-cased.
    """
    csv_path = Path(csv_path)
    missing = [k for k in CSV_REQUIRED if k not in column_map]
    if missing:
        raise schema.SchemaError(f"column_map for {csv_path} must map {missing} to your columns; "
                                 f"got {column_map}")
    raw = read_table(csv_path, list(column_map.values()))
    out = pd.DataFrame({k: raw[v] for k, v in column_map.items()})
    if "md5hash" not in out:
        out["md5hash"] = out["image_path"].map(lambda s: Path(s).stem)
    out["fitzpatrick_scale"] = _fst_or_unknown(out["fitzpatrick_scale"])
    out["label"] = out["label"].str.strip().str.lower()
    if "three_partition_label" not in out:
        malignant = out["label"].str.contains("melanoma|carcinoma")
        out["three_partition_label"] = np.where(malignant, "malignant", "benign")
    if "nine_partition_label" not in out:
        out["nine_partition_label"] = np.where(out["label"].str.contains("melanoma"),
                                               "malignant melanoma", "")
    out["image_path"] = _image_paths(image_dir, out["image_path"])
    out["source"] = source
    return schema.finalize(out, where=str(csv_path))


# --- dispatcher -------------------------------------------------------------------------------

LOADERS = {"fitzpatrick17k": load_fitzpatrick17k, "ddi": load_ddi, "pad_ufes_20": load_pad_ufes_20,
           "isic2017": load_isic, "csv": load_csv_folder}


def load_source(name: str, path=None, image_dir=None, **kw) -> pd.DataFrame:
    """Load a real source by name (``schema.SOURCES`` except ``synthetic``) into the schema.

    ``path`` defaults to the table in ``paths.SHARED_REAL`` (``DEFAULT_TABLES``); ``image_dir`` to
    none (metadata only), except ISIC whose images default to ``images/`` beside its labels. ``csv`` needs ``path``
    and ``column_map=`` (see :func:`load_csv_folder`). Extra keywords go to the adapter.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown source {name!r}; choose one of {sorted(LOADERS)} "
                         "('synthetic' is made by bmglib.data.synthetic, not loaded here)")
    if name == "csv":
        if path is None or "column_map" not in kw:
            raise ValueError("source 'csv' needs a CSV path and column_map={schema name: your column}")
        return load_csv_folder(path, image_dir, **kw)
    return LOADERS[name](path, image_dir, **kw)  # each adapter knows its default table
