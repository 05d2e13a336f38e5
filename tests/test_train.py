"""Diffusion training: fairness loss properties, exact resume after a kill, NaN stop, variants."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bmglib import config, skintone
from bmglib.data import synthetic
from bmglib.data.images import load_tensor
from bmglib.diffusion import losses, schedule, train
from bmglib.diffusion.model import build_unet


def _cfg(**over):
    base = {"diffusion.steps": 4, "diffusion.batch_size": 4, "diffusion.checkpoint_every": 2,
            "diffusion.base_channels": 16}
    return config.get_config("smoke", {**base, **over})


def _ita(pool):
    """The ITA estimator with its calibrated target from the pool's images (what
    ``skintone.get_fst_estimator`` does with the validation split)."""
    est = skintone.ITAEstimator()
    est.real_probs = skintone.real_fst_probs(est, load_tensor(pool, 32, progress=False),
                                             torch.tensor(pool["fitzpatrick_scale"].to_numpy()))
    return est


def _images(fsts, size=32):
    arr = np.stack([synthetic.render(int(f), "nevus", size, i).image for i, f in enumerate(fsts)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_fairness_loss_is_larger_when_skin_tones_disagree_with_the_request():
    fsts = torch.tensor([1, 2, 3, 4, 5, 6] * 2)
    x = _images(fsts)
    t = torch.zeros(len(x), dtype=torch.long)
    est = skintone.ITAEstimator()
    agree = losses.fairness_terms(x, t, est, 300, fsts)
    disagree = losses.fairness_terms(x, t, est, 300, torch.ones_like(fsts))  # all asked for FST I
    assert disagree.kl > agree.kl + 0.5 and disagree.ce > agree.ce
    # no sample at low noise → exactly zero
    none = losses.fairness_terms(x, torch.full_like(t, 999), est, 300, fsts)
    assert none.n == 0 and none.kl.item() == 0.0
    # not conditioned on FST → the target is uniform, which a balanced batch meets closely
    uniform = losses.fairness_terms(x, t, est, 300, None)
    assert torch.allclose(uniform.target, torch.full((6,), 1 / 6)) and uniform.kl < disagree.kl


def test_fairness_gradients_reach_the_unet():
    d = _cfg().diffusion
    model, sched = build_unet(32, (16, 32, 32)), schedule.make_scheduler(d)
    x0 = _images([1, 6, 3, 5])
    t = torch.tensor([10, 50, 100, 200])
    x_t = sched.add_noise(x0, torch.randn_like(x0), t)
    out = model(x_t, t, torch.tensor([1, 6, 3, 5]), torch.tensor([1, 1, 1, 1]))
    fair = losses.fairness_terms(losses.predict_x0(sched, x_t, t, out), t, skintone.ITAEstimator(), 300,
                                 torch.tensor([6, 1, 6, 1]))
    fair.kl.backward()
    grads = [p.grad for p in model.unet.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_training_losses_assemble_the_batch_loss_and_draw_in_a_fixed_order():
    d = _cfg(**{"diffusion.lambda_kl": 5.0, "diffusion.lambda_ce": 0.5, "diffusion.t_fair": 999,
                "diffusion.fair_balance": 0.0, "diffusion.fair_target": "requested"}).diffusion
    torch.manual_seed(0)
    model, sched = build_unet(32, (16, 32, 32)).eval(), schedule.make_scheduler(d)
    x0, fst, lesion = _images([1, 6, 3, 5]), torch.tensor([1, 6, 3, 5]), torch.tensor([0, 1, 2, 3])
    gen = torch.Generator().manual_seed(4)
    off = losses.training_losses(model, sched, x0, fst, lesion, d, gen)  # no estimator: no fairness term
    ref = torch.Generator().manual_seed(4)  # noise, timesteps, FST-token drop, lesion-token drop
    torch.randn(x0.shape, generator=ref), torch.randint(0, d.num_train_timesteps, (4,), generator=ref)
    torch.rand(4, generator=ref), torch.rand(4, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())
    assert off.fair is None and off.loss is off.denoise
    assert off.logs() == {"loss": off.loss.item(), "denoise": off.denoise.item(), "fair_kl": 0.0,
                          "fair_ce": 0.0, "n_fair": 0, "fair_scale": 0.0}
    on = losses.training_losses(model, sched, x0, fst, lesion, d, torch.Generator().manual_seed(4),
                                estimator=skintone.ITAEstimator(), fair_factor=0.5)
    assert on.fair is not None and on.fair.n > 0 and on.fair_scale == 0.5
    assert torch.allclose(on.loss, on.denoise + 0.5 * (d.lambda_kl * on.fair.kl + d.lambda_ce * on.fair.ce))
    assert torch.equal(on.denoise, off.denoise)  # the same draws: the same denoising loss


def test_lambda_zero_switches_the_fairness_loss_off_exactly(tiny_synthetic, tmp_path):
    pool, _ = tiny_synthetic
    est = _ita(pool)
    off = train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0}), pool, tmp_path / "off",
                                estimator=est, progress=False)
    train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0}), pool, tmp_path / "none",
                          estimator=None, progress=False)
    on = train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 5.0}), pool, tmp_path / "on",
                               estimator=est, progress=False)
    w = {k: load_file(tmp_path / k / "final" / "model.safetensors") for k in ("off", "none", "on")}
    assert all(torch.equal(w["off"][n], w["none"][n]) for n in w["off"])
    assert any(not torch.equal(w["off"][n], w["on"][n]) for n in w["off"])
    assert (off.log["fair_kl"] == 0).all() and (on.log["n_fair"] >= 0).all()
    assert list(off.log["step"]) == [1, 2, 3, 4]
    # the schedule: never started = off; started half-way = off's weights until then, then not
    train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 5.0, "diffusion.fair_start": 1.0}), pool,
                          tmp_path / "never", estimator=est, progress=False)
    late = train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 5.0, "diffusion.fair_start": 0.5}), pool,
                                 tmp_path / "late", estimator=est, progress=False)
    # every FST token dropped (p_drop=1): nothing was asked, so no sample enters the fairness loss
    dropped = train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 5.0, "diffusion.p_drop": 1.0}), pool,
                                    tmp_path / "dropped", estimator=est, progress=False)
    assert (dropped.log["n_fair"] == 0).all() and (dropped.log["fair_kl"] == 0).all()
    never = load_file(tmp_path / "never" / "final" / "model.safetensors")
    assert all(torch.equal(w["off"][n], never[n]) for n in never)
    half = {k: load_file(tmp_path / k / "checkpoints" / "step_0000002" / "model.safetensors") for k in ("off", "late")}
    assert all(torch.equal(half["off"][n], half["late"][n]) for n in half["off"])
    assert (late.log["fair_kl"][:2] == 0).all() and late.log["n_fair"][2:].sum() > 0
    assert any(not torch.equal(w["off"][n], load_file(tmp_path / "late" / "final" / "model.safetensors")[n])
               for n in w["off"])


RUNNER = textwrap.dedent("""
    import sys, time, pathlib, pandas as pd
    from bmglib import config
    from bmglib.diffusion import train
    pool = pd.read_csv(sys.argv[1])
    out, marker = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    cfg = config.get_config("smoke", {{"diffusion.steps": 6, "diffusion.batch_size": 4,
        "diffusion.checkpoint_every": 3, "diffusion.base_channels": 16, "diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0}})
    def stall(step, logs):
        if step == 4:
            marker.write_text("at 4")
            time.sleep(120)  # the test kills us here, after the step-3 checkpoint
    train.train_diffusion(cfg, pool, out, callbacks=(stall,), progress=False)
""")


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tiny_synthetic, tmp_path):
    pool, _ = tiny_synthetic
    pool.to_csv(tmp_path / "pool.csv", index=False)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format())
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "pool.csv"), str(tmp_path / "killed"),
                             str(marker)])
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the training subprocess died before step 4"
            assert time.time() < deadline, "the training subprocess never reached step 4"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step_0000003"]
    cfg = config.get_config("smoke", {"diffusion.steps": 6, "diffusion.batch_size": 4,
                                      "diffusion.checkpoint_every": 3, "diffusion.base_channels": 16,
                                      "diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0})
    resumed = train.train_diffusion(cfg, pool, tmp_path / "killed", progress=False)
    straight = train.train_diffusion(cfg, pool, tmp_path / "straight", progress=False)
    assert resumed.resumed_from == 3 and straight.resumed_from == 0
    a = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert list(resumed.log["step"]) == list(range(1, 7))
    assert np.allclose(resumed.log["loss"], straight.log["loss"], atol=1e-6)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tiny_synthetic, tmp_path):
    pool, _ = tiny_synthetic
    cfg = _cfg(**{"diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0, "diffusion.steps": 5})

    def poison(step, logs):
        if step == 2:  # after the step-2 checkpoint, make every weight NaN
            for p in model_ref[0].parameters():
                p.data.fill_(float("nan"))

    model_ref = []
    orig = train.build_model

    def capture(d):
        m = orig(d)
        model_ref.append(m)
        return m

    train.build_model = capture
    try:
        with pytest.raises(FloatingPointError, match=r"step 3.*step_0000002"):
            train.train_diffusion(cfg, pool, tmp_path / "nan", callbacks=(poison,), progress=False)
    finally:
        train.build_model = orig
    ck = tmp_path / "nan" / "checkpoints" / "step_0000002" / "model.safetensors"
    assert all(torch.isfinite(v).all() for v in load_file(ck).values())


def test_variants_switch_components():
    base = config.get_config("smoke")
    std = config.with_variant(base, "standard").diffusion
    assert not std.fst_cond and std.alpha == 0 and std.lambda_kl == 0
    nf = config.with_variant(base, "no_fairloss").diffusion
    assert nf.fst_cond and nf.alpha == 1 and nf.lambda_kl == 0
    assert config.with_variant(base, "no_fst_cond").diffusion.fst_cond is False
    assert config.with_variant(base, "no_resample").diffusion.alpha == 0
    with pytest.raises(config.ConfigError, match="VARIANT"):
        config.with_variant(base, "bmgx")


def test_trained_model_reloads_from_its_config(tiny_synthetic, tmp_path):
    pool, _ = tiny_synthetic
    run = train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0}), pool, tmp_path / "r", progress=False)
    model, cfg = train.load_trained(tmp_path / "r")
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 500])
    f, les = torch.tensor([2, 5]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(model(x, t, f, les), run.model(x, t, f, les))
    assert cfg.diffusion.steps == 4
    assert (tmp_path / "r" / "final" / "provenance.json").exists()


def test_stable_diffusion_backbone_trains_resumes_and_samples(tiny_synthetic, tmp_path):
    """The GPU path end to end on a tiny random SD-shaped pipeline built from configs."""
    from bmglib.diffusion import model_sd, sample

    pool, _ = tiny_synthetic
    base = model_sd.build_tiny_sd(tmp_path)
    torch.set_num_threads(1)
    cfg = _cfg(**{"diffusion.backbone": "sd", "diffusion.sd_path": str(base), "diffusion.steps": 3,
                  "diffusion.checkpoint_every": 2, "diffusion.lambda_kl": 1.0, "diffusion.t_fair": 999})
    run = train.train_diffusion(cfg, pool, tmp_path / "sd", estimator=_ita(pool), progress=False)
    assert (run.log["n_fair"] > 0).any() and np.isfinite(run.log["loss"]).all()
    saved = load_file(tmp_path / "sd" / "final" / "model.safetensors")
    assert any("lora" in k for k in saved) and not any(k.startswith("vae.") for k in saved)
    model, _ = train.load_trained(tmp_path / "sd")
    x = sample.sample(model, None, torch.tensor([1, 6]), torch.tensor([0, 3]), steps=2, guidance=0.5)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    # a resumed run (from the step-2 checkpoint) ends where the uninterrupted one did
    ck = tmp_path / "sd" / "checkpoints"
    import shutil
    shutil.rmtree(ck / "step_0000003")
    shutil.rmtree(tmp_path / "sd" / "final")
    again = train.train_diffusion(cfg, pool, tmp_path / "sd", estimator=_ita(pool), progress=False)
    assert again.resumed_from == 2
    b = load_file(tmp_path / "sd" / "final" / "model.safetensors")
    assert max((saved[k] - b[k]).abs().max().item() for k in saved) <= 1e-6


def test_lr_schedule():
    d = _cfg(**{"diffusion.steps": 100, "diffusion.warmup_steps": 10, "diffusion.lr_schedule": "cosine"}).diffusion
    assert schedule.lr_factor(0, d) == pytest.approx(0.1) and schedule.lr_factor(10, d) == pytest.approx(1.0)
    assert schedule.lr_factor(55, d) == pytest.approx(0.5) and schedule.lr_factor(100, d) == pytest.approx(0.0)
    const = _cfg(**{"diffusion.steps": 100, "diffusion.warmup_steps": 10}).diffusion
    assert const.lr_schedule == "constant" and schedule.lr_factor(90, const) == 1.0


def test_fair_factor_waits_then_ramps_and_rejects_bad_shares():
    d = config.get_config("smoke", {"diffusion.steps": 100, "diffusion.fair_start": 0.5,
                                    "diffusion.fair_ramp": 0.2}).diffusion
    f = [schedule.fair_factor(s, d) for s in range(100)]
    assert f[:50] == [0.0] * 50 and f[50] == pytest.approx(0.05) and f[59] == pytest.approx(0.5)
    assert f[69:] == [1.0] * 31 and all(a <= b for a, b in zip(f[:-1], f[1:], strict=True))
    assert schedule.fair_factor(0, config.get_config("smoke").diffusion) == 1.0  # default: on from step 1
    with pytest.raises(ValueError, match="fair_start"):
        schedule.fair_factor(0, config.get_config("smoke", {"diffusion.fair_start": 1.5}).diffusion)


def test_fst_distribution_of_unconditioned_samples():
    from bmglib.metrics import adherence

    t = adherence.fst_distribution(np.array([2, 2, 3, 6]))
    assert list(t["n"]) == [0, 2, 1, 0, 0, 1] and t["share"].sum() == pytest.approx(1.0)


def test_foreground_weight_emphasises_pixels_unlike_the_skin():
    x0 = torch.full((1, 3, 8, 8), 0.2)
    x0[:, :, 3:5, 3:5] = -0.8  # a dark lesion on light skin
    w = losses.foreground_weight(x0, 4.0)
    assert w.shape == (1, 1, 8, 8)
    assert torch.allclose(w[0, 0, 3, 3], torch.tensor(5.0)) and torch.allclose(w[0, 0, 0, 0], torch.tensor(1.0))
    pred, target = torch.zeros_like(x0), torch.zeros_like(x0)
    target[:, :, 3:5, 3:5] = 1.0  # an error on the lesion only
    assert losses.denoising_loss(pred, target, w) > losses.denoising_loss(pred, target)


def test_joint_pooled_vector_differs_per_label_pair():
    from bmglib.diffusion.model import LabelConditioner

    cond = LabelConditioner(8, pooled="joint")
    _, pooled = cond(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]))
    assert not torch.allclose(pooled[0], pooled[1]) and not torch.allclose(pooled[0], pooled[2])
    with pytest.raises(ValueError, match="pooled"):
        LabelConditioner(8, pooled="max")


def test_balance_scale_sets_the_fairness_gradient_to_a_share_of_the_denoising_one(tiny_synthetic, tmp_path):
    out = torch.randn(4, 3, 8, 8, requires_grad=True)
    den = (out ** 2).mean()
    fair = 100.0 * (out * torch.linspace(-1, 1, 8)).sum()
    s = losses.balance_scale(den, fair, out, 0.25)
    g_den, = torch.autograd.grad(den, out, retain_graph=True)
    g_fair, = torch.autograd.grad(s * fair, out)
    assert not s.requires_grad and g_fair.norm().item() == pytest.approx(0.25 * g_den.norm().item(), rel=1e-5)
    assert losses.balance_scale(den, (out * 0.0).sum(), out, 0.25).item() == 0.0
    pool, _ = tiny_synthetic
    run = train.train_diffusion(_cfg(**{"diffusion.lambda_kl": 5.0, "diffusion.fair_balance": 0.5}), pool,
                                tmp_path / "bal", estimator=_ita(pool), progress=False)
    active = run.log[run.log["n_fair"] > 0]
    assert len(active) and (active["fair_scale"] > 0).all() and np.isfinite(run.log["loss"]).all()
    assert (run.log.loc[run.log["n_fair"] == 0, "fair_scale"] == 0).all()


def test_generator_seeds_have_their_own_run_and_sample_folders(tmp_path, monkeypatch):
    from bmglib import paths

    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    assert paths.model_name("bmg") == "bmg" and paths.model_name("bmg", 2) == "bmg_seed2"
    assert paths.run_dir("quick", "bmg") == tmp_path / "runs" / "quick" / "bmg"  # seed 0: the folder as before
    assert paths.run_dir("quick", "bmg", 1) == tmp_path / "runs" / "quick" / "bmg_seed1"
    assert paths.samples_dir("quick", "standard", "eval", 3) == tmp_path / "samples" / "quick" / "standard_seed3" / "eval"
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="generator seed"):
            paths.model_name("bmg", bad)


def test_train_variant_trains_each_generator_seed_in_its_own_folder(tiny_synthetic, tmp_path, monkeypatch):
    from bmglib import paths

    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    pool, _ = tiny_synthetic
    meta = pool.assign(split="train")
    runs = {}
    for seed in (0, 1):
        cfg = config.with_variant(_cfg(**{"diffusion.steps": 2, "diffusion.seed": seed}), "no_fairloss")
        runs[seed], _ = train.train_variant(cfg, meta, progress=False)
        assert runs[seed].out_dir == paths.run_dir(cfg.profile, "no_fairloss", seed)
    w0, w1 = (load_file(runs[s].out_dir / "final" / "model.safetensors") for s in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # two generators, not one copied
