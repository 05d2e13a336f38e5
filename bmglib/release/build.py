"""``make_release``: one trained variant and its two sample sets → a shareable folder.

    release = make_release("quick", "bmg")        # data/releases/quick_bmg/{dataset,generator}

Every input is read and checked first (:mod:`bmglib.release.sets`); the folder is then written
under a temporary sibling name and renamed into place at the end, so a failure leaves no partial
release behind (and an older release, if any, untouched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
from pathlib import Path

from bmglib import config, paths
from bmglib.data import schema
from bmglib.metrics import adherence
from bmglib.release import card, evidence, generator, sets
from bmglib.release.sets import SPLITS


def _summary(run: sets.Run) -> str:
    """The generator in one line: architecture and the three fairness components, from its config."""
    d = run.cfg.diffusion
    if d.backbone == "sd":
        arch = f"Stable Diffusion ({d.sd_path}) fine-tuned ({d.sd_trainable}, labels as {d.sd_mode})"
    else:
        ch = tuple(run.model.unet.config.block_out_channels)
        arch = (f"a UNet2DConditionModel of {len(ch)} levels, channels {ch}, attending to two label tokens of "
                f"width {d.cond_dim} (pooled: {d.pooled_cond}), {d.prediction_type} over a "
                f"{d.num_train_timesteps}-step cosine schedule")
    fair = f"fairness loss λ_KL = {d.lambda_kl}, λ_CE = {d.lambda_ce}"
    if d.lambda_kl > 0 or d.lambda_ce > 0:
        fair += f" (target: {d.fair_target}, estimator: {d.estimator})"
    return (f"{arch}; FST conditioning {'on' if d.fst_cond else 'off'}, cell-balanced resampling "
            f"α = {d.alpha}, {fair}")


def _split_context(name: str, s: sets.SampleSet, meta) -> dict:
    p, cfg = s.params, (s.provenance.get("config") or {}).get("sampling", {})
    if s.purpose == "augment":
        cap = lambda v: v or "none"  # noqa: E731
        what = (f"the augmentation set: quota plan `{cfg.get('policy', '?')}` tops up the rare FST × lesion "
                f"cells of the real training split (synthetic:real cap {cap(cfg.get('max_ratio'))}, budget "
                f"{cap(cfg.get('budget'))}); for adding to a training set")
    else:
        per_cell = sorted(set(sets.planned_cells(p, s.folder / "params.json").values()))
        k = str(per_cell[0]) if len(per_cell) == 1 else f"{per_cell[0]}–{per_cell[-1]}"
        what = f"the balanced evaluation set: {k} image(s) per FST × lesion cell, drawn with another seed"
    prov = s.provenance
    return {"name": name, "n": len(meta), "what": what, "composition": card.composition_markdown(meta),
            "rows": "FST requested" if evidence.conditioned(meta) else "FST of the plan cell (not requested)",
            "sampling": (f"{p['sampler']} sampler, {p['steps']} steps, guidance w = {p['guidance']}, seed "
                         f"{p['seed']}, batches of {p['batch_size']}; drawn at commit "
                         f"`{prov.get('git_commit', 'unknown')}` ({prov.get('created_utc', 'unknown')})")}


def _near_copy(s: sets.SampleSet, profile: str) -> float:
    """The memorisation threshold of the run that drew ``s`` (its stored config), else the profile's."""
    stored = (s.provenance.get("config") or {}).get("metrics", {})
    return float(stored.get("near_copy", config.get_config(profile).metrics.near_copy))


def _evidence(metas: dict, data: sets.TrainingData, run: sets.Run, figures: Path, variant: str,
              test_set: sets.SampleSet, profile: str) -> card.Evidence:
    d, test = run.cfg.diffusion, metas["test"]
    cond = evidence.conditioned(test)
    return card.Evidence(
        fidelity=evidence.fidelity(figures, variant, test),
        fst_adherence=evidence.fst_adherence(test, data, d.image_size, d.seed) if cond else None,
        lesion_adherence=evidence.lesion_adherence(test, data, d.image_size, d.seed),
        memorisation=evidence.memorisation(figures, variant, test),
        light_share=evidence.light_share(figures, variant, test),
        near_copy=_near_copy(test_set, profile),
        fst_distribution=None if cond else adherence.fst_distribution(test["fst_ita"].to_numpy()))


def _write_split(folder: Path, s: sets.SampleSet, meta) -> None:
    folder.mkdir(parents=True)
    if meta["file_name"].duplicated().any():
        raise ValueError(f"{s.folder}: two images share a file name: {meta['file_name'][meta['file_name'].duplicated()].iloc[0]}")
    for src, name in zip(s.manifest["image_path"], meta["file_name"], strict=True):
        shutil.copyfile(src, folder / name)
    meta.to_csv(folder / "metadata.csv", index=False)


def _write(tmp: Path, out_name: str, profile: str, variant: str, run: sets.Run, samples: dict,
           data: sets.TrainingData, figures: Path, progress: bool) -> dict:
    d = run.cfg.diffusion
    metas = {split: evidence.metadata(s, data, d.image_size, d.seed, progress) for split, s in samples.items()}
    for split, s in samples.items():
        _write_split(tmp / "dataset" / split, s, metas[split])
    ev = _evidence(metas, data, run, figures, variant, samples["test"], profile)
    stamp = config.provenance(run.cfg, dataset_hash=run.provenance.get("dataset_hash"), seed=d.seed,
                              kind="release", profile=profile, variant=variant, generator_id=run.model_id)
    p = samples["train"].params
    generator.export_generator(run.model, run.scheduler, tmp / "generator",
                               sampling={"sampler": p["sampler"], "steps": p["steps"], "guidance": p["guidance"],
                                         "image_size": p["size"]},
                               bmg_config=run.folder / "final" / "config.json",
                               provenance={"release": stamp, "training_run": run.provenance})
    config.write_provenance(tmp / "dataset" / "provenance.json", {
        "release": stamp, "generator_run": run.provenance, "training_data": data.provenance,
        "sets": {split: {"folder": str(s.folder), "params": s.params, "provenance": s.provenance}
                 for split, s in samples.items()}})
    ctx = _context(out_name, profile, variant, run, samples, metas, data, ev, stamp)
    (tmp / "dataset" / "README.md").write_text(card.render("dataset_card.md.jinja", **ctx))
    (tmp / "generator" / "README.md").write_text(card.render("model_card.md.jinja", **ctx))
    return ctx


def _context(out_name, profile, variant, run, samples, metas, data, ev, stamp) -> dict:
    d, prov = run.cfg.diffusion, run.provenance
    n_total = sum(len(m) for m in metas.values())
    lic = evidence.licence(data.sources)
    sampling = {k: samples["train"].params[k] for k in ("sampler", "steps", "guidance")}
    files = [("unet/", "UNet2DConditionModel.save_pretrained: config.json + diffusion_pytorch_model.safetensors"),
             ("scheduler/", "DDPMScheduler.save_pretrained: the training noise schedule"),
             ("conditioner/", "the FST/lesion label tokens (LabelConditioner): config.json + model.safetensors")]
    if d.backbone == "sd":
        files = [("sd/", "model_sd.save_sd: LoRA adapter or UNet, conditioner + projection (base SD not included)")]
    files += [("sampling.json", "the sampler, steps, guidance and image size of the released images"),
              ("bmg_config.json", "the training run's resolved bmg config"),
              ("provenance.json", "the training run's stamp (commit, dataset hash, seed) and the release's")]
    return {
        "pretty_name": f"bmg synthetic skin lesions ({variant}, {profile})", "variant": variant, "profile": profile,
        "n_total": n_total, "image_size": d.image_size, "licence": lic, "size_category": card.size_category(n_total),
        "splits": [_split_context(name, samples[name], metas[name]) for name in SPLITS],
        "fields": evidence.FIELDS, "per_fst": card.per_fst(ev, metas["test"]),
        "light_share": card.light_share_text(ev.light_share),
        "limits": card.limits(data.sources, d.image_size),
        "lesions": ", ".join(schema.LESIONS),
        "generator": {"model_id": run.model_id, "summary": _summary(run), "steps": d.steps, "seed": d.seed,
                      "git_commit": prov.get("git_commit", "unknown"), "created_utc": prov.get("created_utc", "unknown")},
        "training": {"description": f"the prepared `{data.dataset}` dataset (source: {', '.join(data.sources)})",
                     "n_train": len(data.train), "dataset_hash": prov.get("dataset_hash"),
                     "git_commit": data.provenance.get("git_commit")},
        "release": {"git_commit": stamp["git_commit"], "created_utc": stamp["created_utc"],
                    "dataset_dir_name": f"{out_name}/dataset"},
        "generator_dir_name": f"{out_name}/generator", "files": files,
        "sampling_json": "`sampling.json`",
        "sampling_text": ", ".join(f"{k} {v}" for k, v in sampling.items()),
    }


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def make_release(profile: str, variant: str, out: str | Path | None = None, *,
                 figures: str | Path | None = None, progress: bool = True) -> Path:
    """Write the release of ``variant`` (trained by 02, sampled by 03) to ``out`` (default
    ``paths.release_dir(profile, variant)``): ``dataset/`` (imagefolder splits ``train`` = the
    augmentation set, ``test`` = the evaluation set, ``metadata.csv`` each, the dataset card) and
    ``generator/`` (:mod:`bmglib.release.generator`, the model card). ``figures``: where notebook
    04's CSVs are (default ``figures/<profile>``). Returns ``out``."""
    out = Path(out) if out is not None else paths.release_dir(profile, variant)
    figures = Path(figures) if figures is not None else paths.FIGURES / profile
    run = sets.read_run(profile, variant)
    samples = {split: sets.read_sample_set(profile, variant, purpose) for split, purpose in SPLITS.items()}
    for s in samples.values():
        sets.check_drawn_by(s, run)
    data = sets.read_training_data(profile, run.provenance.get("dataset_hash"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, out.name, profile, variant, run, samples, data, figures, progress)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bmglib.release",
                                 description="release a trained variant's synthetic sets (Hugging Face "
                                             "imagefolder + datasheet) and its generator (diffusers layout + model card)")
    ap.add_argument("--variant", default="bmg", choices=list(config.VARIANTS))
    ap.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    ap.add_argument("--out", default=None, help="release folder (default: data/releases/<profile>_<variant>)")
    ap.add_argument("--figures", default=None, help="where notebook 04 wrote its CSVs (default: figures/<profile>)")
    a = ap.parse_args(argv)
    t0 = dt.datetime.now()
    out = make_release(a.profile, a.variant, a.out, figures=a.figures)
    card_text = (out / "dataset" / "README.md").read_text()
    section = card_text.split("## Per skin type", 1)[1].split("\n## ", 1)[0]
    print(f"release of {a.variant} ({a.profile}) → {out} in {(dt.datetime.now() - t0).total_seconds():.0f} s")
    print("## Per skin type" + section)
