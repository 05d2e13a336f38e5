"""The calibrated fairness target, its matrix from real images, the stored-config rules that keep a
changed default from passing an old model off as new, and the independent FST auditor."""


import numpy as np
import pandas as pd
import pytest
import torch

from bmglib import classifiers, config, skintone
from bmglib.data import synthetic
from bmglib.diffusion import losses, train
from bmglib.metrics import adherence

#: a made-up estimator's view of real skin: row f-1 = its mean output on real images of FST f
M = torch.tensor([[.90, .10, 0, 0, 0, 0], [.05, .90, .05, 0, 0, 0], [0, .05, .80, .15, 0, 0],
                  [0, 0, .10, .80, .10, 0], [0, 0, 0, .15, .80, .05], [0, 0, 0, 0, .05, .95]]).clamp_min(1e-6)
M = M / M.sum(1, keepdim=True)


class LookupEstimator(torch.nn.Module):
    """Reads a row index k from pixel (0, 0) of channel 0 (k/10) and returns M[k]."""

    def forward(self, x):
        return M[(x[:, 0, 0, 0] * 10).round().long()]


def _coded(rows):
    x = torch.zeros(len(rows), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(rows, dtype=torch.float) / 10
    return x


def test_calibrated_target_is_met_by_images_seen_as_real_ones_and_one_hot_is_not():
    req = torch.tensor([1, 2, 3, 4, 5, 6, 5, 5])
    t = torch.zeros(len(req), dtype=torch.long)
    real_like = _coded((req - 1).tolist())  # each estimated exactly as real images of its type
    cal = losses.fairness_terms(real_like, t, LookupEstimator(), 300, req, target_probs=M)
    assert cal.kl.item() == pytest.approx(0, abs=1e-6) and cal.ce.item() == pytest.approx(0, abs=1e-6)
    hot = losses.fairness_terms(real_like, t, LookupEstimator(), 300, req)
    assert hot.ce.item() > 0.1 and hot.kl.item() > 0.01  # one-hot keeps pushing past real skin
    # the V requests drawn like real VI skin: the calibrated loss is no longer zero
    darker = _coded([0, 1, 2, 3, 5, 5, 5, 5])
    off = losses.fairness_terms(darker, t, LookupEstimator(), 300, req, target_probs=M)
    assert off.kl.item() > 0.1 and off.ce.item() > 1.0
    # an identity matrix is the one-hot target
    eye = losses.fairness_terms(darker, t, LookupEstimator(), 300, req, target_probs=torch.eye(6))
    ref = losses.fairness_terms(darker, t, LookupEstimator(), 300, req)
    assert eye.kl.item() == pytest.approx(ref.kl.item()) and eye.ce.item() == pytest.approx(ref.ce.item())
    # not conditioned: the target is a uniform request seen through the matrix
    uni = losses.fairness_terms(real_like, t, LookupEstimator(), 300, None, target_probs=M)
    assert torch.allclose(uni.target, M.mean(0)) and uni.ce.item() == 0


def test_real_fst_probs_is_the_mean_output_per_type_and_names_a_missing_type():
    fsts = [1, 2, 3, 4, 5, 6] * 2
    arr = np.stack([synthetic.render(f, "nevus", 32, i).image for i, f in enumerate(fsts)])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    est = skintone.ITAEstimator()
    probs = skintone.real_fst_probs(est, x, torch.tensor(fsts))
    assert probs.shape == (6, 6) and torch.allclose(probs.sum(1), torch.ones(6))
    with torch.no_grad():
        expected = est(x[torch.tensor(fsts) == 3]).mean(0)
    assert torch.allclose(probs[2], expected.clamp_min(1e-6) / expected.clamp_min(1e-6).sum(), atol=1e-6)
    assert (probs.argmax(1) == torch.arange(6)).sum() >= 5  # ITA reads rendered skin mostly right
    keep = torch.tensor(fsts) != 6
    with pytest.warns(UserWarning, match="FST 6"):
        partial = skintone.real_fst_probs(est, x[keep], torch.tensor(fsts)[keep])
    assert partial[5].argmax() == 5 and partial[5, 5] > 0.99


def _cfg(**over):
    base = {"diffusion.steps": 2, "diffusion.batch_size": 4, "diffusion.checkpoint_every": 2,
            "diffusion.base_channels": 16, "diffusion.lambda_kl": 1.0}
    return config.get_config("smoke", {**base, **over})


def test_training_with_the_calibrated_target_and_its_errors(tiny_synthetic, tmp_path):
    pool, _ = tiny_synthetic
    est = skintone.ITAEstimator()
    with pytest.raises(ValueError, match="real_probs"):
        train.train_diffusion(_cfg(**{"diffusion.fair_target": "calibrated"}), pool, tmp_path / "a",
                              estimator=est, progress=False)
    with pytest.raises(ValueError, match="fair_target must be"):
        train.train_diffusion(_cfg(**{"diffusion.fair_target": "onehot"}), pool, tmp_path / "b",
                              estimator=est, progress=False)
    est.real_probs = M
    cal = train.train_diffusion(_cfg(**{"diffusion.fair_target": "calibrated", "diffusion.fair_balance": 0.0}),
                                pool, tmp_path / "c", estimator=est, progress=False)
    req = train.train_diffusion(_cfg(**{"diffusion.fair_target": "requested", "diffusion.fair_balance": 0.0}),
                                pool, tmp_path / "d",
                                estimator=est, progress=False)
    assert cal.log["n_fair"].sum() > 0
    assert not np.allclose(cal.log["fair_kl"] + cal.log["fair_ce"], req.log["fair_kl"] + req.log["fair_ce"])


def test_a_stored_config_without_a_new_key_takes_its_legacy_value():
    raw = config.to_dict(config.get_config("quick", {"diffusion.fair_target": "calibrated"}))
    del raw["diffusion"]["fair_target"]
    assert config.from_dict(raw).diffusion.fair_target == config.LEGACY["diffusion.fair_target"] == "requested"
    with pytest.raises(config.ConfigError, match="no_such_key"):
        config.from_dict({**raw, "diffusion": {**raw["diffusion"], "no_such_key": 1}})


def test_model_identity_ignores_fairness_settings_only_when_the_loss_is_off():
    def ident(variant, **over):
        return train.model_identity(config.with_variant(config.get_config("quick", over), variant))

    for v in ("standard", "no_fairloss"):
        assert ident(v) == ident(v, **{"diffusion.fair_target": "requested", "diffusion.t_fair": 200})
        assert ident(v) != ident(v, **{"diffusion.steps": 10})
    assert ident("bmg") != ident("bmg", **{"diffusion.fair_target": "requested"})
    assert ident("no_resample") != ident("no_resample", **{"diffusion.t_fair": 200})


def test_fst_auditor_learns_skin_type_caches_and_names_a_missing_column(tiny_synthetic, monkeypatch, tmp_path):
    pool, test = tiny_synthetic
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    model, rep = classifiers.get_fst_auditor(pool, test, 32, epochs=15, progress=False)
    ceiling = rep["ceiling"]
    assert list(ceiling.index) == [1, 2, 3, 4, 5, 6, "overall"] and ceiling.loc["overall", "n"] == len(test)
    assert ceiling.loc["overall", "exact"] > 0.5  # 6 classes: chance 1/6
    again, rep2 = classifiers.get_fst_auditor(pool, test, 32, epochs=15, progress=False)  # from the cache
    pd.testing.assert_frame_equal(rep2["ceiling"], ceiling, check_dtype=False)
    from bmglib.data.images import load_tensor
    x = load_tensor(test, 32, progress=False)
    assert (adherence.audit_fst(again, x) == adherence.audit_fst(model, x)).all()
    req = test["fitzpatrick_scale"].to_numpy()
    default, default_rep = classifiers.get_fst_auditor(pool, test, 32, progress=False)
    both, audited = adherence.fst_adherence(req, req, x, default, default_rep["ceiling"], test, 32)  # "ITA" = truth here
    assert (audited == adherence.audit_fst(default, x)).all()
    assert both[("ITA", "exact")].eq(1.0).all()
    assert both.loc["overall", ("auditor CNN", "exact")] == default_rep["ceiling"].loc["overall", "exact"]
    assert {"real_exact", "real_n"} <= set(both["auditor CNN"].columns)
    with pytest.raises(KeyError, match="test table has no 'fitzpatrick_scale'"):
        classifiers.get_fst_auditor(pool, test.drop(columns="fitzpatrick_scale"), 32, progress=False)
