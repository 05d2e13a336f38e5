"""Releases (issue 17): the imagefolder loads with `datasets`, the cards carry the artifacts'
numbers, the generator reloads from its folder alone and samples the same images, and bad input
fails naming what is missing, with no partial release left behind.

A tiny pipeline (prepared table, 4 training steps, 12 + 24 sampled images) in a temporary
``BMG_DATA_ROOT`` stands in for notebooks 01–03; notebook 04's CSVs are written by hand.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
import yaml

from bmglib import config, paths
from bmglib.data import schema
from bmglib.diffusion import balance, sample, schedule, train
from bmglib.release import build, evidence, load_generator, make_release

PROFILE, VARIANT = "smoke", "bmg"
SAMPLING = dict(size=32, steps=2, guidance=0.5, sampler="dpmpp", batch_size=8)


def _cfg():
    over = {"diffusion.steps": 4, "diffusion.batch_size": 4, "diffusion.checkpoint_every": 2,
            "diffusion.base_channels": 16, "diffusion.lambda_kl": 0.0, "diffusion.lambda_ce": 0.0}
    return config.with_variant(config.get_config(PROFILE, over), VARIANT)


def _fig04(folder, test_meta: pd.DataFrame):
    """Notebook 04's three CSVs for ``bmg`` (and a ``standard`` row that must be ignored)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for level, groups in (("fst", [schema.FST_ROMAN[f] for f in schema.FST_LEVELS]),
                          ("fst_group", list(schema.FST_GROUPS)), ("overall", ["overall"])):
        for i, g in enumerate(groups):
            n = {"fst": 4, "fst_group": 12, "overall": 24}[level]
            rows.append({"level": level, "group": g, "n_real": n, "n_synth": n, "n_used": n,
                         "fid": 10.0 + i, "fid_boot_low": 9.5 + i, "fid_boot_high": 12.0 + i,
                         "kid": 0.0101 * (i + 1), "kid_subset_sd": 0.0, "kid_ci_low": 0.001,
                         "kid_ci_high": 0.05, "variant": VARIANT})
    metrics = pd.DataFrame(rows)
    other = metrics.assign(variant="standard", fid=999.0)
    pd.concat([metrics, other]).to_csv(folder / "04_image_metrics.csv", index=False)
    cells = test_meta.groupby(["plan_fst", "lesion"]).size().rename("n_synth").reset_index()
    cells = cells.rename(columns={"plan_fst": "fitzpatrick_scale"}).assign(
        variant=VARIANT, n_near_copy=lambda c: (c["fitzpatrick_scale"] == 6) & (c["lesion"] == "melanoma"),
        median_ratio=0.9, n_train=5, rare=lambda c: c["fitzpatrick_scale"] >= 5)
    cells["n_near_copy"] = cells["n_near_copy"].astype(int)
    cells["near_copy_share"] = cells["n_near_copy"] / cells["n_synth"]
    cells.to_csv(folder / "04_memorisation_cells.csv", index=False)
    n56 = int(test_meta["requested_fst"].isin((5, 6)).sum())
    pd.DataFrame([{"variant": VARIANT, "n": n56, "share": 0.125, "ci_low": 0.0, "ci_high": 0.375,
                   "over": "samples requested as V-VI"}]).to_csv(folder / "04_light_share.csv", index=False)


@pytest.fixture(scope="module")
def root(tiny_synthetic, tmp_path_factory):
    """A data root holding what notebooks 01 (prepared table), 02 (a trained bmg) and 03 (its
    augmentation and evaluation sets) write."""
    pool, test = tiny_synthetic
    root = tmp_path_factory.mktemp("bmg_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BMG_DATA_ROOT", str(root))
        cfg = _cfg()
        meta = pd.concat([pool.assign(split="train"), test.assign(split="test")], ignore_index=True)
        processed = paths.processed_dir(PROFILE, "synthetic")
        processed.mkdir(parents=True)
        meta.to_csv(processed / "metadata.csv", index=False)
        config.write_provenance(processed / "provenance.json",
                                config.provenance(cfg, config.hash_table(meta), seed=0, dataset="synthetic"))
        train_df = meta[meta["split"] == "train"]
        run_dir = paths.run_dir(PROFILE, VARIANT)
        train.train_diffusion(cfg, train_df, run_dir, progress=False)
        model, run_cfg = train.load_trained(run_dir)
        sched = schedule.model_scheduler(model, run_cfg.diffusion)
        model_id = config.file_digest(run_dir / "final" / "model.safetensors")
        kw = dict(variant=VARIANT, fst_cond=True, model_id=model_id, progress=False, **SAMPLING,
                  provenance=config.provenance(cfg, config.hash_table(train_df), seed=0, model_id=model_id))
        aug = balance.plan_quota(train_df, "per_cell", per_cell=1, max_ratio=None, lesions=("melanoma", "nevus"))
        sample.generate_to_disk(model, sched, aug, paths.samples_dir(PROFILE, VARIANT, "augment"), seed=0, **kw)
        ev = balance.plan_quota(train_df, "per_cell", per_cell=1, max_ratio=None)
        sample.generate_to_disk(model, sched, ev, paths.samples_dir(PROFILE, VARIANT, "eval"), seed=1, **kw)
        yield root


@pytest.fixture(scope="module")
def release(root, tmp_path_factory):
    figures = tmp_path_factory.mktemp("figures")
    _fig04(figures, sample.load_manifest(paths.samples_dir(PROFILE, VARIANT, "eval")))
    return make_release(PROFILE, VARIANT, figures=figures, progress=False)


def test_release_loads_with_datasets_with_its_columns_and_counts(release, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `release` extra (make venv installs it)")
    assert release == paths.release_dir(PROFILE, VARIANT)
    assert sorted(p.name for p in release.parent.iterdir()) == [release.name]  # no temporary left
    ds = datasets.load_dataset("imagefolder", data_dir=str(release / "dataset"), cache_dir=str(tmp_path))
    assert {k: len(v) for k, v in ds.items()} == {"train": 12, "test": 24}
    assert ds["train"].column_names == ["image", *[c for c in evidence.FIELDS if c != "file_name"]]
    test = ds["test"]
    assert sorted(test["requested_fst"]) == sorted(list(schema.FST_LEVELS) * 4)
    assert set(ds["train"]["lesion"]) == {"melanoma", "nevus"} and set(test["generator_id"]) == {
        config.file_digest(paths.run_dir(PROFILE, VARIANT) / "final" / "model.safetensors")}
    assert test[0]["image"].size == (32, 32) and set(test["fst_auditor"]) <= set(schema.FST_LEVELS)
    manifest = sample.load_manifest(paths.samples_dir(PROFILE, VARIANT, "eval"))
    meta = pd.read_csv(release / "dataset" / "test" / "metadata.csv")
    assert meta["fst_ita"].tolist() == manifest["estimated_fst"].tolist()
    assert meta["md5hash"].tolist() == manifest["md5hash"].tolist()
    from bmglib.skintone import ita_to_fst  # the ITA angle and its FST agree
    assert ita_to_fst(meta["ita"].to_numpy()).tolist() == meta["fst_ita"].tolist()


def _header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_dataset_card_has_the_hub_header_and_numbers_from_the_artifacts(release):
    card = (release / "dataset" / "README.md").read_text()
    head = _header(card)
    assert head["license"] == "mit"  # trained on the procedural data only (source "synthetic")
    assert head["size_categories"] == ["n<1K"] and "image-classification" in head["task_categories"]
    assert head["configs"][0]["data_files"] == [{"split": "train", "path": "train/*"},
                                                {"split": "test", "path": "test/*"}]
    assert "{{" not in card and "Not for clinical use" in card
    per_fst = card.split("## Per skin type", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in per_fst.splitlines() if line.startswith("| ")}
    assert "10.0 [9.5, 12.0]" in rows["I"] and "15.0 [14.5, 17.0]" in rows["VI"]  # 04's bmg rows
    assert "999.0" not in per_fst and "999 [" not in per_fst  # not the standard variant's FID (a digest may hold 999)
    assert "0.061 [0.001, 0.050]" in rows["VI"] and "| 4 |" in rows["VI"]
    assert "1/4" in rows["VI"] and "0/4" in rows["I"] and "1/24" in rows["overall"]
    assert "0.125 [0.000, 0.375]" in card and "0.5 × the median" in card
    assert "not computed" not in per_fst
    # composition of the test split: one image per FST × lesion cell
    comp = card.split("`test` (rows", 1)[1]
    assert "| I | 1 | 1 | 1 | 1 | 4 |" in comp and "| all | 6 | 6 | 6 | 6 | 24 |" in comp
    run = config.from_dict(__import__("json").loads(
        (paths.run_dir(PROFILE, VARIANT) / "final" / "provenance.json").read_text())["config"])
    assert f"trained for {run.diffusion.steps} steps" in card
    assert "Datasheet" in card and "### Motivation" in card and "### Maintenance" in card


def test_the_cli_releases_and_says_not_computed_without_notebook_04(root, tmp_path, capsys):
    build.main(["--variant", VARIANT, "--profile", PROFILE, "--out", str(tmp_path / "r"),
                "--figures", str(tmp_path / "no_figures")])
    printed = capsys.readouterr().out
    per_fst = (tmp_path / "r" / "dataset" / "README.md").read_text().split("## Per skin type", 1)[1]
    per_fst = per_fst.split("\n## ", 1)[0]
    assert per_fst.strip() in printed  # the CLI prints the card's per-FST section
    assert "FID/KID: not computed: run notebook 04" in per_fst
    assert "Memorisation: not computed: run notebook 04" in per_fst
    assert "FST by ITA (real)" in per_fst  # computed from the released metadata


def test_generator_reloads_from_its_folder_alone_and_samples_the_same_images(release, tmp_path, monkeypatch):
    folder = shutil.copytree(release / "generator", tmp_path / "gen")
    head = _header((folder / "README.md").read_text())
    assert head["library_name"] == "diffusers" and head["license"] == "mit"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (folder / "scheduler" / "scheduler_config.json").exists()
    original, cfg = train.load_trained(paths.run_dir(PROFILE, VARIANT))
    sched = schedule.model_scheduler(original, cfg.diffusion)
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path / "empty"))  # no run, no config to lean on
    gen = load_generator(folder)
    assert gen.sampling == {"sampler": "dpmpp", "steps": 2, "guidance": 0.5, "image_size": 32}
    x = gen.sample(fst=[5, 6, 1], lesion=["melanoma", "nevus", "other"], seed=7)
    ref = sample.sample(original, sched, torch.tensor([5, 6, 1]), torch.tensor([0, 1, 3]), size=32,
                        steps=2, guidance=0.5, sampler="dpmpp", seed=7)
    assert x.shape == (3, 3, 32, 32) and torch.equal(x, ref)
    # another batch size: the same noise, but CPU conv kernels may sum in another order (seen: 1e-4)
    assert torch.allclose(gen.sample(fst=5, lesion="melanoma", n=2, seed=7)[0], ref[0], rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="fst must be in"):
        gen.sample(fst=[7], lesion=["nevus"])
    with pytest.raises(ValueError, match="wart"):
        gen.sample(fst=[2], lesion=["wart"])


def _copy_root(root, tmp_path, monkeypatch):
    new = shutil.copytree(root, tmp_path / "data", ignore=shutil.ignore_patterns("releases"))
    monkeypatch.setenv("BMG_DATA_ROOT", str(new))
    return new


def _no_release_left(variant=VARIANT):
    releases = paths.data_root() / "releases"
    assert not paths.release_dir(PROFILE, variant).exists()
    assert not releases.exists() or not any(releases.iterdir())


def _drop_eval(s):
    shutil.rmtree(s)


def _delete_png(s):
    (s / "images" / f"{VARIANT}_000003.png").unlink()


def _extra_png(s):
    shutil.copyfile(s / "images" / f"{VARIANT}_000003.png", s / "images" / "stray.png")


def _drop_row(s):  # an unfinished set: the last image and its row are gone
    m = pd.read_csv(s / "manifest.csv")
    (s / m["image_path"].iloc[-1]).unlink()
    m.iloc[:-1].to_csv(s / "manifest.csv", index=False)


def _change_png(s):
    p = s / "images" / f"{VARIANT}_000003.png"
    p.write_bytes(p.read_bytes() + b"\0")


@pytest.mark.parametrize("corrupt, error, match", [
    (_drop_eval, FileNotFoundError, "eval sample set of 'bmg'"),
    (_delete_png, FileNotFoundError, "bmg_000003.png"),
    (_extra_png, ValueError, "does not list: images/stray.png"),
    (_drop_row, ValueError, "lists 23 image.*plans 24"),
    (_change_png, ValueError, "differ from the md5hash.*bmg_000003.png"),
])
def test_a_sample_set_that_disagrees_with_its_files_is_refused(root, tmp_path, monkeypatch, corrupt, error, match):
    _copy_root(root, tmp_path, monkeypatch)
    corrupt(paths.samples_dir(PROFILE, VARIANT, "eval"))
    with pytest.raises(error, match=match):
        make_release(PROFILE, VARIANT, figures=tmp_path, progress=False)
    _no_release_left()


def test_a_variant_never_trained_is_refused(root, tmp_path, monkeypatch):
    _copy_root(root, tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"variant 'standard' of profile 'smoke' was never trained.*02_"):
        make_release(PROFILE, "standard", figures=tmp_path, progress=False)
    _no_release_left("standard")
    with pytest.raises(ValueError, match="unknown variant 'bmgx'"):
        make_release(PROFILE, "bmgx", figures=tmp_path, progress=False)


def test_a_set_drawn_by_other_weights_is_refused(root, tmp_path, monkeypatch):
    _copy_root(root, tmp_path, monkeypatch)
    params = paths.samples_dir(PROFILE, VARIANT, "augment") / "params.json"
    params.write_text(params.read_text().replace('"model_id": "', '"model_id": "old'))
    with pytest.raises(ValueError, match="retrained since"):
        make_release(PROFILE, VARIANT, figures=tmp_path, progress=False)
    _no_release_left()


def test_a_failure_while_writing_leaves_no_partial_release_and_keeps_the_old_one(root, tmp_path, monkeypatch):
    _copy_root(root, tmp_path, monkeypatch)
    out = paths.release_dir(PROFILE, VARIANT)
    out.mkdir(parents=True)
    (out / "old.txt").write_text("the previous release")

    def boom(*args, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build.generator, "export_generator", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_release(PROFILE, VARIANT, figures=tmp_path, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert (out / "old.txt").read_text() == "the previous release"


def test_licence_follows_the_training_source():
    assert evidence.licence(("synthetic",))["id"] == "mit"
    fitz = evidence.licence(("fitzpatrick17k",))
    assert fitz["id"] == "cc-by-nc-sa-3.0" and fitz["name"] == "CC BY-NC-SA 3.0"
    assert evidence.licence(("fitzpatrick17k", "synthetic"))["id"] == "cc-by-nc-sa-3.0"
    assert evidence.licence(("ddi",))["id"] == "other"


@pytest.mark.slow  # ~20 s under load (a tiny SD built twice); the UNet test covers the same functions
def test_a_stable_diffusion_generator_exports_its_adapter_and_reloads(tmp_path):
    """The GPU path's layout on a tiny random SD-shaped checkpoint: LoRA adapter + conditioner,
    the base checkpoint named, not copied; the reloaded model samples the same images."""
    from bmglib.diffusion import model_sd
    from bmglib.release import generator

    base = model_sd.build_tiny_sd(tmp_path)
    torch.manual_seed(0)
    model = model_sd.build_sd(base, mode="labels", trainable="lora", lora_rank=2).eval()
    (tmp_path / "config.json").write_text("{}")
    out = generator.export_generator(model, model.scheduler, tmp_path / "gen", bmg_config=tmp_path / "config.json",
                                     sampling={"sampler": "ddim", "steps": 2, "guidance": 0.5, "image_size": 32},
                                     provenance={})
    assert (out / "sd" / "unet_lora" / "pytorch_lora_weights.safetensors").exists() and not (out / "unet").exists()
    gen = load_generator(out, base_path=base)
    x = gen.sample(fst=[2, 6], lesion=["nevus", "melanoma"], seed=4)
    ref = sample.sample(model, model.scheduler, torch.tensor([2, 6]), torch.tensor([1, 0]), steps=2,
                        guidance=0.5, seed=4)
    assert x.shape == (2, 3, 32, 32) and torch.equal(x, ref)
