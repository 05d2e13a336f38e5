"""The one metadata schema every source is converted to, and its validation.

Columns (Fitzpatrick17k-compatible, one row per image):

==========================  ===========================================================
``md5hash``                 image identifier (Fitzpatrick17k: md5 of the image file)
``fitzpatrick_scale``       int, 1..6, or -1 (``FST_UNKNOWN``) when unknown or only a range
``label``                   condition name, lower case, Fitzpatrick17k vocabulary where possible
``three_partition_label``   ``malignant`` | ``benign`` | ``non-neoplastic``
``nine_partition_label``    Fitzpatrick17k's nine partitions (e.g. ``malignant melanoma``)
``image_path``              absolute path of the image file, or "" when the source is metadata-only
``source``                  ``synthetic`` | ``fitzpatrick17k`` | ``ddi`` | ``pad_ufes_20`` | ``isic2017`` | ``csv``
==========================  ===========================================================

Derived by :func:`finalize` (never hand-set by an adapter):

* ``lesion`` — the pipeline's lesion type, by :func:`lesion_type` (the one documented mapping).
* ``fst_low``/``fst_high`` — the FST range the row is known to lie in (equal for an exact type;
  DDI's ``skin_tone`` 56 → 5..6; unknown → -1..-1). DDI ranges are kept as ranges, never turned
  into invented single types.
* ``fst_estimated`` — True when ``fitzpatrick_scale`` was estimated from pixels (ITA), not annotated.

FST columns of a sample set's ``manifest.csv`` (:func:`bmglib.diffusion.sample.generate_to_disk`;
its columns beyond the schema are ``sample.MANIFEST_EXTRA``): four ints in 1..6 (``requested_fst``
also -1) and one flag. Which one to read depends on the question:

=====================  ==============================================================================
``fitzpatrick_scale``  the schema's FST: the FST the model was asked for; for a model not
                       conditioned on FST, the ITA estimate (then ``fst_estimated`` is True)
``plan_fst``           the quota-plan cell the image was drawn to fill (never -1), whether or not
                       the model could be asked for it: group synthetic images by it (FID per FST,
                       the reader study's design FST)
``requested_fst``      the FST passed to the model: ``plan_fst``, or -1 when the model is not
                       conditioned on FST (it got the lesion only); FST adherence compares it with
                       ``estimated_fst``
``estimated_fst``      the ITA estimate of the drawn image (:func:`bmglib.skintone.estimate_fst`),
                       for every image, never -1
``fst_estimated``      bool: True when ``fitzpatrick_scale`` is ``estimated_fst`` (``requested_fst``
                       = -1), as for any estimated row of the schema
=====================  ==============================================================================
"""

from __future__ import annotations

import pandas as pd

FST_LEVELS = (1, 2, 3, 4, 5, 6)
FST_UNKNOWN = -1
FST_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", FST_UNKNOWN: "?"}
#: The light/dark grouping used for every group comparison.
FST_GROUPS = {"I-III": (1, 2, 3), "IV-VI": (4, 5, 6)}
#: The sign of every gap in every table and figure: gap = measure(I–III) − measure(IV–VI),
#: light minus dark (``(a, b)`` of every gap function defaults to these). For a measure where
#: higher is better (accuracy, sensitivity, AUC, SSIM) a gap > 0 means light skin does better;
#: for an error (MSE, FNR) a gap > 0 means light skin does worse. EDFR = FNR(IV–VI) − FNR(I–III)
#: is the sensitivity gap in this convention (sensitivity = 1 − FNR).
GAP_GROUPS = ("I-III", "IV-VI")
LESIONS = ("melanoma", "nevus", "seborrheic_keratosis", "other")
SOURCES = ("synthetic", "fitzpatrick17k", "ddi", "pad_ufes_20", "isic2017", "csv")

REQUIRED_COLUMNS = (
    "md5hash",
    "fitzpatrick_scale",
    "label",
    "three_partition_label",
    "nine_partition_label",
    "image_path",
    "source",
)
THREE_PARTITIONS = ("malignant", "benign", "non-neoplastic")

# --- the one lesion mapping -------------------------------------------------------------------
# Melanocytic naevi by name; "becker nevus", "epidermal nevus", "nevus sebaceous" are not melanocytic.
NEVUS_LABELS = frozenset(
    {
        "nevocytic nevus",
        "congenital nevus",
        "halo nevus",
        "melanocytic nevus",
        "melanocytic nevi",
        "dysplastic nevus",
        "blue nevus",
        "nevus",
        "atypical nevus",
    }
)


def lesion_type(label: str, nine_partition_label: str) -> str:
    """Map a row's labels to the pipeline's lesion type (``LESIONS``).

    The one mapping, applied to every source after its adapter has translated its own codes to
    Fitzpatrick17k-style ``label``/``nine_partition_label`` strings:

    1. ``melanoma`` — nine-partition ``malignant melanoma``, or ``melanoma`` in the label
       (covers "superficial spreading melanoma ssm", "melanoma in situ", acral lentiginous).
    2. ``nevus`` — nine-partition ``benign melanocyte`` or a label in ``NEVUS_LABELS``.
    3. ``seborrheic_keratosis`` — a label starting with ``seborrheic keratosis`` (incl. irritated).
    4. ``other`` — everything else (inflammatory, BCC, SCC, actinic keratosis, ...).
    """
    lab = str(label).strip().lower()
    nine = str(nine_partition_label).strip().lower()
    if nine == "malignant melanoma" or "melanoma" in lab:
        return "melanoma"
    if nine == "benign melanocyte" or lab in NEVUS_LABELS:
        return "nevus"
    if lab.startswith("seborrheic keratosis"):
        return "seborrheic_keratosis"
    return "other"


class SchemaError(ValueError):
    """A metadata table does not follow the schema; the message names the file, column or rows."""


def _rows(index: pd.Index, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in list(index[:limit]))
    more = f" (+{len(index) - limit} more)" if len(index) > limit else ""
    return shown + more


def require_columns(df: pd.DataFrame, columns, where: str) -> None:
    """Raise :class:`SchemaError` naming every missing column of ``df`` (read from ``where``)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{where}: missing column(s) {missing}; found {list(df.columns)}"
        )


def validate_fst(values: pd.Series, where: str) -> pd.Series:
    """Return FST values as int, raising with the CSV row numbers of any outside {-1, 1..6}.

    Row numbers are 1-based data rows as a spreadsheet shows them after the header (header = row 1,
    first data row = row 2), so a user can jump to them.
    """
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() | ~num.isin([FST_UNKNOWN, *FST_LEVELS])
    if bad.any():
        idx = values.index[bad.to_numpy()]
        rows = pd.Index([int(i) + 2 for i in idx]) if pd.api.types.is_integer_dtype(idx) else idx
        examples = ", ".join(repr(v) for v in values[bad].head(5).tolist())
        raise SchemaError(
            f"{where}: fitzpatrick_scale must be -1 (unknown) or 1..6; {int(bad.sum())} bad "
            f"value(s) at CSV row(s) {_rows(rows)} (e.g. {examples})"
        )
    return num.astype(int)


def finalize(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate an adapter's output and add the derived columns (``lesion``, ``fst_low/high``...).

    Adapters may pre-set ``fst_low``/``fst_high`` (ranges, e.g. DDI) and ``fst_estimated``;
    otherwise they are derived from ``fitzpatrick_scale``.
    """
    require_columns(df, REQUIRED_COLUMNS, where)
    out = df.copy()
    out["fitzpatrick_scale"] = validate_fst(out["fitzpatrick_scale"], where)
    for col in ("label", "three_partition_label", "nine_partition_label", "md5hash", "source"):
        out[col] = out[col].fillna("").astype(str)
    out["image_path"] = out["image_path"].fillna("").astype(str)
    bad_three = ~out["three_partition_label"].isin(THREE_PARTITIONS)
    if bad_three.any():
        raise SchemaError(
            f"{where}: three_partition_label must be one of {THREE_PARTITIONS}; bad at row(s) "
            f"{_rows(out.index[bad_three])}: {sorted(set(out.loc[bad_three, 'three_partition_label']))[:5]}"
        )
    dup = out["md5hash"].duplicated(keep=False)
    if dup.any():
        raise SchemaError(f"{where}: duplicate md5hash at row(s) {_rows(out.index[dup])}")
    out["lesion"] = [
        lesion_type(a, b) for a, b in zip(out["label"], out["nine_partition_label"], strict=True)
    ]
    fst = out["fitzpatrick_scale"]
    if "fst_low" not in out:
        out["fst_low"] = fst
    if "fst_high" not in out:
        out["fst_high"] = fst
    out["fst_low"] = out["fst_low"].astype(int)
    out["fst_high"] = out["fst_high"].astype(int)
    if "fst_estimated" not in out:
        out["fst_estimated"] = False
    out["fst_estimated"] = out["fst_estimated"].astype(bool)
    return out.reset_index(drop=True)


def fst_group(fst: int) -> str:
    """``I-III`` / ``IV-VI`` / ``unknown`` for one FST value."""
    for name, members in FST_GROUPS.items():
        if int(fst) in members:
            return name
    return "unknown"


def apply_unknown_fst_policy(df: pd.DataFrame, policy: str = "drop") -> tuple[pd.DataFrame, int]:
    """Apply the explicit policy for rows whose FST is unknown; return (table, n_affected).

    A row with a known FST range (``fst_low`` > 0, e.g. DDI) is not unknown.
    ``drop`` (default) removes them; ``keep`` keeps them (they then count in no FST group).
    The count is returned so callers report it — never a silent drop.
    """
    unknown = df["fitzpatrick_scale"] == FST_UNKNOWN
    if "fst_low" in df.columns:  # a known range (DDI's 1-2/3-4/5-6) is not unknown
        unknown &= df["fst_low"] == FST_UNKNOWN
    n = int(unknown.sum())
    if policy == "drop":
        return df.loc[~unknown].reset_index(drop=True), n
    if policy == "keep":
        return df, n
    raise ValueError(f"unknown_fst policy must be 'drop' or 'keep', got {policy!r}")
