import dataclasses
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


# --- one profile table for every section ------------------------------------------------------


def test_one_profile_table_drives_every_section():
    sections = {f.name for f in dataclasses.fields(config.Config)} - {"profile"}
    keyed = {key.partition(".")[0] for table in config.PROFILES.values() for key in table}
    assert {"downstream", "vae", "audit", "sampling"} <= keyed <= sections
    defaults = config.to_dict(config.Config())
    for profile, table in config.PROFILES.items():  # an entry equal to the default is a leftover
        for key, value in table.items():
            section, _, name = key.partition(".")
            assert defaults[section][name] != value, f"{profile}: {key} = the default"
    smoke = config.get_config("smoke")
    assert (smoke.downstream.width, smoke.vae.width, smoke.data.n_images) == (8, 8, 400)


# the resolved values of each profile as they were when downstream and vae had their own tables
PINNED = {
    "smoke": {"downstream.width": 8, "downstream.epochs": 2, "downstream.epoch_images": 128,
              "downstream.batch_size": 32, "downstream.seeds": 2, "downstream.n_boot": 100,
              "downstream.arch": "resnet18", "vae.width": 8, "vae.latent_dim": 8,
              "vae.n_train": 200, "vae.epochs": 2, "vae.n_isic": 16, "vae.score_probes": 8,
              "vae.sweep": (0.02, 0.10, 0.30), "audit.ita_per_fst": 40, "audit.isic_images": 30,
              "sampling.grid_per_cell": 2, "diffusion.steps": 6},
    "quick": {"downstream.width": 16, "downstream.epochs": 12, "downstream.epoch_images": 1024,
              "downstream.lr": 2e-3, "downstream.seeds": 3, "downstream.n_boot": 1000,
              "downstream.pos_fraction": 0.25, "vae.width": 16, "vae.n_train": 2000,
              "vae.epochs": 18, "vae.n_boot": 1000, "audit.ita_per_fst": 150,
              "audit.isic_images": 0, "sampling.grid_per_cell": 10, "sampling.budget": 600},
    "paper": {"downstream.arch": "resnet50", "downstream.width": 64,
              "downstream.small_stem": False, "downstream.image_size": 224,
              "downstream.epochs": 30, "downstream.epoch_images": 0, "downstream.lr": 3e-4,
              "downstream.seeds": 5, "downstream.n_boot": 2000, "vae.image_size": 128,
              "vae.latent_dim": 128, "vae.n_train": 8000, "vae.epochs": 60,
              "vae.laplace_fit": 4000, "vae.n_isic": 150, "audit.ita_per_fst": 150,
              "sampling.grid_per_cell": 10, "diffusion.backbone": "sd"},
}


@pytest.mark.parametrize("profile", list(PINNED))
def test_resolved_values_are_pinned(profile):
    raw = config.to_dict(config.get_config(profile))
    for key, value in PINNED[profile].items():
        section, _, name = key.partition(".")
        assert raw[section][name] == value and type(raw[section][name]) is type(value), key


def test_strict_overrides_on_the_downstream_and_vae_sections():
    cfg = config.get_config("smoke", {"downstream.lr": 1, "vae.sweep": [0.5, 1]})
    assert cfg.downstream.lr == 1.0 and isinstance(cfg.downstream.lr, float)
    assert cfg.vae.sweep == (0.5, 1.0) and isinstance(cfg.vae.sweep, tuple)
    bad = {"downstream.widht": "downstream.widht", "vae.epoch": "vae.epoch",
           "downstream.seeds": "expects int", "vae.beta": "expects float",
           "downstream.small_stem": "expects bool", "vae.sweep": "vae.sweep"}
    values = {"downstream.seeds": 2.0, "vae.beta": "0.1", "downstream.small_stem": 1,
              "vae.sweep": 0.1}
    for key, message in bad.items():
        with pytest.raises(config.ConfigError, match=message):
            config.get_config("smoke", {key: values.get(key, 1)})
    with pytest.raises(config.ConfigError, match=r"vae.sweep\[1\]"):
        config.get_config("smoke", {"vae.sweep": [0.1, "x"]})


@pytest.mark.parametrize("key,value", [
    ("downstream.arch", "vgg16"), ("downstream.threshold", "best"),
    ("downstream.pos_fraction", 1.0), ("downstream.pos_fraction", 0.0),
    ("vae.image_size", 24), ("vae.image_size", 4), ("vae.sweep", [0.1, 1.5]), ("vae.sweep", []),
])
def test_section_rules_run_after_overrides_and_name_the_key(key, value):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.get_config("quick", {key: value})
    raw = config.to_dict(config.get_config("quick"))
    section, _, name = key.partition(".")
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):  # and on load
        config.from_dict({**raw, section: {**raw[section], name: value}})


@pytest.mark.parametrize("profile", list(config.PROFILES))
def test_every_profile_round_trips_through_json(profile):
    cfg = config.get_config(profile)
    stored = json.loads(json.dumps(config.provenance(cfg, dataset_hash="abc", seed=0)))
    assert stored["config"]["downstream"]["arch"] == cfg.downstream.arch
    assert config.from_dict(stored["config"]) == cfg


def test_a_stored_config_without_the_new_sections_loads_with_their_defaults():
    raw = config.to_dict(config.get_config("smoke"))
    old = {k: v for k, v in raw.items() if k not in ("downstream", "vae", "audit")}
    old["sampling"] = {k: v for k, v in raw["sampling"].items() if k != "grid_per_cell"}
    cfg = config.from_dict(old)
    # they ran at p >= 0.5 (config.LEGACY), not at today's default operating point
    assert cfg.downstream == config.DownstreamConfig(threshold="fixed") and cfg.vae == config.VAEConfig()
    assert cfg.audit == config.AuditConfig() and cfg.data == config.get_config("smoke").data


def test_command_line_overrides_are_literals_or_plain_strings():
    parsed = config.parse_overrides(["diffusion.steps=500", "diffusion.sd_path=/models/sd15", "diffusion.lr=2e-3",
                                     "sampling.lesions=melanoma,nevus", "diffusion.fst_cond=False"])
    assert parsed == {"diffusion.steps": 500, "diffusion.sd_path": "/models/sd15", "diffusion.lr": 2e-3,
                      "sampling.lesions": "melanoma,nevus", "diffusion.fst_cond": False}
    assert config.get_config("smoke", parsed).diffusion.steps == 500


def test_a_stable_diffusion_run_on_quick_or_smoke_drops_the_unets_progressive_resolution():
    """QUICK_RECIPE's 16 px phase is the pixel UNet's: with backbone=sd the profile's lowres settings
    are not applied (the config says lowres_size 0), Min-SNR is; asked for explicitly, it is an error
    that names the key and the backbone."""
    for profile in ("quick", "smoke"):
        d = config.get_config(profile, {"diffusion.backbone": "sd"}).diffusion
        assert (d.lowres_size, d.lowres_until, d.loss_weighting) == (0, 0.0, "min_snr")
        assert config.get_config(profile).diffusion.lowres_size == 16
    with pytest.raises(config.ConfigError, match=r"lowres_size.*backbone is 'sd'"):
        config.get_config("quick", {"diffusion.backbone": "sd", "diffusion.lowres_size": 16})
    assert config.get_config("paper").diffusion.lowres_size == 0
