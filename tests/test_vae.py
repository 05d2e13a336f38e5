"""The VAE audit: config, mixes, training/caching, the Laplace score and its estimators, the
artefact masks and the evaluation statistics. Tiny in-code models; a few seconds each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bmglib import config
from bmglib.data import images, schema
from bmglib.vae import audit, laplace, model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# --- config and mixes ---------------------------------------------------------------------------


def test_vae_config_profiles_and_strict_overrides():
    assert config.get_config("smoke").vae.width < config.get_config("quick").vae.width
    assert config.get_config("quick", {"vae.epochs": 3}).vae.epochs == 3
    with pytest.raises(config.ConfigError, match="widht"):
        config.get_config("quick", {"vae.widht": 8})
    with pytest.raises(config.ConfigError, match="expects int"):
        config.get_config("quick", {"vae.epochs": "3"})
    with pytest.raises(config.ConfigError, match="unknown profile"):
        config.get_config("huge")


def _table(counts: dict[int, int]) -> pd.DataFrame:
    rows = [(f"{f}_{i}", f, schema.LESIONS[i % 4]) for f, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["md5hash", "fitzpatrick_scale", "lesion"])


NATURAL = {1: 300, 2: 480, 3: 330, 4: 280, 5: 150, 6: 60}


@pytest.mark.parametrize("share", [0.02, 0.10, 0.30])
def test_vvi_share_is_met_and_light_side_keeps_its_proportions(share):
    train = _table(NATURAL)
    s = model.mix_shares(train, f"vvi:{share}")
    assert s.sum() == pytest.approx(1.0)
    assert s.loc[[5, 6]].sum() == pytest.approx(share)
    assert s[5] / s[6] == pytest.approx(150 / 60)
    assert s[1] / s[2] == pytest.approx(300 / 480)
    mixed = model.mix_table(train, s, 1000, seed=0)
    assert len(mixed) == 1000
    assert mixed["fitzpatrick_scale"].isin([5, 6]).mean() == pytest.approx(share, abs=1e-3)


def test_mix_table_draws_without_replacement_until_an_fst_runs_out():
    train = _table(NATURAL)
    balanced = model.mix_table(train, model.mix_shares(train, "balanced"), 600, seed=1)
    per_fst = balanced.groupby("fitzpatrick_scale")["md5hash"]
    assert (per_fst.size() == 100).all()
    assert per_fst.nunique().to_dict() == {1: 100, 2: 100, 3: 100, 4: 100, 5: 100, 6: 60}
    natural = model.mix_table(train, model.mix_shares(train, "natural"), 800, seed=1)
    assert natural["md5hash"].is_unique  # every FST has enough rows
    again = model.mix_table(train, model.mix_shares(train, "natural"), 800, seed=1)
    pd.testing.assert_frame_equal(natural, again)


def test_impossible_mixes_are_errors():
    train = _table({1: 50, 2: 50})
    with pytest.raises(ValueError, match="V-VI share"):
        model.mix_shares(train, "vvi:0.1")
    with pytest.raises(ValueError, match="mix must be"):
        model.mix_shares(train, "dark")


def test_training_share_maps_each_image_to_its_fst_share():
    table = _table({1: 30, 6: 10})
    assert audit.training_share(table, np.array([6, 1, 3])).tolist() == [0.25, 0.75, 0.0]


# --- model, perceptual distance, training, caching -------------------------------------------------


def test_vae_shapes_and_kl():
    vae = model.ConvVAE(16, width=4, latent_dim=3)
    recon, mu, logvar = vae(torch.zeros(2, 3, 16, 16))
    assert recon.shape == (2, 3, 16, 16) and mu.shape == logvar.shape == (2, 3)
    assert model.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [0.0, 0.0]
    assert (model.kl_divergence(torch.ones(2, 3), torch.zeros(2, 3)) > 0).all()
    with pytest.raises(ValueError, match="power of two"):
        model.ConvVAE(24)


def test_feature_distance_is_zero_on_identity_and_differentiable():
    torch.manual_seed(0)
    from bmglib.classifiers import SmallCNN

    dist = model.FeatureDistance(model.CNNFeatures(SmallCNN(4)))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert dist(x, x).abs().max() < 1e-6
    d = dist(y, x)
    assert d.shape == (3,) and (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    dist.train()  # the frozen features keep BatchNorm in eval mode
    assert not dist.features.net.training


def _blobs(n: int, size: int, seed: int, dark: float = 0.0, patch: float = 0.0):
    """Light (or, with probability ``dark``, dark) backgrounds with a darker disc; with
    probability ``patch`` a saturated green square at pixels [1:6, 1:6]. (N,3,S,S) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    is_dark = torch.rand(n, generator=g) < dark
    base = torch.where(is_dark[:, None], torch.tensor([-0.4, -0.6, -0.7]), torch.tensor([0.6, 0.2, 0.0]))
    base = base[:, :, None, None] + 0.08 * torch.randn(n, 3, 1, 1, generator=g)
    c = 0.5 * (torch.rand(n, 2, generator=g) - 0.5)
    r = 0.25 + 0.2 * torch.rand(n, generator=g)
    disc = ((xx - c[:, :1, None]) ** 2 + (yy - c[:, 1:, None]) ** 2 < r[:, None, None] ** 2)
    x = (base - 0.5 * disc[:, None].float()).clamp(-1, 1)
    has_patch = torch.rand(n, generator=g) < patch
    x[has_patch, :, 1:6, 1:6] = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    return x, is_dark.numpy(), has_patch.numpy()


TINY = config.VAEConfig(image_size=16, width=8, latent_dim=16, epochs=100, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def trained():
    """A tiny VAE trained on 384 images: 5% dark backgrounds, 15% with a green patch."""
    x, _, _ = _blobs(384, 16, seed=0, dark=0.05, patch=0.15)
    vae, history = model.train_vae(x, TINY, None, seed=0, progress=False)
    return vae, history, x


def test_training_lowers_the_loss(trained):
    _, history, _ = trained
    assert history["mse"].iloc[-1] < 0.3 * history["mse"].iloc[0]


def test_get_vae_caches_by_inputs(tmp_path, monkeypatch, tiny_synthetic):
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    pool, _ = tiny_synthetic
    cfg = config.VAEConfig(image_size=32, width=4, latent_dim=4, n_train=48, epochs=1)
    table = model.mix_table(pool, model.mix_shares(pool, "balanced"), cfg.n_train)
    first = model.get_vae(table, cfg, None, "", progress=False)
    assert (tmp_path / "cache" / f"vae_{first.key}" / "provenance.json").exists()
    assert first.stamp["n_images"] == 48
    again = model.get_vae(table, cfg, None, "", progress=False)
    assert again.key == first.key
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = model.get_vae(table, config.VAEConfig(**{**vars(cfg), "beta": 0.5}), None, "", progress=False)
    assert other.key != first.key


# --- the Laplace score: estimators against exact computations --------------------------------------


@pytest.fixture(scope="module")
def tiny_laplace():
    torch.manual_seed(0)
    vae = model.ConvVAE(8, width=4, latent_dim=3).eval()
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    return vae, x


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_hutchinson_trace_matches_exact_within_three_standard_errors(tiny_laplace, n_layers):
    vae, x = tiny_laplace
    post = laplace.fit_laplace(vae, x, n_data=100, n_layers=n_layers, n_probes=4,
                                   progress=False)
    est = laplace.predictive_variance(vae, post, x, n_probes=64, seed=0)
    exact = laplace.exact_predictive_variance(vae, post, x)
    assert (est.se > 0).all()
    assert np.all(np.abs(est.score - exact.score) <= 3 * est.se), (est.score, exact.score, est.se)
    # the per-pixel map is unbiased too: with many probes it converges on the exact diagonal
    many = laplace.predictive_variance(vae, post, x, n_probes=2000, seed=1)
    rel = (many.maps - exact.maps).abs().mean() / exact.maps.mean()
    assert rel < 0.05


def test_standard_error_shrinks_like_one_over_sqrt_probes(tiny_laplace):
    vae, x = tiny_laplace
    post = laplace.fit_laplace(vae, x, n_data=100, n_layers=0, n_probes=4, progress=False)
    se16 = laplace.predictive_variance(vae, post, x, n_probes=16, seed=0).se
    se256 = laplace.predictive_variance(vae, post, x, n_probes=256, seed=0).se
    assert np.median(se16 / se256) == pytest.approx(4.0, rel=0.35)


def test_ggn_diagonal_estimate_is_unbiased(tiny_laplace):
    vae, x = tiny_laplace
    head, tail = laplace.split_decoder(vae.decoder, 2)
    params = {k: v.detach() for k, v in tail.named_parameters()}
    with torch.no_grad():
        h = head(vae.encode(x)[0])
    exact = laplace.exact_ggn_diagonal(tail, params, h)
    gen = torch.Generator().manual_seed(0)
    draws = [laplace.ggn_diagonal(tail, params, h, 1, gen) for _ in range(400)]
    for k, ex in exact.items():
        d = torch.stack([dr[k] for dr in draws])
        z = (d.mean(0) - ex) / (d.std(0) / 20 + 1e-12)
        assert (z.abs() <= 3).float().mean() >= 0.95, k


def test_score_is_deterministic_for_a_seed_and_independent_of_batching(tiny_laplace):
    vae, x = tiny_laplace
    post = laplace.fit_laplace(vae, x, n_data=100, n_layers=0, n_probes=4, seed=3,
                                   progress=False)
    a = laplace.predictive_variance(vae, post, x, n_probes=8, seed=5)
    b = laplace.predictive_variance(vae, post, x, n_probes=8, seed=5, batch_size=2)
    c = laplace.predictive_variance(vae, post, x, n_probes=8, seed=6)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5)
    torch.testing.assert_close(a.maps, b.maps)
    assert not np.allclose(a.score, c.score)
    again = laplace.fit_laplace(vae, x, n_data=100, n_layers=0, n_probes=4, seed=3,
                                    progress=False)
    for k in post.variance:
        assert torch.equal(post.variance[k], again.variance[k])


# --- the Laplace score: behaviour on a trained model ---------------------------------------------


def test_under_represented_images_score_higher(trained):
    vae, _, x = trained
    post = laplace.fit_laplace(vae, x, len(x), n_layers=0, n_probes=8, progress=False)
    xt, dark, _ = _blobs(200, 16, seed=1, dark=0.5)
    score = laplace.predictive_variance(vae, post, xt, n_probes=16, seed=0).score
    assert score[dark].mean() > 2 * score[~dark].mean()
    assert roc_auc_score(dark, score) > 0.9


def test_pixel_map_lights_up_on_a_rare_artefact_the_decoder_draws(trained):
    vae, _, x = trained
    post = laplace.fit_laplace(vae, x, len(x), n_layers=0, n_probes=8, progress=False)
    xt, _, patch = _blobs(200, 16, seed=2, patch=0.5)
    maps = laplace.predictive_variance(vae, post, xt, n_probes=16, seed=0).maps.numpy()
    region = maps[:, 1:6, 1:6].mean((1, 2))
    assert region[patch].mean() > 2 * region[~patch].mean()
    mask = np.zeros(maps.shape, bool)
    mask[:, 1:6, 1:6] = True
    assert laplace.pixel_auroc(maps[patch], mask[patch], n_boot=50)["auroc"] > 0.75


# --- artefact masks and statistics ------------------------------------------------------------------


def test_artefact_masks_re_render_the_stored_images(tiny_synthetic):
    pool, _ = tiny_synthetic
    masks = audit.artefact_masks(pool, 32, verify=len(pool))
    for kind in audit.ARTEFACTS:
        assert (masks[kind].any((1, 2)) == pool[kind].to_numpy()).all(), kind
    assert (masks["any"] == masks["ruler"] | masks["ink"] | masks["patch"]).all()
    picks = audit.pick_examples(masks)
    assert len(set(picks)) == len(picks) and all(masks["any"][i].any() for i in picks)
    small = audit.artefact_masks(pool, 16)["any"]
    assert small.shape == (len(pool), 16, 16)
    tampered = pool.head(2).assign(seed=pool["seed"].head(2) + 1)
    with pytest.raises(ValueError, match="differs from the stored PNG"):
        audit.artefact_masks(tampered, 32, verify=1)


def test_pixel_auroc_matches_sklearn_and_its_extremes():
    rng = np.random.default_rng(0)
    masks = rng.random((20, 8, 8)) < 0.2
    maps = rng.random((20, 8, 8)) + 0.5 * masks
    res = laplace.pixel_auroc(maps, masks, n_boot=200)
    assert res["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=2e-3)
    assert res["ci_low"] < res["auroc"] < res["ci_high"]
    assert laplace.pixel_auroc(masks.astype(float), masks, n_boot=10)["auroc"] == 1.0
    assert laplace.pixel_auroc(-maps, masks, n_boot=10)["auroc"] < 0.5


def test_spearman_and_group_statistics():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    r = laplace.spearman_ci(a, a + 0.3 * rng.random(200), n_boot=200)
    assert r["ci_low"] < r["rho"] < r["ci_high"] and r["rho"] > 0.8 and r["n"] == 200
    fst = np.repeat(np.arange(1, 7), 30)
    values = fst * 1.0 + rng.normal(0, 0.5, len(fst))
    t = laplace.group_means(values, fst, n_boot=200)
    assert t.loc["VI", "n"] == 30 and t.loc["I-III", "n"] == 90 and t.loc["overall", "n"] == 180
    assert (t["ci_low"] <= t["mean"]).all() and (t["mean"] <= t["ci_high"]).all()
    gap = laplace.mean_gap(values, fst, a=(4, 5, 6), b=(1, 2, 3), n_boot=200)
    assert gap["gap"] == pytest.approx(3.0, abs=0.3) and gap["ci_low"] > 0 and gap["n_a"] == 90
    light_minus_dark = laplace.mean_gap(values, fst, n_boot=200)  # the default: I–III − IV–VI
    assert light_minus_dark["gap"] == pytest.approx(-gap["gap"]) and light_minus_dark["ci_high"] < 0


def test_isic_images_get_finite_scores(shared_real):
    from bmglib.data import sources

    isic = sources.load_source("isic2017", shared_real / "isic2017" / "labels.csv").head(4)
    x = images.load_tensor(isic, 16, progress=False)
    torch.manual_seed(0)
    vae = model.ConvVAE(16, width=4, latent_dim=3).eval()
    post = laplace.fit_laplace(vae, x, n_data=4, n_layers=0, n_probes=2, progress=False)
    pv = laplace.predictive_variance(vae, post, x, n_probes=4)
    assert np.isfinite(pv.score).all() and pv.maps.shape == (4, 16, 16)
