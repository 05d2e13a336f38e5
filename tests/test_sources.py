"""Source adapters on the real shared files, and bad input on tiny fixtures made here."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmglib.data import images, schema, sources

# --- the real shared files --------------------------------------------------------------------


def test_fitzpatrick17k_real_counts(shared_real):
    df = sources.load_fitzpatrick17k(shared_real / "fitzpatrick17k.csv")
    assert len(df) == 16577 and (df.source == "fitzpatrick17k").all()
    assert df.fitzpatrick_scale.value_counts().to_dict() == {
        1: 2947, 2: 4808, 3: 3308, 4: 2781, 5: 1533, 6: 635, -1: 565}
    mel = df[df.lesion == "melanoma"].fitzpatrick_scale.value_counts()
    assert [mel[f] for f in schema.FST_LEVELS] == [133, 198, 108, 60, 32, 15]
    assert (df.image_path == "").all()  # metadata only unless an image folder is given
    assert {"fitzpatrick_centaur", "qc"} <= set(df.columns)
    assert 0.44 < (df.fitzpatrick_scale == df.fitzpatrick_centaur).mean() < 0.48  # README: ~46%


def test_fitzpatrick17k_image_paths(shared_real, tmp_path):
    df = sources.load_fitzpatrick17k(shared_real / "fitzpatrick17k.csv", image_dir=tmp_path)
    assert df.image_path[0] == str(tmp_path.resolve() / f"{df.md5hash[0]}.jpg")


def test_ddi_keeps_ranges_and_maps_diseases(shared_real, tmp_path):
    df = sources.load_ddi(shared_real / "ddi_metadata.csv", image_dir=tmp_path)
    assert len(df) == 653 and (df.fitzpatrick_scale == schema.FST_UNKNOWN).all()
    ranges = df.groupby(["fst_group_ddi", "fst_low", "fst_high"]).size()
    assert set(ranges.index) == {(12, 1, 2), (34, 3, 4), (56, 5, 6)} and ranges[(56, 5, 6)] == 204
    kept, n_unknown = schema.apply_unknown_fst_policy(df, "drop")
    assert n_unknown == 0 and len(kept) == 653  # a known range is not "unknown"
    assert df.md5hash[0] == "ddi_1" and df.image_path[0] == str(tmp_path.resolve() / "000001.png")
    assert ((df.three_partition_label == "malignant") == df.malignant).all()
    by_label = df.drop_duplicates("label").set_index("label")
    assert by_label.loc["melanoma in situ", "lesion"] == "melanoma"
    assert by_label.loc["melanocytic nevi", "lesion"] == "nevus"
    assert by_label.loc["seborrheic keratosis irritated", "lesion"] == "seborrheic_keratosis"
    assert by_label.loc["epidermal nevus", "lesion"] == "other"  # not melanocytic
    assert by_label.loc["mycosis fungoides", "nine_partition_label"] == "malignant cutaneous lymphoma"
    assert by_label.loc["basal cell carcinoma", "nine_partition_label"] == "malignant epidermal"
    assert df.lesion.value_counts().to_dict() == {
        "other": 419, "nevus": 142, "seborrheic_keratosis": 72, "melanoma": 20}


def test_pad_ufes_20(shared_real):
    df = sources.load_pad_ufes_20(shared_real / "pad_ufes_20_metadata.csv")
    assert len(df) == 2298 and (df.lesion == "melanoma").sum() == 52
    assert (df.fitzpatrick_scale == schema.FST_UNKNOWN).sum() == 804  # the blanks
    assert (df.lesion == "seborrheic_keratosis").sum() == 235
    assert df.patient_id.nunique() == 1373 and "lesion_id" in df
    assert df.md5hash[0] == "PAT_1516_1765_530"
    ack = df[df.label == "actinic keratosis"]
    assert (ack.nine_partition_label == "malignant epidermal").all() and (ack.lesion == "other").all()


def test_isic_images_found_and_decodable(shared_real, capsys):
    df = sources.load_isic(shared_real / "isic2017" / "labels.csv", shared_real / "isic2017" / "images")
    assert len(df) == 150 and (df.source == "isic2017").all()
    assert df.lesion.value_counts().to_dict() == {"nevus": 83, "seborrheic_keratosis": 40, "melanoma": 27}
    assert df.image_path.str.contains("/resized_ISIC_").all()
    usable, report = images.check_images(df, progress=False)
    assert len(usable) == 150 and report.empty and capsys.readouterr().out == ""
    assert (df.fitzpatrick_scale == schema.FST_UNKNOWN).all() and not df.fst_estimated.any()


def test_isic_real_fst_estimate_is_flagged(shared_real, tmp_path):
    pd.read_csv(shared_real / "isic2017" / "labels.csv").head(3).to_csv(tmp_path / "l.csv", index=False)
    df = sources.load_isic(tmp_path / "l.csv", shared_real / "isic2017" / "images", estimate_fst=True)
    assert df.fst_estimated.all() and df.fitzpatrick_scale.between(1, 6).all()


def test_load_source_defaults_point_at_shared_real(shared_real):
    assert len(sources.load_source("ddi")) == 653
    isic = sources.load_source("isic2017")
    assert isic.image_path[0].startswith(str((shared_real / "isic2017" / "images").resolve()))


def test_unknown_source_lists_the_options():
    with pytest.raises(ValueError, match="fitzpatrick17k.*pad_ufes_20"):
        sources.load_source("imagenet")
    with pytest.raises(ValueError, match="column_map"):
        sources.load_source("csv", "x.csv")


# --- tiny fixtures: bad input -----------------------------------------------------------------

F17K_COLS = ["md5hash", "fitzpatrick_scale", "label", "nine_partition_label", "three_partition_label"]


def _csv(tmp_path, rows, cols, name="t.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def test_missing_column_is_named_with_the_file(tmp_path):
    path = _csv(tmp_path, [["a", "melanoma"]], ["md5hash", "label"], "bad.csv")
    with pytest.raises(schema.SchemaError, match=r"bad\.csv.*fitzpatrick_scale"):
        sources.load_fitzpatrick17k(path)
    ddi = _csv(tmp_path, [[1, "1.png", 12, True]], ["DDI_ID", "DDI_file", "skin_tone", "malignant"], "d.csv")
    with pytest.raises(schema.SchemaError, match=r"d\.csv.*'disease'"):
        sources.load_ddi(ddi)


def test_bad_fst_values_report_csv_rows(tmp_path):
    rows = [["a", 1, "melanoma", "malignant melanoma", "malignant"],
            ["b", 7, "nevocytic nevus", "benign melanocyte", "benign"],
            ["c", "abc", "psoriasis", "inflammatory", "non-neoplastic"],
            ["d", -1, "psoriasis", "inflammatory", "non-neoplastic"]]
    with pytest.raises(schema.SchemaError) as e:
        sources.load_fitzpatrick17k(_csv(tmp_path, rows, F17K_COLS))
    msg = str(e.value)  # header = row 1, so the 2nd and 3rd data rows are CSV rows 3 and 4
    assert "row(s) 3, 4" in msg and "2 bad" in msg and "'abc'" in msg and "t.csv" in msg


def test_pad_blank_fst_is_unknown_but_garbage_is_an_error(tmp_path):
    cols = ["patient_id", "lesion_id", "fitspatrick", "diagnostic", "img_id"]
    good = [["P1", 1, "", "MEL", "P1_1_1.png"], ["P1", 2, "2.0", "NEV", "P1_2_2.png"]]
    df = sources.load_pad_ufes_20(_csv(tmp_path, good, cols))
    assert list(df.fitzpatrick_scale) == [-1, 2] and list(df.lesion) == ["melanoma", "nevus"]
    with pytest.raises(schema.SchemaError, match=r"row\(s\) 3 .*'abc'"):
        sources.load_pad_ufes_20(_csv(tmp_path, [good[0], ["P2", 3, "abc", "SEK", "x.png"]], cols))
    with pytest.raises(schema.SchemaError, match=r"diagnostic.*row\(s\) 2"):
        sources.load_pad_ufes_20(_csv(tmp_path, [["P1", 1, "", "XYZ", "a.png"]], cols))


def test_ddi_bad_codes_name_rows(tmp_path):
    cols = ["DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"]
    with pytest.raises(schema.SchemaError, match=r"skin_tone.*row\(s\) 3"):
        sources.load_ddi(_csv(tmp_path, [[1, "1.png", 12, True, "melanoma"],
                                         [2, "2.png", 78, False, "wart"]], cols))
    with pytest.raises(schema.SchemaError, match=r"malignant.*row\(s\) 2 .*'maybe'"):
        sources.load_ddi(_csv(tmp_path, [[1, "1.png", 12, "maybe", "melanoma"]], cols))


def _isic_fixture(tmp_path, names):
    d = tmp_path / "imgs"
    d.mkdir()
    for n in names:
        Image.fromarray(np.full((16, 16, 3), 180, np.uint8)).save(d / n)
    rows = [["ISIC_1", 1, 0], ["ISIC_2", 0, 1], ["ISIC_3", 0, 0]]
    return _csv(tmp_path, rows, ["image_id", "melanoma", "seborrheic_keratosis"], "labels.csv"), d


def test_isic_plain_names_and_a_missing_file(tmp_path):
    csv, d = _isic_fixture(tmp_path, ["ISIC_1.jpg", "resized_ISIC_2.jpg"])  # ISIC_3 absent
    df = sources.load_isic(csv, d)
    assert list(df.image_path) == [str(d.resolve() / n) for n in ("ISIC_1.jpg", "resized_ISIC_2.jpg", "ISIC_3.jpg")]
    assert list(df.lesion) == ["melanoma", "seborrheic_keratosis", "nevus"]
    usable, report = images.check_images(df, progress=False)
    assert list(usable.md5hash) == ["ISIC_1", "ISIC_2"] and list(report.reason) == ["missing"]


def test_isic_estimate_fst_uses_skintone_and_flags(tmp_path, monkeypatch):
    import bmglib.skintone

    csv, d = _isic_fixture(tmp_path, ["ISIC_1.jpg", "ISIC_2.jpg"])
    seen = []
    monkeypatch.setattr(bmglib.skintone, "estimate_fst_from_image", lambda p: seen.append(p) or 4)
    df = sources.load_isic(csv, d, estimate_fst=True)
    assert list(df.fitzpatrick_scale) == [4, 4, -1] and list(df.fst_estimated) == [True, True, False]
    assert seen == list(df.image_path[:2])  # the missing file is not estimated


def test_isic_both_flags_is_an_error(tmp_path):
    csv, d = _isic_fixture(tmp_path, [])
    pd.DataFrame({"image_id": ["ISIC_1"], "melanoma": [1], "seborrheic_keratosis": [1.0]}).to_csv(csv, index=False)
    with pytest.raises(schema.SchemaError, match=r"exclusive.*row\(s\) 2"):
        sources.load_isic(csv, d)


def test_unknown_policy_counts(tmp_path):
    rows = [["a", 1, "melanoma", "malignant melanoma", "malignant"],
            ["b", -1, "psoriasis", "inflammatory", "non-neoplastic"],
            ["c", -1, "acne", "inflammatory", "non-neoplastic"]]
    df = sources.load_fitzpatrick17k(_csv(tmp_path, rows, F17K_COLS))
    kept, n = schema.apply_unknown_fst_policy(df, "drop")
    assert n == 2 and list(kept.md5hash) == ["a"]
    kept, n = schema.apply_unknown_fst_policy(df, "keep")
    assert n == 2 and len(kept) == 3
    with pytest.raises(ValueError, match="drop"):
        schema.apply_unknown_fst_policy(df, "ignore")


def test_generic_csv_with_column_mapping(tmp_path):
    for name in ("001.png", "002.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    path = _csv(tmp_path, [["001", 2, "Melanoma", "001.png"], ["002", "", "nevus", "002.png"]],
                ["img", "fst", "dx", "file"], "my.csv")
    cmap = {"md5hash": "img", "fitzpatrick_scale": "fst", "label": "dx", "image_path": "file"}
    df = sources.load_source("csv", path, image_dir=tmp_path, column_map=cmap)
    assert list(df.md5hash) == ["001", "002"]  # ids read as text: leading zeros kept
    assert list(df.fitzpatrick_scale) == [2, -1] and list(df.lesion) == ["melanoma", "nevus"]
    assert list(df.three_partition_label) == ["malignant", "benign"] and (df.source == "csv").all()
    assert df.image_path[1] == str(tmp_path.resolve() / "002.png")
    no_id = {k: v for k, v in cmap.items() if k != "md5hash"}
    assert list(sources.load_csv_folder(path, tmp_path, no_id).md5hash) == ["001", "002"]  # file stems
    with pytest.raises(schema.SchemaError, match=r"my\.csv.*'diagnosis'"):
        sources.load_source("csv", path, image_dir=tmp_path, column_map={**cmap, "label": "diagnosis"})
    with pytest.raises(schema.SchemaError, match="label"):
        sources.load_csv_folder(path, tmp_path, {"fitzpatrick_scale": "fst", "image_path": "file"})


def test_lesion_mapping_used_by_every_adapter():
    assert schema.lesion_type("superficial spreading melanoma ssm", "malignant melanoma") == "melanoma"
    assert schema.lesion_type("halo nevus", "benign melanocyte") == "nevus"
    assert schema.lesion_type("becker nevus", "benign dermal") == "other"
    assert schema.lesion_type("seborrheic keratosis irritated", "") == "seborrheic_keratosis"
    assert schema.lesion_type("psoriasis", "inflammatory") == "other"


# --- a file that is not a CSV table at all: every loader names it and says what is wrong ----------

BAD_TABLES = {  # file name → (bytes, what the error says)
    "empty.csv": (b"", r"empty \(no header row, 0 bytes\)"),
    "blank.csv": (b"\n  \n", "empty"),
    "photo.png": (None, "not a text file .*NUL bytes"),
    "latin1.csv": ("md5hash,label\nnævus,x\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe6"),
    "quote.csv": (b'md5hash,label\n"a,b\n', "not a readable CSV"),
}


def _bad_table(tmp_path, name):
    path = tmp_path / name
    data, _ = BAD_TABLES[name]
    if data is None:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    else:
        path.write_bytes(data)
    return path


def _loaders(tmp_path):
    """Every user-table loader, as ``f(path)``."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    cmap = {"fitzpatrick_scale": "fst", "label": "dx", "image_path": "file"}
    return {
        "fitzpatrick17k": sources.load_fitzpatrick17k,
        "ddi": sources.load_ddi,
        "pad_ufes_20": sources.load_pad_ufes_20,
        "isic2017": lambda p: sources.load_isic(p, tmp_path / "imgs"),
        "csv": lambda p: sources.load_source("csv", p, image_dir=tmp_path, column_map=cmap),
    }


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
@pytest.mark.parametrize("loader", ["fitzpatrick17k", "ddi", "pad_ufes_20", "isic2017", "csv"])
def test_unreadable_table_names_the_file_and_the_problem(tmp_path, loader, name):
    path = _bad_table(tmp_path, name)
    with pytest.raises(schema.SchemaError, match=BAD_TABLES[name][1]) as e:
        _loaders(tmp_path)[loader](path)
    assert str(e.value).startswith(f"{path}: ") and "expected a CSV table" in str(e.value)


def test_read_table_missing_file_and_byte_order_mark(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: .*nowhere\.csv"):
        sources.load_fitzpatrick17k(tmp_path / "nowhere.csv")
    path = tmp_path / "excel.csv"  # Excel's "CSV UTF-8" starts with a byte-order mark
    path.write_bytes(("\ufeff" + ",".join(F17K_COLS) + "\na,1,melanoma,malignant melanoma,malignant\n")
                     .encode())
    assert list(sources.load_fitzpatrick17k(path).md5hash) == ["a"]
    with pytest.raises(schema.SchemaError, match=r"^my table: missing column\(s\) \['url'\]"):
        sources.read_table(path, ("md5hash", "url"), where="my table")
