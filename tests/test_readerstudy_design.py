"""The reader study's design: balanced, seeded, and leaking nothing but pixels."""

from __future__ import annotations

import re
import typing

import numpy as np
import pandas as pd
import pytest
from _readerstudy import make_pool, png_chunks
from PIL import Image

from bmglib import paths
from bmglib.data import schema
from bmglib.readerstudy import design, store


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("pool"), n_per_cell=2)


@pytest.fixture(scope="module")
def study(pool, tmp_path_factory):
    cfg = design.DesignConfig(n_per_cell=2, seed=5, display_size=128)
    return design.create_study(tmp_path_factory.mktemp("studies") / "s1", pool, cfg)


def test_balanced_per_source_fst_lesion(study):
    t = design.design_table(study)
    assert list(t.index.get_level_values(0).unique()) == list(study.meta["sources"]) == ["real", "bmg"]
    cells = study.key.groupby(["source", "fitzpatrick_scale", "lesion"]).size()
    assert len(cells) == 2 * 6 * 4 and (cells == 2).all()
    assert study.meta["n_images"] == len(study.key) == 96
    assert study.key["image_id"].is_unique


def test_file_names_are_opaque(study, pool):
    files = sorted(p.name for p in (study.dir / "images").iterdir())
    assert len(files) == 96 and all(re.fullmatch(r"[0-9a-f]{16}\.png", f) for f in files)
    words = {*schema.LESIONS, "real", "bmg", "fst"}
    assert not any(w in f for f in files for w in words)
    # the ids are not in pool order: sorting by id does not sort by source
    assert study.key.sort_values("image_id")["source"].tolist() != sorted(study.key["source"])


def test_no_metadata_one_size_one_byte_size(study, pool):
    assert any(b"parameters" in open(p, "rb").read() for p in pool["image_path"])  # the pool leaks ...
    sizes = set()
    for path in (study.dir / "images").iterdir():
        data = path.read_bytes()
        assert png_chunks(data) == [b"IHDR", b"IDAT", b"IEND"]  # ... the study does not
        for word in (b"parameters", b"real", b"bmg", b"FST", b"Exif"):
            assert word not in data
        with Image.open(path) as im:
            assert im.size == (128, 128) and im.mode == "RGB" and not im.info
        sizes.add(len(data))
    assert len(sizes) == 1  # uncompressed: the byte size tells nothing either


def test_native_resolution_is_common_and_stated(study):
    d = study.meta["display"]
    assert d["native"] == 32 and d["size"] == 128 and d["filter"] == "lanczos"
    assert study.meta["sources"]["real"]["native_sizes"] == ["48x40"]
    assert study.meta["sources"]["bmg"]["native_sizes"] == ["32x32"]
    text = study.meta["description"]
    assert "32×32 px" in text and "128×128 px" in text and "Lanczos" in text
    assert "bmg" not in text and "48" not in text  # nothing that differs between sources


def test_shown_pixels_are_the_image(study):
    row = study.key.iloc[0]
    cfg = design.DesignConfig(**study.meta["design"])
    expected = np.asarray(design.display_image(row["original_path"], 32, cfg))
    with Image.open(study.image_path(row["image_id"])) as im:
        assert np.array_equal(np.asarray(im), expected)


def test_reader_orders_differ_and_repeat(study):
    a, b = design.reader_order(study, 1), design.reader_order(study, 2)
    assert sorted(a) == sorted(b) == sorted(study.image_ids)
    assert a != b and a == design.reader_order(study, 1)
    # the order is not the key's (id-sorted) order nor grouped by source
    src = study.key.set_index("image_id").loc[a, "source"].to_numpy()
    assert (src[1:] != src[:-1]).sum() > 20


def test_design_is_reproducible(pool, tmp_path):
    cfg = design.DesignConfig(n_per_cell=1, seed=3, display_size=64)
    k1 = design.create_study(tmp_path / "a", pool, cfg).key
    k2 = design.create_study(tmp_path / "b", pool.sample(frac=1, random_state=0), cfg).key
    cols = ["image_id", "source", "fitzpatrick_scale", "lesion", "original_path"]
    pd.testing.assert_frame_equal(k1[cols], k2[cols])
    k3 = design.create_study(tmp_path / "c", pool, design.DesignConfig(n_per_cell=1, seed=4, display_size=64)).key
    assert set(k3["original_path"]) != set(k1["original_path"])


def test_an_existing_study_is_never_overwritten(study, pool):
    with pytest.raises(FileExistsError, match="already holds a study"):
        design.create_study(study.dir, pool, design.DesignConfig(n_per_cell=1))


def test_short_cells_are_named(pool, tmp_path):
    thin = pool.drop(pool[(pool["source"] == "bmg") & (pool["fitzpatrick_scale"] == 5)
                          & (pool["lesion"] == "melanoma")].index[:1])
    with pytest.raises(ValueError, match=r"bmg FST V melanoma: 1"):
        design.create_study(tmp_path / "s", thin, design.DesignConfig(n_per_cell=2))
    st = design.create_study(tmp_path / "s", thin, design.DesignConfig(n_per_cell=2, on_short="take_all",
                                                                       display_size=64))
    assert st.meta["short_cells"] == [{"source": "bmg", "fst": 5, "lesion": "melanoma", "available": 1}]
    assert len(st.key) == 95


def test_missing_sample_set_names_variant_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"variant 'bmg'.*manifest\.csv.*03_balanced_sampling"):
        design.read_sample_set("bmg", tmp_path / "nothing")
    with pytest.raises(ValueError, match="real control"):
        design.read_sample_set("real", tmp_path)


def test_sample_set_uses_the_planned_fst(tmp_path):
    (tmp_path / "images").mkdir()
    pd.DataFrame({"image_path": ["images/a.png"], "lesion": ["nevus"], "fitzpatrick_scale": [2],
                  "plan_fst": [5], "estimated_fst": [2]}).to_csv(tmp_path / "manifest.csv", index=False)
    row = design.read_sample_set("standard", tmp_path).iloc[0]
    assert row["fitzpatrick_scale"] == 5 and row["image_path"] == str(tmp_path / "images" / "a.png")


def test_study_names_cannot_escape(tmp_path):
    for bad in ("", "../x", "a/b", "/etc", "a b", "é"):
        with pytest.raises(ValueError, match="reader study name"):
            paths.reader_study_dir(bad)
    assert paths.reader_study_dir("pilot_2").name == "pilot_2"


def test_answer_lesions_follow_the_schema():
    (lesion_type, _none) = typing.get_args(store.Answer.model_fields["lesion"].annotation)
    assert set(typing.get_args(lesion_type)) == {*schema.LESIONS, "unsure"}
    assert set(design.LESION_CHOICES) == set(schema.LESIONS)
