"""The training recipe's options (issue 14): Min-SNR-γ loss weighting, samplers, the validation
protocol that recipes are chosen on."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bmglib import config
from bmglib.diffusion import losses, sample, schedule, train, validate
from bmglib.diffusion.model import build_unet


def _cfg(**over):
    base = {"diffusion.steps": 4, "diffusion.batch_size": 4, "diffusion.base_channels": 16}
    return config.get_config("smoke", {**base, **over})


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_min_snr_weight_caps_the_low_noise_timesteps(prediction):
    d = _cfg(**{"diffusion.prediction_type": prediction}).diffusion
    sched = schedule.make_scheduler(d)
    t = torch.tensor([0, 10, 100, 300, 600, 999])
    w = losses.timestep_weight(sched, t, "min_snr", gamma=5.0)
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1 if prediction == "v_prediction" else snr)
    assert torch.allclose(w, expected)
    # in x0 space the weight is min(SNR, γ): capped at γ where SNR > γ, SNR itself below
    x0_weight = w * (snr + 1 if prediction == "v_prediction" else snr)
    assert torch.allclose(x0_weight[snr > 5], torch.tensor(5.0)) and torch.allclose(x0_weight[snr <= 5], snr[snr <= 5])
    assert losses.timestep_weight(sched, t, "none") is None
    with pytest.raises(ValueError, match="loss_weighting"):
        losses.timestep_weight(sched, t, "snr_plus")


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_snr_cap_lowers_only_the_low_noise_timesteps(prediction):
    d = _cfg(**{"diffusion.prediction_type": prediction}).diffusion
    sched = schedule.make_scheduler(d)
    t = torch.arange(0, 1000, 37)
    w = losses.timestep_weight(sched, t, "snr_cap", gamma=5.0)
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    own = snr + 1 if prediction == "v_prediction" else snr
    # the loss's own x0-space weight, capped at γ: weight 1 wherever it is ≤ γ, γ / own above
    assert torch.allclose(w[own <= 5], torch.ones(int((own <= 5).sum())))
    assert torch.allclose(w[own > 5] * own[own > 5], torch.tensor(5.0))
    assert (own > 5).any() and (own <= 5).any()
    # Min-SNR on the v loss lowers the high-noise timesteps too; snr_cap never does
    snr_w = losses.timestep_weight(sched, t, "min_snr", gamma=5.0)
    assert (w >= snr_w - 1e-6).all()
    if prediction == "v_prediction":
        assert snr_w[-1] < 0.01 and w[-1] == 1
    else:
        assert torch.allclose(w, snr_w)


def test_weighting_until_switches_the_weighting_off_after_its_share_of_the_steps():
    d = _cfg(**{"diffusion.steps": 10, "diffusion.loss_weighting": "min_snr", "diffusion.weighting_until": 0.5}).diffusion
    kinds = [schedule.step_config(k, d).loss_weighting for k in range(10)]
    assert kinds == ["min_snr"] * 5 + ["none"] * 5
    assert schedule.step_config(3, d) is d
    with pytest.raises(config.ConfigError, match="weighting_until"):
        _cfg(**{"diffusion.weighting_until": 1.5})
    # where it has no effect it is not part of the model's identity (earlier runs keep their ids)
    for over in ({}, {"diffusion.loss_weighting": "min_snr"}):
        assert "weighting_until" not in train.model_identity(_cfg(**over))["diffusion"]
    assert train.model_identity(_cfg(**{"diffusion.loss_weighting": "min_snr",
                                        "diffusion.weighting_until": 0.5}))["diffusion"]["weighting_until"] == 0.5


def test_lowres_until_trains_the_first_share_of_the_steps_at_the_lower_size():
    d = _cfg(**{"diffusion.steps": 10, "diffusion.lowres_size": 16, "diffusion.lowres_until": 0.3}).diffusion
    assert [schedule.step_config(k, d).lowres_size for k in range(10)] == [16] * 3 + [0] * 7
    assert schedule.step_config(0, d) is d
    # both switches at once: each at its own share
    d2 = _cfg(**{"diffusion.steps": 10, "diffusion.lowres_size": 16, "diffusion.lowres_until": 0.3,
                 "diffusion.loss_weighting": "min_snr", "diffusion.weighting_until": 0.5}).diffusion
    assert [(c.lowres_size, c.loss_weighting) for c in (schedule.step_config(k, d2) for k in (2, 3, 5))] == \
        [(16, "min_snr"), (0, "min_snr"), (0, "none")]
    for bad in (32, 12, 24, 10, -8):  # not below 32, not dividing it, not a multiple of 4
        with pytest.raises(config.ConfigError, match="lowres_size"):
            _cfg(**{"diffusion.lowres_size": bad})
    with pytest.raises(config.ConfigError, match="lowres_until"):
        _cfg(**{"diffusion.lowres_size": 16, "diffusion.lowres_until": 1.5})
    # off (size 0, or a zero share; quick and smoke run it since issue 14): not part of the model's
    # identity, so the run ids of models trained without it hold
    for over in ({"diffusion.lowres_size": 0, "diffusion.lowres_until": 0.0},
                 {"diffusion.lowres_size": 16, "diffusion.lowres_until": 0.0}):
        ident = train.model_identity(_cfg(**over))["diffusion"]
        assert "lowres_size" not in ident and "lowres_until" not in ident
    assert train.model_identity(_cfg(**{"diffusion.lowres_size": 16, "diffusion.lowres_until": 0.5})
                                )["diffusion"]["lowres_size"] == 16


def test_a_low_resolution_step_trains_the_same_unet_and_gives_the_estimator_full_size_images():
    d = _cfg(**{"diffusion.lowres_size": 16, "diffusion.lowres_until": 1.0}).diffusion
    torch.manual_seed(0)
    model = build_unet(32, (16, 32, 32))
    sched = schedule.make_scheduler(d)
    seen = []

    class Estimator(torch.nn.Module):  # records the size it is given; uniform probabilities
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.full((len(x), 6), 1 / 6) + 0 * x.mean((1, 2, 3))[:, None]

    x0 = torch.nn.functional.interpolate(torch.rand(4, 3, 32, 32) * 2 - 1, size=(16, 16), mode="area")
    terms = losses.training_losses(model, sched, x0, torch.tensor([1, 2, 5, 6]), torch.tensor([0, 1, 2, 3]),
                                   dataclasses.replace(d, t_fair=1000, fair_target="requested"), torch.Generator().manual_seed(0),
                                   estimator=Estimator())
    assert torch.isfinite(terms.loss) and terms.fair is not None and seen and set(seen) == {(32, 32)}
    terms.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_weighted_denoising_loss_reduces_to_the_plain_ones():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    fg = 1 + torch.rand(4, 1, 8, 8, generator=g)
    ones = torch.ones(4)
    assert torch.allclose(losses.denoising_loss(pred, target, t_weight=ones), losses.denoising_loss(pred, target))
    assert torch.allclose(losses.denoising_loss(pred, target, fg, ones), losses.denoising_loss(pred, target, fg))
    # a per-sample weight multiplies that sample's squared error
    w = torch.tensor([2.0, 0.0, 0.0, 0.0])
    assert torch.isclose(losses.denoising_loss(pred, target, t_weight=w), 2 * ((pred[0] - target[0]) ** 2).mean() / 4)


def test_min_snr_changes_only_the_weighting_of_the_same_draws():
    cfg_none, cfg_snr = _cfg(**{"diffusion.loss_weighting": "none"}), _cfg(**{"diffusion.loss_weighting": "min_snr"})
    torch.manual_seed(0)
    model = build_unet(32, (16, 32, 32))
    sched = schedule.make_scheduler(cfg_none.diffusion)
    x0 = torch.rand(4, 3, 32, 32) * 2 - 1
    fst, lesion = torch.tensor([1, 2, 5, 6]), torch.tensor([0, 1, 2, 3])
    plain = losses.training_losses(model, sched, x0, fst, lesion, cfg_none.diffusion, torch.Generator().manual_seed(3))
    weighted = losses.training_losses(model, sched, x0, fst, lesion, cfg_snr.diffusion, torch.Generator().manual_seed(3))
    # redo the draws in the documented order to get the per-sample errors
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, 1000, (4,), generator=gen)
    drop_f, drop_l = torch.rand(4, generator=gen) < 0.1, torch.rand(4, generator=gen) < 0.1
    out = model(sched.add_noise(x0, noise, t), t, fst, lesion, drop_f, drop_l)
    per_sample = ((out - losses.training_target(sched, x0, noise, t)) ** 2).mean((1, 2, 3))
    w = losses.timestep_weight(sched, t, "min_snr", 5.0)
    assert torch.isclose(plain.denoise, per_sample.mean(), rtol=1e-5)
    assert torch.isclose(weighted.denoise, (w * per_sample).mean(), rtol=1e-5)


@pytest.mark.parametrize("key, value, match", [("diffusion.loss_weighting", "snr", "loss_weighting"),
                                               ("diffusion.min_snr_gamma", 0.0, "min_snr_gamma"),
                                               ("diffusion.ema_power", -1.0, "ema_power")])
def test_recipe_settings_are_checked(key, value, match):
    with pytest.raises(config.ConfigError, match=match):
        config.get_config("smoke", {key: value})


def test_configs_stored_before_the_recipe_options_read_back_as_they_were_trained():
    raw = config.to_dict(config.get_config("quick"))
    for key in ("loss_weighting", "ema_power"):
        raw["diffusion"].pop(key)
    old = config.from_dict(raw)
    assert old.diffusion.loss_weighting == "none" and old.diffusion.ema_power == 0.0


@pytest.mark.parametrize("name", list(sample.SAMPLERS))
def test_every_sampler_draws_finite_images_of_the_requested_shape(name):
    d = _cfg().diffusion
    torch.manual_seed(0)
    model = train.build_model(d).eval()
    fst, lesion = torch.tensor([1, 6]), torch.tensor([0, 3])
    # 10 steps: Karras sigmas on the 1,000-step cosine schedule repeat the first timestep there
    x = sample.sample(model, schedule.make_scheduler(d), fst, lesion, size=32, steps=10, sampler=name, seed=0,
                      batch_size=1)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all() and x.abs().max() <= 1
    again = sample.sample(model, schedule.make_scheduler(d), fst, lesion, size=32, steps=10, sampler=name, seed=0,
                          batch_size=1)
    assert torch.equal(x, again)


def test_karras_sigmas_space_the_steps_differently():
    d = _cfg().diffusion
    scheds = {}
    for name in ("dpmpp", "dpmpp_karras"):
        cls, extra = sample.SAMPLERS[name]
        scheds[name] = cls.from_config(schedule.make_scheduler(d).config, **extra)
        scheds[name].set_timesteps(8)
    assert not np.array_equal(scheds["dpmpp"].timesteps.numpy(), scheds["dpmpp_karras"].timesteps.numpy())


def test_validation_denoising_loss_is_fixed_by_its_seed_and_prefers_the_trained_target(tiny_synthetic):
    pool, _ = tiny_synthetic
    d = _cfg().diffusion
    torch.manual_seed(0)
    model = train.build_model(d).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    judges = validate.Judges(pool.head(8), np.zeros((8, 4)), None, None, x, torch.tensor([1, 2, 3, 4, 5, 6, 1, 2]),
                             torch.tensor([0, 1, 2, 3] * 2))
    a, b = validate.denoising_loss(model, d, judges), validate.denoising_loss(model, d, judges)
    assert a == b and np.isfinite(a) and a > 0
    assert validate.denoising_loss(model, d, judges, seed=1) != a


@pytest.mark.slow
def test_validation_score_measures_samples_against_validation_only(tiny_synthetic):
    pool, _ = tiny_synthetic
    meta = pool.assign(split=np.where(np.arange(len(pool)) % 3 == 0, "val", "train"))
    judges = validate.Judges.build(meta, 32, real_per_cell=1, n_loss=16)
    assert set(judges.val_df["md5hash"]) <= set(meta.loc[meta["split"] == "val", "md5hash"])
    cfg = _cfg(**{"sampling.steps": 2})
    torch.manual_seed(0)
    row = validate.score(train.build_model(cfg.diffusion), cfg, judges, per_cell=1, n_boot=50)
    assert row["n"] == 24 and row["sampler"] == "dpmpp-2"
    assert row["kid_low"] <= row["kid_high"] and 0 <= row["fst_ita"] <= 1 and 0 <= row["lesion"] <= 1
    with pytest.raises(ValueError, match="'val'"):
        validate.Judges.build(meta.assign(split="train"), 32)


def test_progressive_resolution_changes_only_the_steps_it_covers(tiny_synthetic, tmp_path):
    pool, _ = tiny_synthetic
    over = {"diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0, "diffusion.checkpoint_every": 2}
    runs = {name: train.train_diffusion(_cfg(**over, **extra), pool, tmp_path / name, progress=False)
            for name, extra in {"plain": {}, "zero_share": {"diffusion.lowres_size": 16},
                                "half": {"diffusion.lowres_size": 16, "diffusion.lowres_until": 0.5}}.items()}
    w = {k: load_file(tmp_path / k / "final" / "model.safetensors") for k in runs}
    assert all(torch.equal(w["plain"][n], w["zero_share"][n]) for n in w["plain"])  # a zero share is off
    assert any(not torch.equal(w["plain"][n], w["half"][n]) for n in w["plain"])
    assert np.isfinite(runs["half"].log["loss"]).all() and list(runs["half"].log["step"]) == [1, 2, 3, 4]


def _convergence_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence.py"
    spec = importlib.util.spec_from_file_location("convergence_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_runs_the_benchmarked_recipe_and_before_stays_the_old_one():
    """quick's diffusion settings are the convergence benchmark's ``p16snr_1950``, and ``before`` still
    resolves to the recipe quick ran until issue 14 (1,200 unweighted steps at full resolution),
    whatever the profile's defaults now are."""
    bench = _convergence_benchmark()
    quick = config.get_config("quick")
    chosen = config.apply_overrides(quick, bench.RECIPES["p16snr_1950"])
    assert config.to_dict(chosen) == config.to_dict(quick)
    d = config.apply_overrides(quick, bench.RECIPES["before"]).diffusion
    assert (d.steps, d.loss_weighting, d.lowres_size, d.lowres_until, d.lr, d.lr_schedule) == (
        1200, "none", 0, 0.0, 1e-3, "constant")
    assert quick.diffusion.lowres_size == 16 and quick.diffusion.loss_weighting == "min_snr"
    # smoke takes quick's schedule (in shares of its own steps), so that CI runs quick's code path
    smoke = config.get_config("smoke").diffusion
    assert (smoke.loss_weighting, smoke.lowres_size, smoke.lowres_until) == (
        "min_snr", 16, quick.diffusion.lowres_until)
