"""The per-variant measures notebooks 04 and 06 share (bmglib.metrics.sample_sets), on tiny
generated images, a tiny injected feature extractor and stub scoring models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bmglib import classifiers, config
from bmglib.data.images import LESION_INDEX
from bmglib.metrics import adherence, image, sample_sets


def tiny_extractor(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 299, 299) in [0, 255] → (B, 15): 2×2 colour means and channel SDs, plus noise-free
    detail, enough for FID to be finite."""
    x = x / 255
    small = F.adaptive_avg_pool2d(x, 32)
    hf = (small - F.avg_pool2d(small, 3, 1, 1, count_include_pad=False)).abs().mean((2, 3))
    return torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.std((2, 3)), hf], 1)


def _manifest(df: pd.DataFrame, conditioned: bool, seed: int) -> pd.DataFrame:
    """A sample-set manifest made of real rows: requested = plan FST; the ITA estimate hits the
    request for about two thirds of the rows."""
    rng = np.random.default_rng(seed)
    fst = df["fitzpatrick_scale"].to_numpy()
    est = np.where(rng.random(len(df)) < 0.67, fst, rng.integers(1, 7, len(df)))
    return df.assign(plan_fst=fst, requested_fst=fst if conditioned else -1, estimated_fst=est,
                     fst_estimated=not conditioned).reset_index(drop=True)


@pytest.fixture(scope="module")
def sets(tiny_synthetic):
    """(real training split, real test split, evaluation sets): the sets are made of the balanced
    generated images (8 per FST), the real splits of the pool (at least 2 per cell)."""
    pool, balanced = tiny_synthetic
    evalsets = {"bmg": _manifest(balanced, True, 0), "standard": _manifest(balanced, False, 1)}
    return pool, pool, evalsets


CFG = config.ImageMetricsConfig(real_per_cell=2, train_per_cell=3, n_boot=20)


def test_parse_describe_and_conditioned(sets):
    _, _, evalsets = sets
    assert sample_sets.parse_variants(" bmg,standard ,") == ["bmg", "standard"]
    assert sample_sets.parse_variants(("bmg", "")) == ["bmg"]
    d = sample_sets.describe(evalsets)
    assert d.loc["bmg", "images"] == 48 and d.loc["bmg", "FST conditioned"]
    assert not d.loc["standard", "FST conditioned"]


def test_missing_sets_name_the_notebook_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="03_balanced_sampling"):
        sample_sets.load("smoke", "bmg", "eval")


def test_image_quality_at_equal_n_with_ratios(sets):
    _, test, evalsets = sets
    q = sample_sets.image_quality(test, evalsets, CFG, reference="bmg", extractor=tiny_extractor,
                                  progress=False)
    assert q.n_fst == image.equal_n(q.reference["fitzpatrick_scale"], *[e["plan_fst"] for e in evalsets.values()])
    assert set(q.metrics["variant"]) == {"bmg", "standard"}
    assert (q.metrics.loc[q.metrics["level"] == "fst", "n_used"] == q.n_fst).all()
    assert list(q.spread.index) == ["bmg", "standard"]
    assert q.spread.loc["bmg", ["fid_var_ratio", "ratio_low", "ratio_high"]].tolist() == [1.0, 1.0, 1.0]
    r = q.spread.loc["standard"]
    assert r["ratio_low"] <= r["ratio_high"] and r["fid_var_ratio"] > 0
    plain = sample_sets.image_quality(test, evalsets, CFG, extractor=tiny_extractor, progress=False)
    assert "fid_var_ratio" not in plain.spread
    pd.testing.assert_frame_equal(plain.metrics, q.metrics)
    with pytest.raises(ValueError, match="reference variant 'no_resample'"):
        sample_sets.image_quality(test, evalsets, CFG, reference="no_resample", extractor=tiny_extractor)
    short = {**evalsets, "standard": evalsets["standard"].iloc[1:]}  # one FST I image fewer
    with pytest.raises(ValueError, match="unequal N across variants"):
        sample_sets.image_quality(test, short, CFG, extractor=tiny_extractor, progress=False)


def test_light_shares_follow_the_request_only_when_conditioned(sets):
    _, _, evalsets = sets
    t = sample_sets.light_shares(evalsets, seed=0)
    e = evalsets["bmg"]
    assert t.loc["bmg"].to_dict() == adherence.light_share(e["estimated_fst"].to_numpy(),
                                                           e["requested_fst"].to_numpy(), seed=0)
    assert t.loc["standard", "over"].startswith("all samples") and t.loc["standard", "n"] == 48
    assert len(sample_sets.plot_fst_confusions(evalsets)) == 1  # the conditioned set only


class _Fixed(torch.nn.Module):
    """A stub classifier: logits that always pick class ``k``."""

    def __init__(self, n_out: int, k: int):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(k), n_out).float()

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_adherence_shares(sets, monkeypatch):
    pool, test, evalsets = sets
    accuracy = pd.DataFrame({"n": [48], "all": [0.5]}, index=["overall"])
    ceiling = adherence.adherence_table(np.array([1, 2]), np.array([1, 3]))
    monkeypatch.setattr(classifiers, "get_lesion_classifier",
                        lambda *a, **k: (_Fixed(4, LESION_INDEX["nevus"]), {"accuracy": accuracy}))
    monkeypatch.setattr(classifiers, "get_fst_auditor", lambda *a, **k: (_Fixed(6, 4), {"ceiling": ceiling}))
    adh = sample_sets.adherence_shares(evalsets, pool, test, 16)
    bmg, std = adh.shares["bmg"], adh.shares["standard"]
    assert set(bmg) == set(sample_sets.ADHERENCE)
    assert std["fst"] is None and std["fst_audit_v_vi"] is None and std["light"]["n"] == 48
    e = evalsets["bmg"]
    assert bmg["fst"]["share"] == pytest.approx((e["estimated_fst"] == e["requested_fst"]).mean())
    assert bmg["fst_audit"]["share"] == pytest.approx((e["requested_fst"] == 5).mean())  # auditor says V
    assert bmg["fst_v_vi"]["n"] == e["requested_fst"].isin([5, 6]).sum()
    assert bmg["lesion"]["share"] == pytest.approx((e["lesion"] == "nevus").mean())
    table = adh.table()
    assert table.loc["standard", "fst"] == "—" and table.loc["bmg", "lesion"].endswith("(n=48)")
    assert "lesion classifier ceiling (real test split, n=48): 0.500" in adh.ceilings()


def test_memorisation_calibrates_on_the_real_reference(sets):
    pool, test, evalsets = sets
    q = sample_sets.image_quality(test, evalsets, CFG, extractor=tiny_extractor, progress=False)
    memo = sample_sets.memorisation(pool, q, evalsets, CFG, extractor=tiny_extractor, progress=False)
    assert len(memo.calibration.per_image) == len(q.reference)
    assert set(memo.per_variant) == set(evalsets) and set(memo.cells["variant"]) == set(evalsets)
    s = memo.summary()
    assert s.loc["bmg", "n"] == 48 and 0 <= s.loc["bmg", "near_copy_share"] <= 1
    copies = {"bmg": evalsets["bmg"]}  # the training images themselves: every one a near copy
    every = config.ImageMetricsConfig(real_per_cell=2, train_per_cell=100, n_boot=20)
    exact = sample_sets.image_quality(test, copies, every, extractor=tiny_extractor, progress=False)
    same = sample_sets.memorisation(evalsets["bmg"], exact, copies, every, extractor=tiny_extractor,
                                    progress=False)
    assert same.summary().loc["bmg", "median_ratio"] < 0.5
    assert (memo.rare_cells(3)["rare"]).all() and len(memo.rare_cells(3)) <= 3


def test_fidelity_diversity_compares_every_variant_at_one_n_per_level(sets):
    _, test, evalsets = sets
    cfg = config.ImageMetricsConfig(real_per_cell=4, train_per_cell=3, n_boot=20)  # 16 real per FST
    q = sample_sets.image_quality(test, evalsets, cfg, extractor=tiny_extractor, progress=False)
    t = sample_sets.fidelity_diversity(q, evalsets, k=3)
    assert set(t["variant"]) == {"bmg", "standard"} and set(t["level"]) == {"fst_group", "fst"}
    for _, g in t.groupby("level"):
        assert g["n_used"].nunique() == 1 and g["n_used"].iloc[0] > 3  # one N across variants and groups
    assert t[["precision", "recall", "coverage"]].stack().between(0, 1).all() and (t["density"] >= 0).all()
    # a variant whose images are the real reference's own scores as well as the reference can
    same = {"real": q.reference.assign(plan_fst=q.reference["fitzpatrick_scale"])}
    q_same = sample_sets.ImageQuality(q.reference, q.real_feats, {"real": q.real_feats}, q.metrics, q.spread, q.n_fst)
    own = sample_sets.fidelity_diversity(q_same, same, k=3)
    assert (own.loc[own["level"] == "fst_group", ["precision", "recall", "coverage"]] == 1).all().all()


def test_load_seeds_names_the_missing_generator_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"bmg_seed2/augment/manifest.csv not found.*03_balanced_sampling"):
        sample_sets.load_seeds("smoke", "bmg", "augment", "2")
    with pytest.raises(ValueError, match="no generator seeds"):
        sample_sets.load_seeds("smoke", "bmg", "augment", " ,")
