"""Adapters on the real shared files, and bad input on tiny fixtures made here."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmglib.data import images, schema, sources


def test_fitzpatrick17k_real_counts(shared_real):
    df = sources.load_fitzpatrick17k(shared_real / "fitzpatrick17k.csv")
    assert len(df) == 16577
    assert df.fitzpatrick_scale.value_counts().to_dict() == {
        2: 4808, 3: 3308, 1: 2947, 4: 2781, 5: 1533, 6: 635, -1: 565}
    mel = df[df.lesion == "melanoma"].fitzpatrick_scale.value_counts()
    assert [mel[f] for f in schema.FST_LEVELS] == [133, 198, 108, 60, 32, 15]
    assert (df.image_path == "").all()  # metadata only unless an image folder is given
    agree = (df.fitzpatrick_scale == df.fitzpatrick_centaur).mean()
    assert 0.44 < agree < 0.48  # the README's ~46%


def test_fitzpatrick17k_image_paths(shared_real, tmp_path):
    df = sources.load_fitzpatrick17k(shared_real / "fitzpatrick17k.csv", image_dir=tmp_path)
    assert df.image_path[0] == str(tmp_path.resolve() / f"{df.md5hash[0]}.jpg")


def test_ddi_keeps_ranges(shared_real):
    df = sources.load_ddi(shared_real / "ddi_metadata.csv")
    assert len(df) == 653 and (df.fitzpatrick_scale == -1).all()
    assert ((df.fst_low == 5) & (df.fst_high == 6)).sum() == 204
    assert set(df.fst_group_ddi) == {12, 34, 56}
    kept, n_unknown = schema.apply_unknown_fst_policy(df, "drop")
    assert n_unknown == 0 and len(kept) == 653  # a known range is not "unknown"
    assert (df[df.label.str.contains("melanoma")].lesion == "melanoma").all()
    assert (df[df.label == "melanocytic nevi"].lesion == "nevus").all()


def test_pad_ufes_20(shared_real):
    df = sources.load_pad_ufes_20(shared_real / "pad_ufes_20_metadata.csv")
    assert len(df) == 2298 and (df.lesion == "melanoma").sum() == 52
    assert (df.fitzpatrick_scale == -1).sum() == 804
    assert (df.lesion == "seborrheic_keratosis").sum() == 235 and "patient_id" in df


def test_isic_images_found_and_decodable(shared_real):
    df = sources.load_isic(shared_real / "isic2017" / "labels.csv")
    assert len(df) == 150
    assert df.lesion.value_counts().to_dict() == {"nevus": 83, "seborrheic_keratosis": 40, "melanoma": 27}
    usable, report = images.check_images(df, progress=False)
    assert len(usable) == 150 and report.empty
    assert (df.fitzpatrick_scale == -1).all() and not df.fst_estimated.any()


def test_isic_fst_estimate_is_flagged(shared_real, tmp_path):
    sub = pd.read_csv(shared_real / "isic2017" / "labels.csv").head(5)
    sub.to_csv(tmp_path / "labels.csv", index=False)
    df = sources.load_isic(tmp_path / "labels.csv", shared_real / "isic2017" / "images", estimate_fst=True)
    assert df.fst_estimated.all() and df.fitzpatrick_scale.between(1, 6).all()


def _f17k_csv(tmp_path, rows):
    cols = ["md5hash", "fitzpatrick_scale", "label", "nine_partition_label", "three_partition_label"]
    path = tmp_path / "f17k.csv"
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def test_missing_column_is_named_with_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"md5hash": ["a"], "label": ["melanoma"]}).to_csv(path, index=False)
    with pytest.raises(schema.SchemaError) as e:
        sources.load_fitzpatrick17k(path)
    assert "fitzpatrick_scale" in str(e.value) and "bad.csv" in str(e.value)


def test_bad_fst_values_report_csv_rows(tmp_path):
    rows = [["a", 1, "melanoma", "malignant melanoma", "malignant"],
            ["b", 7, "nevocytic nevus", "benign melanocyte", "benign"],
            ["c", "abc", "psoriasis", "inflammatory", "non-neoplastic"],
            ["d", -1, "psoriasis", "inflammatory", "non-neoplastic"]]
    with pytest.raises(schema.SchemaError) as e:
        sources.load_fitzpatrick17k(_f17k_csv(tmp_path, rows))
    msg = str(e.value)
    assert "row(s) 3, 4" in msg and "2 bad" in msg and "'abc'" in msg


def test_unknown_policy_counts(tmp_path):
    rows = [["a", 1, "melanoma", "malignant melanoma", "malignant"],
            ["b", -1, "psoriasis", "inflammatory", "non-neoplastic"]]
    df = sources.load_fitzpatrick17k(_f17k_csv(tmp_path, rows))
    kept, n = schema.apply_unknown_fst_policy(df, "drop")
    assert n == 1 and list(kept.md5hash) == ["a"]
    kept, n = schema.apply_unknown_fst_policy(df, "keep")
    assert n == 1 and len(kept) == 2
    with pytest.raises(ValueError, match="drop"):
        schema.apply_unknown_fst_policy(df, "ignore")


def test_generic_csv_with_column_mapping(tmp_path):
    for name in ("x1.png", "x2.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    pd.DataFrame({"img": ["x1", "x2"], "fst": [2, 5], "dx": ["Melanoma", "nevus"],
                  "file": ["x1.png", "x2.png"]}).to_csv(tmp_path / "my.csv", index=False)
    cmap = {"md5hash": "img", "fitzpatrick_scale": "fst", "label": "dx", "image_path": "file"}
    df = sources.load_source("csv", tmp_path / "my.csv", image_dir=tmp_path, column_map=cmap)
    assert list(df.lesion) == ["melanoma", "nevus"] and list(df.three_partition_label) == ["malignant", "benign"]
    bad = {**cmap, "label": "diagnosis"}
    with pytest.raises(schema.SchemaError, match="diagnosis"):
        sources.load_source("csv", tmp_path / "my.csv", image_dir=tmp_path, column_map=bad)


def test_unknown_source_lists_the_options():
    with pytest.raises(ValueError, match="fitzpatrick17k"):
        sources.load_source("imagenet")


def test_lesion_mapping():
    assert schema.lesion_type("superficial spreading melanoma ssm", "malignant melanoma") == "melanoma"
    assert schema.lesion_type("halo nevus", "benign melanocyte") == "nevus"
    assert schema.lesion_type("becker nevus", "benign dermal") == "other"
    assert schema.lesion_type("seborrheic keratosis irritated", "") == "seborrheic_keratosis"
    assert schema.lesion_type("psoriasis", "inflammatory") == "other"
