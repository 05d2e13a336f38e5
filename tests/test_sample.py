"""The quota planner and sample sets on disk: the plan's arithmetic, the manifest, and resume."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from bmglib.config import get_config
from bmglib.data import schema
from bmglib.diffusion import balance, sample, schedule, train

# FST × lesion counts of a small real training table
REAL = {(1, "melanoma"): 40, (2, "melanoma"): 20, (5, "melanoma"): 3, (6, "melanoma"): 0,
        (1, "nevus"): 10, (4, "nevus"): 10, (6, "other"): 7}


def _table() -> pd.DataFrame:
    rows = [(f, les) for (f, les), n in REAL.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["fitzpatrick_scale", "lesion"])


def _cell(plan: pd.DataFrame, f: int, les: str) -> pd.Series:
    return plan[(plan["fitzpatrick_scale"] == f) & (plan["lesion"] == les)].iloc[0]


def test_top_up_fills_each_lesion_to_its_largest_fst_cell():
    plan = balance.plan_quota(_table(), "top_up", max_ratio=None)
    assert len(plan) == 24
    assert _cell(plan, 1, "melanoma")["n_synthetic"] == 0
    assert _cell(plan, 2, "melanoma")["n_synthetic"] == 20
    assert _cell(plan, 5, "melanoma")["n_synthetic"] == 37
    assert _cell(plan, 6, "melanoma")["n_synthetic"] == 40  # empty cell, no cap
    assert _cell(plan, 3, "nevus")["n_synthetic"] == 10
    assert _cell(plan, 6, "other")["n_synthetic"] == 0  # the largest "other" cell
    assert (plan[plan["lesion"] == "seborrheic_keratosis"]["n_synthetic"] == 0).all()


def test_ratio_cap_budget_and_lesion_filter():
    plan = balance.plan_quota(_table(), "top_up", max_ratio=10)
    row = _cell(plan, 5, "melanoma")
    assert row["n_synthetic"] == 30 and row["capped"] and row["target"] == 37
    assert _cell(plan, 6, "melanoma")["n_synthetic"] == 0  # 10 × 0 real
    assert plan["ratio"].max() <= 10
    full = plan["n_synthetic"].sum()
    small = balance.plan_quota(_table(), "top_up", max_ratio=10, budget=full // 2)
    assert small["n_synthetic"].sum() == full // 2
    assert (small["n_synthetic"] <= plan["n_synthetic"]).all() and small["scaled"].any()
    # the budget trims the largest top-ups first: the smallest planned cells are kept whole
    kept = plan["n_synthetic"] <= small["n_synthetic"].max() - 1
    assert (small.loc[kept, "n_synthetic"] == plan.loc[kept, "n_synthetic"]).all()
    assert small.loc[small["scaled"], "n_synthetic"].nunique() <= 2  # one ceiling (±1 remainder)
    only = balance.plan_quota(_table(), "top_up", max_ratio=None, lesions=("nevus",))
    assert set(only.loc[only["n_synthetic"] > 0, "lesion"]) == {"nevus"}


def test_fixed_total_and_per_cell():
    fixed = balance.plan_quota(_table(), "fixed_total", per_cell=25, max_ratio=None)
    assert _cell(fixed, 1, "melanoma")["n_synthetic"] == 0
    assert _cell(fixed, 2, "melanoma")["n_synthetic"] == 5
    assert _cell(fixed, 3, "other")["n_synthetic"] == 25
    even = balance.plan_quota(_table(), "per_cell", per_cell=4, max_ratio=None)
    assert (even["n_synthetic"] == 4).all()
    summary = balance.plan_summary(even)
    assert summary.loc["I", "melanoma"] == "40 + 4" and summary.loc["I", "all"] == "50 + 16"


@pytest.mark.parametrize("kw, match", [({"policy": "every"}, "policy"),
                                       ({"policy": "per_cell"}, "per_cell"),
                                       ({"max_ratio": -1}, "max_ratio"),
                                       ({"lesions": ("wart",)}, "wart")])
def test_plan_errors_name_the_parameter(kw, match):
    with pytest.raises(ValueError, match=match):
        balance.plan_quota(_table(), **kw)


class _Crash(torch.nn.Module):
    """Wraps a model and raises on the ``n``-th forward call (a run killed mid-way)."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, *args, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("killed")
        return self.model(*args, **kw)


class _Counting(torch.nn.Module):
    """Counts forward calls of the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kw):
        self.calls += 1
        return self.model(*args, **kw)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = get_config("smoke")
    torch.manual_seed(0)
    model = train.build_model(cfg.diffusion).eval()
    return model, schedule.model_scheduler(model, cfg.diffusion)


def _plan() -> pd.DataFrame:
    return balance.plan_quota(_table(), "per_cell", per_cell=1, max_ratio=None,
                              lesions=("melanoma", "nevus"))  # 12 images


def test_generate_to_disk_writes_a_schema_manifest(tiny_model, tmp_path):
    model, sched = tiny_model
    kw = dict(variant="bmg", fst_cond=True, model_id="m0", steps=2, guidance=0.5, batch_size=5,
              progress=False)
    df = sample.generate_to_disk(model, sched, _plan(), tmp_path / "s", **kw)
    assert len(df) == 12 and df["sample_index"].tolist() == list(range(12))
    assert df["md5hash"].is_unique and all(map(lambda p: pd.io.common.file_exists(p), df["image_path"]))
    assert set(df["lesion"]) == {"melanoma", "nevus"}
    assert (df["fitzpatrick_scale"] == df["requested_fst"]).all() and (df["plan_fst"] == df["requested_fst"]).all()
    assert sorted(df["fitzpatrick_scale"].unique()) == list(schema.FST_LEVELS)
    assert set(df["estimated_fst"]) <= set(schema.FST_LEVELS)
    # not conditioned on FST: the ITA estimate stands in, flagged
    un = sample.generate_to_disk(model, sched, _plan(), tmp_path / "u",
                                 **{**kw, "fst_cond": False, "variant": "standard"})
    assert (un["requested_fst"] == -1).all() and un["fst_estimated"].all()
    assert sorted(un["plan_fst"].unique()) == list(schema.FST_LEVELS)
    assert (un["fitzpatrick_scale"] == un["estimated_fst"]).all()


def test_sample_cached_reads_back_and_keys_on_every_argument(tiny_model, tmp_path):
    model, sched = tiny_model
    counted = _Counting(model)
    fst, les = torch.tensor([1, 6, 3]), torch.tensor([0, 1, 2])
    kw = dict(model_id="m0", cache_dir=tmp_path, steps=2, guidance=0.5, sampler="dpmpp", seed=1, size=32)
    a = sample.sample_cached(counted, sched, fst, les, **kw)
    calls = counted.calls
    assert calls > 0 and torch.equal(sample.sample_cached(counted, sched, fst, les, **kw), a)
    assert counted.calls == calls  # read back, not drawn
    for change in ({"seed": 2}, {"model_id": "m1"}, {"steps": 3}):
        sample.sample_cached(counted, sched, fst, les, **{**kw, **change})
    sample.sample_cached(counted, sched, None, les, **kw)
    assert len(list(tmp_path.glob("samples_*.pt"))) == 5


@pytest.mark.slow
def test_the_scheduler_key_is_the_same_in_every_process():
    """A second `make paper` runs in new processes: a key that follows string-hash order (as
    diffusers' ``_use_default_values`` does) would miss the cache every time."""
    import subprocess
    import sys

    code = ("from bmglib import config; from bmglib.diffusion import sample, schedule; "
            "print(config.cache_key(s=sample.scheduler_config(schedule.make_scheduler(config.get_config('smoke').diffusion))))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout.strip() for h in (1, 2, 3)}
    assert len(keys) == 1 and len(next(iter(keys))) == 16


def test_an_interrupted_run_resumes_without_redrawing(tiny_model, tmp_path):
    model, sched = tiny_model
    kw = dict(variant="bmg", fst_cond=True, model_id="m0", steps=2, guidance=0.5, batch_size=5,
              progress=False)
    whole = sample.generate_to_disk(model, sched, _plan(), tmp_path / "a", **kw)
    crash = _Crash(model, n=2 * 2 * 2 + 1)  # 2 steps × (cond + uncond) per batch: dies in batch 3
    with pytest.raises(KeyboardInterrupt):
        sample.generate_to_disk(crash, sched, _plan(), tmp_path / "b", **kw)
    partial = pd.read_csv(tmp_path / "b" / "manifest.csv")
    assert len(partial) == 10  # two finished batches kept
    counting = _Crash(model, n=10**9)
    resumed = sample.generate_to_disk(counting, sched, _plan(), tmp_path / "b", **kw)
    assert counting.calls == 2 * 2  # only the last batch was drawn
    assert resumed["md5hash"].tolist() == whole["md5hash"].tolist()
    again = _Crash(model, n=10**9)
    sample.generate_to_disk(again, sched, _plan(), tmp_path / "b", **kw)
    assert again.calls == 0
    with pytest.raises(FileExistsError, match="other settings"):
        sample.generate_to_disk(model, sched, _plan(), tmp_path / "b",
                                **{**kw, "guidance": 1.0}, on_change="error")


def test_lesion_adherence_table_counts_hits_per_fst_and_lesion():
    from bmglib.metrics import adherence

    requested = [0, 0, 1, 1, 2, 3, 3, 3]
    predicted = [0, 1, 1, 1, 2, 0, 3, 3]
    fst = [1, 1, 1, 1, 6, 6, 6, 6]
    t = adherence.lesion_adherence_table(requested, predicted, fst)
    assert t.loc[1, "n"] == 4 and t.loc[1, "all"] == 0.75 and t.loc[1, "melanoma"] == 0.5
    assert t.loc[6, "other"] == 2 / 3 and t.loc[6, "seborrheic_keratosis"] == 1.0
    assert pd.isna(t.loc[6, "nevus"]) and t.loc["overall", "all"] == 6 / 8


@pytest.mark.slow
def test_lesion_classifier_learns_lesions_from_real_images(tiny_synthetic):
    from bmglib import classifiers
    from bmglib.data.images import LESION_INDEX, load_tensor
    from bmglib.metrics import adherence

    pool, test = tiny_synthetic
    x = load_tensor(pool, 32, progress=False)
    y = torch.tensor([LESION_INDEX[v] for v in pool["lesion"]])
    model = classifiers.train_lesion_classifier(x, y, epochs=30, batch_size=16, width=16,
                                               progress=False)
    pred = adherence.predict_lesion(model, load_tensor(test, 32, progress=False))
    truth = [LESION_INDEX[v] for v in test["lesion"]]
    acc = adherence.lesion_adherence_table(truth, pred, test["fitzpatrick_scale"])
    assert acc.loc["overall", "all"] > 0.45  # chance is 0.25 (48 balanced test images)


def test_light_share_counts_ii_iii_among_v_vi_requests():
    from bmglib.metrics import adherence

    r = adherence.light_share([2, 3, 5, 6, 2, 2], [5, 5, 5, 6, 1, 2], n_boot=200)
    assert r["n"] == 4 and r["share"] == 0.5 and r["ci_low"] <= 0.5 <= r["ci_high"]
    u = adherence.light_share([2, 3, 5, 6], None, n_boot=200)
    assert u["n"] == 4 and u["share"] == 0.5 and "not requested" in u["over"]


def test_per_cell_subset_caps_every_cell():
    sub = balance.per_cell_subset(_table(), 5, seed=1)
    counts = sub.groupby(["fitzpatrick_scale", "lesion"]).size()
    assert counts[(1, "melanoma")] == 5 and counts[(5, "melanoma")] == 3 and len(sub) == 5 * 5 + 3
    assert sub.index.is_unique and sub.equals(balance.per_cell_subset(_table(), 5, seed=1))


def test_ita_ceiling_scores_the_real_labels_and_names_a_missing_column(tiny_synthetic):
    from bmglib.metrics import adherence

    _, test = tiny_synthetic
    t = adherence.ita_ceiling(test, size=512)  # read at 128 px, not 512
    assert t.loc["overall", "n"] == len(test) and list(t.index[:-1]) == [1, 2, 3, 4, 5, 6]
    assert t.loc["overall", "exact"] > 0.6 and t.loc["overall", "within_1"] > 0.9  # skin is drawn per FST
    with pytest.raises(KeyError, match="fitzpatrick_scale"):
        adherence.ita_ceiling(test.drop(columns="fitzpatrick_scale"), size=32)


def test_guidance_until_guides_the_leading_steps_only(tiny_model):
    """guidance_until=f: two UNet passes on the first ceil(f·steps) solver steps, one after; 0 is
    the unguided draw, 1 the default."""
    model, sched = tiny_model
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[2] is None))
    fst, lesion = torch.tensor([1, 5]), torch.tensor([0, 1])
    kw = dict(size=32, steps=4, guidance=0.5, sampler="dpmpp", seed=3)
    try:
        full = sample.sample(model, sched, fst, lesion, **kw)
        assert calls.count(True) == 4 and len(calls) == 8
        calls.clear()
        half = sample.sample(model, sched, fst, lesion, guidance_until=0.5, **kw)
        assert calls == [False, True, False, True, False, False]  # the unconditional pass on steps 1-2
        calls.clear()
        none = sample.sample(model, sched, fst, lesion, guidance_until=0, **kw)
        assert calls == [False] * 4
    finally:
        hook.remove()
    assert torch.equal(full, sample.sample(model, sched, fst, lesion, guidance_until=1, **kw))
    assert torch.equal(none, sample.sample(model, sched, fst, lesion, **{**kw, "guidance": 0}))
    assert not torch.equal(half, full) and not torch.equal(half, none)
    with pytest.raises(ValueError, match="guidance_until"):
        sample.sample(model, sched, fst, lesion, guidance_until=1.5, **kw)


def test_guidance_until_is_refused_for_stable_diffusion_not_ignored(tiny_model):
    _, sched = tiny_model

    class FakeSD(torch.nn.Module):
        def decode_latents(self, z):  # what marks a Stable Diffusion model for sample()
            return z

    with pytest.raises(NotImplementedError, match="guidance_until"):
        sample.sample(FakeSD(), sched, torch.tensor([1]), torch.tensor([0]), guidance_until=0.5)
