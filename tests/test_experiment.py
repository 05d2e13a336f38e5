"""``python -m bmglib.experiment``: the order of its stages and what it writes, with the expensive
calls replaced by recorders (each of them is tested on its own)."""

import pandas as pd
import pytest

from bmglib import experiment


class _Run:
    def __init__(self, steps):
        self.log = pd.DataFrame({"seconds": [0.5] * steps})
        self.resumed_from = steps


def test_experiment_trains_draws_then_pairs_each_generator_seed_in_turn(monkeypatch, tmp_path):
    calls = []
    meta = pd.DataFrame({"split": ["train", "val", "test"]})
    monkeypatch.setattr(experiment.prepare, "load_prepared", lambda profile, dataset: meta)
    monkeypatch.setattr(experiment.paths, "figures_dir", lambda profile: tmp_path)

    def train_variant(cfg, meta, progress):
        calls.append(("train", cfg.diffusion.variant, cfg.diffusion.seed))
        return _Run(cfg.diffusion.steps), {}

    def draw_set(cfg, train_df, purpose, plan, seed, trained=None, progress=True):
        calls.append(("draw", cfg.diffusion.variant, cfg.diffusion.seed, purpose))
        return pd.DataFrame({"x": range(4)})

    def run_protocol(profile, variants, seeds, train_df, val_df, test_df, cfg, out, progress):
        calls.append(("protocol", tuple(variants), tuple(seeds)))
        preds = pd.DataFrame({"arm": ["real", "real+bmg"], "classifier_seed": [0, 0]})
        return preds, pd.DataFrame({"rule": ["r"], "seeds": [len(seeds)]})

    monkeypatch.setattr(experiment.train, "train_variant", train_variant)
    monkeypatch.setattr(experiment.sample, "augmentation_plan", lambda cfg, df: None)
    monkeypatch.setattr(experiment.sample, "draw_set", draw_set)
    monkeypatch.setattr(experiment.downstream, "run_protocol", run_protocol)
    out = experiment.run("smoke", "bmg,standard", [0, 2], progress=False)
    assert calls == [("train", "bmg", 0), ("draw", "bmg", 0, "augment"), ("train", "standard", 0),
                     ("draw", "standard", 0, "augment"), ("protocol", ("bmg", "standard"), (0,)),
                     ("train", "bmg", 2), ("draw", "bmg", 2, "augment"), ("train", "standard", 2),
                     ("draw", "standard", 2, "augment"), ("protocol", ("bmg", "standard"), (0, 2))]
    assert out["seeds"].iloc[0] == 2
    stages = pd.read_csv(tmp_path / "experiment_stages.csv")
    assert list(stages["stage"]) == ["train", "augment"] * 2 + ["classifiers+rules"] + ["train", "augment"] * 2 + [
        "classifiers+rules"]
    assert stages["cached"].dropna().astype(bool).all() and (stages.loc[stages["stage"] == "augment", "n_images"] == 4).all()
    with pytest.raises(ValueError, match="lack 'bmg'"):
        experiment.run("smoke", "standard,no_fairloss", [0])
