import json

import pytest

from bmglib import config


def test_profiles_resolve_and_differ():
    smoke, quick = config.get_config("smoke"), config.get_config("quick")
    assert smoke.data.n_images < quick.data.n_images
    assert config.get_config("paper").data.image_size == 512


def test_strict_overrides():
    cfg = config.get_config("smoke", {"data.n_images": 123, "probe.lr": 1})
    assert cfg.data.n_images == 123 and cfg.probe.lr == 1.0 and isinstance(cfg.probe.lr, float)
    with pytest.raises(config.ConfigError, match="data.n_imgs"):
        config.get_config("smoke", {"data.n_imgs": 1})
    with pytest.raises(config.ConfigError, match="expects int"):
        config.get_config("smoke", {"data.n_images": "100"})
    with pytest.raises(config.ConfigError, match="expects int"):
        config.get_config("smoke", {"data.n_images": True})
    with pytest.raises(config.ConfigError, match="nosection"):
        config.get_config("smoke", {"nosection.x": 1})
    with pytest.raises(config.ConfigError, match="unknown profile"):
        config.get_config("fast")


def test_overrides_do_not_leak_between_configs():
    config.get_config("quick", {"data.n_images": 7})
    assert config.get_config("quick").data.n_images != 7


def test_provenance_stamp(tmp_path):
    cfg = config.get_config("smoke")
    stamp = config.provenance(cfg, dataset_hash="abc", seed=3)
    assert stamp["config"]["data"]["n_images"] == cfg.data.n_images
    assert stamp["seed"] == 3 and stamp["dataset_hash"] == "abc"
    assert len(stamp["git_commit"]) >= 7
    p = config.write_provenance(tmp_path / "p.json", stamp)
    assert json.loads(p.read_text())["seed"] == 3


def test_cache_key_and_table_hash_depend_on_inputs():
    import pandas as pd

    assert config.cache_key(a=1, b="x") == config.cache_key(b="x", a=1)
    assert config.cache_key(a=1) != config.cache_key(a=2)
    df = pd.DataFrame({"md5hash": ["a", "b"], "fitzpatrick_scale": [1, 2], "label": ["x", "y"]})
    assert config.hash_table(df) == config.hash_table(df.iloc[::-1])
    df2 = df.assign(fitzpatrick_scale=[1, 3])
    assert config.hash_table(df) != config.hash_table(df2)


def test_from_dict_round_trips_and_fills_sections_it_predates():
    cfg = config.with_variant(config.get_config("smoke", {"sampling.guidance": 1.5}), "standard")
    raw = config.to_dict(cfg)
    assert config.from_dict(raw) == cfg
    old = {k: v for k, v in raw.items() if k != "sampling"}
    assert config.from_dict(old).sampling == config.SamplingConfig()
    with pytest.raises(config.ConfigError, match="diffusion.guidance"):
        config.from_dict({**raw, "diffusion": {**raw["diffusion"], "guidance": 0.5}})
