"""Functional tests: dataset preparation (what notebook 01 writes) and the bias probe plumbing."""

import json

import numpy as np
import pandas as pd
import pytest

from bmglib import config
from bmglib.data import prepare, probe, schema


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "data"


def test_prepare_synthetic_writes_disjoint_balanced_splits(data_root):
    cfg = config.get_config("smoke", {"data.n_images": 200, "data.test_per_cell": 2})
    p = prepare.prepare(cfg, "synthetic", progress=False)
    meta = p.metadata
    assert set(meta["split"]) == {"train", "val", "test"}
    assert not meta["md5hash"].duplicated().any()  # no image in two splits
    test = p.split("test")
    assert (pd.crosstab(test.fitzpatrick_scale, test.lesion).values == 2).all()
    assert len(meta[meta.split != "test"]) == 200
    out = data_root / "processed" / "smoke" / "synthetic"
    for f in ("metadata.csv", "cell_table.csv", "image_report.csv", "provenance.json"):
        assert (out / f).exists(), f
    stamp = json.loads((out / "provenance.json").read_text())
    assert stamp["config"]["data"]["n_images"] == 200 and stamp["dataset_hash"]
    again = prepare.load_prepared("smoke", "synthetic")
    assert list(again["md5hash"]) == list(meta["md5hash"])
    cells = pd.read_csv(out / "cell_table.csv", index_col=0)
    assert cells.values.sum() == len(p.split("train"))


def test_prepare_again_leaves_identical_outputs_untouched(data_root):
    """07 prepares again after 01: the same data must not rewrite 01's files (make paper's skip
    compares them), while a change of the data must."""
    cfg = config.get_config("smoke", {"data.n_images": 200, "data.test_per_cell": 2})
    prepare.prepare(cfg, "synthetic", progress=False)
    out = data_root / "processed" / "smoke" / "synthetic"
    names = ("metadata.csv", "cell_table.csv", "image_report.csv", "provenance.json")
    before = {f: (out / f).stat().st_mtime_ns for f in names}
    prov = (out / "provenance.json").read_bytes()
    prepare.prepare(cfg, "synthetic", progress=False)
    assert {f: (out / f).stat().st_mtime_ns for f in names} == before
    assert (out / "provenance.json").read_bytes() == prov
    prepare.prepare(config.apply_overrides(cfg, {"data.test_per_cell": 3}), "synthetic", progress=False)
    stamp = json.loads((out / "provenance.json").read_text())
    assert stamp["config"]["data"]["test_per_cell"] == 3
    assert (out / "metadata.csv").stat().st_mtime_ns != before["metadata.csv"]


def test_load_prepared_names_the_missing_step(data_root):
    with pytest.raises(FileNotFoundError, match="01_data_audit"):
        prepare.load_prepared("smoke", "ddi")


def test_prepare_fitzpatrick17k_metadata_only(data_root, shared_real):
    cfg = config.get_config("smoke")
    p = prepare.prepare(cfg, "fitzpatrick17k", progress=False)
    assert not p.has_images
    assert p.n_unknown_fst == 565  # the real count, dropped under the default policy
    test = p.split("test")
    counts = test["fitzpatrick_scale"].value_counts()
    assert counts.nunique() == 1 and len(counts) == 6  # balanced per FST
    assert len(p.metadata) == 16577 - 565


def test_unknown_dataset_is_a_clear_error(data_root):
    with pytest.raises(ValueError, match="DATASET"):
        prepare.prepare(config.get_config("smoke"), "imagenet")


def test_bias_probe_runs_caches_and_reports_ns(data_root):
    cfg = config.get_config("smoke", {"data.n_images": 200, "data.test_per_cell": 3,
                                      "probe.n_boot": 50})
    meta = prepare.prepare(cfg, "synthetic", progress=False).metadata
    r1 = probe.run_bias_probe(meta, cfg.probe, progress=False)
    assert set(r1.per_fst.index) == {*schema.FST_LEVELS, "overall"}
    assert r1.per_fst.loc[6, "n_pos"] == 3 and r1.gap["n_pos_a"] == 9
    assert len(r1.history) == cfg.probe.epochs
    assert list(r1.over_seeds["seed"]) == [cfg.probe.seed] and r1.seed_summary()["seeds"] == 1
    assert r1.over_seeds["gap"][0] == pytest.approx(r1.gap["gap"])
    p = r1.predictions["p_melanoma"]
    assert ((p >= 0) & (p <= 1)).all() and len(p) == 3 * 24
    r2 = probe.run_bias_probe(meta, cfg.probe, progress=False)  # from the cache
    assert r2.cache_key == r1.cache_key
    assert np.allclose(r2.predictions["p_melanoma"], p)
