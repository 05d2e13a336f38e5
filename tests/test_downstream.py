"""The downstream classifier: arms, sampling, model, exact resume, caching, evaluation."""

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from bmglib import augment, config
from bmglib import downstream as D
from bmglib.data import images

# a tiny ResNet-18 (first stage 4 channels) on 16 px images: a second or two per run on one core
TINY = {"downstream.width": 4, "downstream.image_size": 16, "downstream.epochs": 3,
        "downstream.epoch_images": 64, "downstream.batch_size": 16, "downstream.seeds": 2}


def _cfg(overrides: dict | None = None) -> config.DownstreamConfig:
    return config.get_config("quick", overrides).downstream


def _table(n_cells: dict, prefix: str) -> pd.DataFrame:
    rows = [{"md5hash": f"{prefix}{les}{fst}-{i}", "lesion": les, "fitzpatrick_scale": fst}
            for (les, fst), n in n_cells.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_subsample_keeps_cell_proportions_and_is_seeded():
    big = _table({("melanoma", 5): 40, ("other", 5): 120, ("other", 1): 40}, "b")
    sub = D.subsample_stratified(big, 50, seed=3)
    counts = sub.groupby(["lesion", "fitzpatrick_scale"]).size().to_dict()
    assert counts == {("melanoma", 5): 10, ("other", 1): 10, ("other", 5): 30}
    assert sub["md5hash"].is_unique
    shuffled = big.sample(frac=1, random_state=0)
    assert set(D.subsample_stratified(shuffled, 50, seed=3)["md5hash"]) == set(sub["md5hash"])
    assert set(D.subsample_stratified(big, 50, seed=4)["md5hash"]) != set(sub["md5hash"])


def test_build_arms_adds_equally_many_synthetic_images():
    real = _table({("melanoma", 1): 5, ("other", 1): 50}, "r")
    standard = _table({("melanoma", 2): 30, ("other", 2): 90}, "s")
    bmg = _table({("melanoma", 6): 20, ("other", 6): 20}, "g")
    arms = D.build_arms(real, {"standard": standard, "bmg": bmg}, seed=0)
    assert list(arms) == list(D.ARMS)
    n_syn = {k: int((v["train_source"] == "synthetic").sum()) for k, v in arms.items()}
    assert n_syn == {"real": 0, "real+standard": 40, "real+bmg": 40}
    assert (arms["real+standard"]["lesion"] == "melanoma").sum() == 5 + 10  # 1/4 of standard
    assert set(arms["real"]["md5hash"]) <= set(arms["real+bmg"]["md5hash"])
    assert list(D.build_arms(real)) == ["real"]


def test_build_arms_takes_any_number_of_variants_and_names_an_empty_one():
    real = _table({("melanoma", 1): 5, ("other", 1): 50}, "r")
    syn = {v: _table({("melanoma", 3): 10 + 10 * i, ("other", 3): 30}, v) for i, v in enumerate("abc")}
    arms = D.build_arms(real, syn, seed=0)
    assert list(arms) == ["real", "real+a", "real+b", "real+c"]
    assert {k: int((v["train_source"] == "synthetic").sum()) for k, v in arms.items()} == {
        "real": 0, "real+a": 40, "real+b": 40, "real+c": 40}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        D.build_arms(real, {**syn, "b": syn["b"].iloc[:0]})


def test_epoch_indices_hold_the_melanoma_share_and_cycle_without_replacement():
    y = np.r_[np.ones(10, int), np.zeros(90, int)]
    e0, e1 = (D.epoch_indices(y, e, 40, 0.25, seed=0) for e in (0, 1))
    assert y[e0].sum() == 10 and len(e0) == 40
    assert sorted(e0[y[e0] == 1]) == list(range(10))  # each melanoma once per cycle
    assert len(set(e0[y[e0] == 0]) | set(e1[y[e1] == 0])) == 60  # negatives not repeated yet
    assert np.array_equal(e1, D.epoch_indices(y, 1, 40, 0.25, seed=0))
    assert not np.array_equal(e1, D.epoch_indices(y, 1, 40, 0.25, seed=1))


def test_augment_moves_pixels_but_never_changes_colours():
    x = torch.rand(64, 3, 8, 8)
    out = augment.dihedral_per_image(x, torch.Generator().manual_seed(0))
    assert torch.equal(x.flatten(1).sort(1).values, out.flatten(1).sort(1).values)
    poses = {tuple(o[0, 0, :2].tolist()) for o in augment.dihedral_per_image(
        x[:1].expand(64, -1, -1, -1), torch.Generator().manual_seed(1))}
    assert len(poses) == 8  # all flips × 90° rotations occur


def test_model_shapes_stem_and_width():
    small = D.MelanomaResNet("resnet18", width=8, small_stem=True)
    assert small(torch.zeros(2, 3, 16, 16)).shape == (2,)
    assert small.net.conv1.stride == (1, 1) and isinstance(small.net.maxpool, torch.nn.Identity)
    assert small.net.fc.in_features == 64
    full = D.MelanomaResNet("resnet18", width=64, small_stem=False)
    ref = torchvision.models.resnet18(num_classes=1)
    assert [p.shape for p in full.net.parameters()] == [p.shape for p in ref.parameters()]
    assert D.MelanomaResNet("resnet50", width=8)(torch.zeros(2, 3, 16, 16)).shape == (2,)


def test_local_imagenet_weights_load_into_the_backbone(tmp_path):
    ref = torchvision.models.resnet18()  # stands in for ImageNet weights: random, 1000 classes
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    cfg = _cfg({"downstream.width": 64, "downstream.weights_path": str(tmp_path / "r18.pth")})
    model = D.build_model(cfg)
    assert torch.equal(model.net.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert not torch.equal(model.net.conv1.weight[..., :3, :3], ref.conv1.weight[..., :3, :3])
    with pytest.raises(ValueError, match="width=64"):
        D.build_model(_cfg({"downstream.weights_path": str(tmp_path / "r18.pth")}))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        D.build_model(_cfg({"downstream.width": 64,
                            "downstream.weights_path": str(tmp_path / "r50.pth")}))
    with pytest.raises(FileNotFoundError):
        D.build_model(_cfg({"downstream.width": 64, "downstream.weights_path": "/nonexistent"}))


def test_config_profiles_are_strict():
    assert config.get_config("quick").downstream.arch == "resnet18"
    assert config.get_config("paper").downstream.arch == "resnet50"
    assert _cfg({"downstream.epochs": 3}).epochs == 3
    with pytest.raises(config.ConfigError, match="unknown config key"):
        _cfg({"downstream.epoch": 3})
    with pytest.raises(config.ConfigError, match="expects int"):
        _cfg({"downstream.epochs": "3"})
    with pytest.raises(config.ConfigError):
        _cfg({"downstream.pos_fraction": 1.0})
    assert set(D.ARCHS) == set(config.DOWNSTREAM_ARCHS)  # every configurable arch can be built


def _tensors(seed=0, n=80):
    g = torch.Generator().manual_seed(seed)
    y = np.r_[np.ones(n // 8, int), np.zeros(n - n // 8, int)]
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    x[y == 1, 0] = x[y == 1, 0] // 2 + 128  # a learnable (red) melanoma cue
    return x, y


class Stop(Exception):
    pass


@pytest.mark.slow
def test_interrupted_training_resumes_to_identical_weights(tmp_path):
    x, y = _tensors()
    cfg = _cfg(TINY)
    full = D.fit(x, y, x[:40], y[:40], cfg, seed=5, ckpt_dir=tmp_path / "a", run_id="k",
                 progress=False)

    def stop_after_first(epoch, row):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        D.fit(x, y, x[:40], y[:40], cfg, seed=5, ckpt_dir=tmp_path / "b", run_id="k",
              callbacks=[stop_after_first], progress=False)
    resumed = D.fit(x, y, x[:40], y[:40], cfg, seed=5, ckpt_dir=tmp_path / "b", run_id="k",
                    progress=False)
    assert resumed.resumed_from == 1 and full.resumed_from == 0
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    last_a, last_b = (D.load_file(tmp_path / d / "last" / "model.safetensors") for d in "ab")
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    cols = ["epoch", "loss", "val_auc"]
    pd.testing.assert_frame_equal(full.history[cols], resumed.history[cols])
    other = D.fit(x, y, x[:40], y[:40], cfg, seed=5, ckpt_dir=tmp_path / "b", run_id="other",
                  progress=False)
    assert other.resumed_from == 0  # a checkpoint of another run is never resumed


def test_validation_auc_chooses_the_epoch():
    x, y = _tensors(1)
    cfg = _cfg({**TINY, "downstream.epochs": 4})
    res = D.fit(x, y, x[::2], y[::2], cfg, seed=0, progress=False)
    h = res.history
    assert res.best_epoch == int(h["val_auc"].idxmax()) + 1 and h["best"].sum() == 1
    val_auc = D.fairness.auc(y[::2], D.predict_logits(res.model, x[::2]))
    assert val_auc == pytest.approx(h.loc[res.best_epoch - 1, "val_auc"], abs=1e-9)
    with pytest.raises(ValueError, match="validation labels are all one class"):
        D.fit(x, y, x[y == 0], y[y == 0], cfg, progress=False)


def test_youden_threshold_is_chosen_on_validation():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.8, 0.9])
    assert D.choose_threshold(y, p, "fixed") == 0.5
    t = D.choose_threshold(y, p, "val_youden")
    assert 0.7 < t <= 0.8 and ((p >= t) == y).all()


def _splits(tiny_synthetic):
    pool, test = tiny_synthetic
    val_mask = np.zeros(len(pool), bool)
    for _, rows in pool.groupby("lesion"):
        val_mask[rows.index[::3]] = True  # a third of every lesion: melanomas in val for the AUC
    return pool[~val_mask].reset_index(drop=True), pool[val_mask].reset_index(drop=True), test


def test_load_images_matches_load_tensor_and_decodes_once(tiny_synthetic, monkeypatch):
    train, _, _ = _splits(tiny_synthetic)
    u8 = D.load_images(train, 16, progress=False)
    assert u8.dtype == torch.uint8
    assert torch.equal(D.to_float(u8), images.load_tensor(train, 16, progress=False))
    monkeypatch.setattr(images, "load_tensor", lambda *a, **k: pytest.fail("decoded twice"))
    assert torch.equal(D.load_images(train.iloc[::-1], 16, progress=False), u8.flip(0))
    redrawn = train.assign(md5hash=train["md5hash"] + "-new")  # same file names, new content
    with pytest.raises(pytest.fail.Exception, match="decoded twice"):
        D.load_images(redrawn, 16, progress=False)


def test_run_arm_predicts_the_test_split_and_caches(tiny_synthetic, tmp_path, monkeypatch):
    train, val, test = _splits(tiny_synthetic)
    cfg = _cfg(TINY)
    r = D.run_arm("real", train, val, test, cfg, seed=0, out_dir=tmp_path / "run", progress=False)
    p = r.predictions
    assert len(p) == len(test) and list(p["md5hash"]) == list(test["md5hash"])
    assert (p["y_true"] == (test["lesion"] == "melanoma")).all()
    assert p["p_melanoma"].between(0, 1).all() and (p["y_pred"] == (p["p_melanoma"] >= r.info["threshold"])).all()
    assert r.info["n_train"] == len(train) and r.info["images_per_s"] > 0 and not r.cached
    assert not (tmp_path / "run" / "checkpoints").exists()
    model = D.load_arm_model(r)
    p_again = 1 / (1 + np.exp(-D.predict_logits(model, D.load_images(test, 16, False))))
    np.testing.assert_allclose(p_again, p["p_melanoma"], rtol=1e-5)
    monkeypatch.setattr(D, "fit", lambda *a, **k: pytest.fail("retrained a cached run"))
    again = D.run_arm("real", train.iloc[::-1], val, test, cfg, 0, tmp_path / "run", False)
    assert again.cached
    pd.testing.assert_frame_equal(again.predictions, p, check_dtype=False)
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # another seed is another run
        D.run_arm("real", train, val, test, cfg, 1, tmp_path / "run", False)


@pytest.mark.slow
def test_run_arms_and_evaluate_arms_end_to_end(tiny_synthetic, tmp_path, monkeypatch):
    train, val, test = _splits(tiny_synthetic)
    monkeypatch.setattr(D.paths, "cache_dir", lambda: tmp_path)
    synthetic = train.assign(md5hash=train["md5hash"] + "s")  # stand-ins for the generators' sets
    arms = D.build_arms(train.iloc[::2], {"standard": synthetic.iloc[:20], "bmg": synthetic.iloc[20:50]}, seed=0)
    runs = D.run_arms(arms, val, test, _cfg({**TINY, "downstream.epochs": 1}),
                      progress=False)
    assert len(runs.runs) == 6 and runs.runs.groupby("arm")["n_synthetic"].first().to_dict() == {
        "real": 0, "real+bmg": 20, "real+standard": 20}
    assert len(runs.predictions) == 6 * len(test) and len(runs.history) == 6
    tables = D.evaluate_arms(runs.predictions, n_boot=20)
    fst = tables["per_fst"]
    assert fst.groupby("arm").size().to_dict() == {a: 7 for a in D.ARMS}
    assert (fst.loc[fst["group"] != "overall", "n"] == len(test) // 6).all()
    assert (fst["seeds"] == 2).all() and fst["auc_sd"].notna().all()
    summary = tables["summary"].set_index(["arm", "contrast"])
    assert summary.loc[("real", "edfr"), "n_pos_a"] == (test["lesion"] == "melanoma").sum() / 2


def test_protocol_predictions_pair_every_synthetic_run_with_a_real_only_run(tiny_synthetic, tmp_path, monkeypatch):
    from bmglib.metrics import hierarchical

    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    train, val, test = _splits(tiny_synthetic)
    cfg = _cfg({**TINY, "downstream.epochs": 1, "downstream.seeds": 2})
    syn = {g: {"bmg": test.sample(12, random_state=g), "standard": test.sample(16, random_state=10 + g)}
           for g in (0, 3)}
    preds = D.protocol_predictions(train, syn, val, test, cfg, progress=False)
    runs = preds.groupby(["arm", "generator_seed", "classifier_seed"]).size()
    assert (runs == len(test)).all()
    assert sorted(runs.loc["real+bmg"].index) == [(0, 0), (0, 1), (3, 2), (3, 3)]  # own classifier seeds per generator
    assert sorted(runs.loc["real"].index) == [(-1, 0), (-1, 1), (-1, 2), (-1, 3)]  # a real-only run for each
    r = hierarchical.paired_effect(preds, "real+bmg", "real", n_boot=50)
    assert r["n_generator_seeds"] == 2 and r["n_classifier_seeds"] == 4 and r["n_reference_seeds"] == 4
    rules = D.decision_rules(preds, n_boot=30)
    assert len(rules) == 9 and (rules["role"] == "primary").sum() == 3
    primary = rules[rules["role"] == "primary"].set_index("rule")
    assert list(primary.index) == ["real+bmg narrows the gap", "real+standard narrows the gap",
                                   "real+bmg beats real+standard"]
    assert set(primary["verdict"]) <= {"shown", "not shown", "opposite shown"}
    row = primary.loc["real+bmg narrows the gap"]
    assert row["verdict"] == ("shown" if row["ci_high"] < 0 else "opposite shown" if row["ci_low"] > 0 else "not shown")
    assert (rules.loc[rules["role"] == "secondary", "verdict"] == "secondary: no rule").all()
    with pytest.raises(ValueError, match="no generator seeds"):
        D.protocol_predictions(train, {}, val, test, cfg)
