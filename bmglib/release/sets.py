"""The inputs of a release, read and checked before anything is written.

* :func:`read_sample_set` — one sample set of notebook 03 (``images/``, ``manifest.csv``,
  ``params.json``, ``provenance.json``), checked against its files: every listed image on disk and
  unchanged (md5), no unlisted image, every planned image drawn.
* :func:`read_run` — the trained variant of notebook 02 (``final/``: weights, config, provenance).
* :func:`read_training_data` — the prepared dataset (notebook 01) the variant was trained on,
  found by the dataset hash its provenance stores.

Every failure names the file that is missing or wrong and the step that makes it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bmglib import config, paths
from bmglib.data import prepare, schema
from bmglib.diffusion import sample, schedule, train

#: Hugging Face split name → the sample-set purpose it releases (``paths.samples_dir``): the
#: augmentation set is meant to be added to a training split, the balanced set to evaluate on
SPLITS = {"train": "augment", "test": "eval"}


@dataclass
class SampleSet:
    """One checked sample set. ``manifest``: :func:`bmglib.diffusion.sample.load_manifest`
    (schema table, absolute ``image_path``); ``params``: the settings it was drawn with."""

    purpose: str
    folder: Path
    manifest: pd.DataFrame
    params: dict
    provenance: dict


@dataclass
class Run:
    """The trained variant: EMA model (eval mode), its config, scheduler and stored files."""

    folder: Path
    model: object
    cfg: config.Config
    scheduler: object
    model_id: str  # md5 of final/model.safetensors, as notebook 03 stamps its sample sets
    provenance: dict


def _first(items, k: int = 3) -> str:
    items = list(items)
    return ", ".join(map(str, items[:k])) + (f" (and {len(items) - k} more)" if len(items) > k else "")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def planned_cells(params: dict, where: Path) -> dict[tuple[int, str], int]:
    """``params.json``'s quota plan: images per (plan FST, lesion) cell."""
    try:
        return {(int(f), str(les)): int(n) for (f, les), n in ast.literal_eval(params["plan"]).items()}
    except (KeyError, ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"{where}: no readable 'plan' entry ({e!r}); redraw the set with notebook 03") from e


def check_files(folder: Path, raw: pd.DataFrame, plan: dict[tuple[int, str], int]) -> None:
    """Raise unless ``manifest.csv`` (``raw``, paths relative to ``folder``) and ``images/`` agree:
    no duplicate row, no listed image missing or changed, no unlisted image, every plan cell full."""
    manifest = folder / "manifest.csv"
    listed = raw["image_path"].astype(str)
    dup = listed[listed.duplicated()]
    if len(dup):
        raise ValueError(f"{manifest} lists {len(dup)} image(s) twice: {_first(dup)}")
    missing = [p for p in listed if not (folder / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{manifest} lists {len(missing)} image(s) missing from {folder}: "
                                f"{_first(missing)}; run notebook 03 again to redraw them")
    on_disk = {p.relative_to(folder).as_posix() for p in (folder / "images").rglob("*") if p.is_file()}
    extra = sorted(on_disk - set(listed))
    if extra:
        raise ValueError(f"{folder / 'images'} holds {len(extra)} image(s) that {manifest} does not "
                         f"list: {_first(extra)} (an interrupted notebook 03 leaves these: run it again "
                         "to finish the set)")
    changed = [p for p, md5 in zip(listed, raw["md5hash"], strict=True)
               if hashlib.md5((folder / p).read_bytes()).hexdigest() != md5]
    if changed:
        raise ValueError(f"{len(changed)} image(s) differ from the md5hash {manifest} lists: {_first(changed)}")
    drawn = raw.groupby(["plan_fst", "lesion"]).size().to_dict()
    short = {c: f"{drawn.get(c, 0)} of {n}" for c, n in plan.items() if drawn.get(c, 0) != n}
    unplanned = sorted(set(drawn) - set(plan))
    if short or unplanned or len(raw) != sum(plan.values()):
        raise ValueError(f"{manifest} lists {len(raw)} image(s), {folder / 'params.json'} plans "
                         f"{sum(plan.values())}: cells {_first(short.items()) or 'none'} differ"
                         f"{', unplanned cells ' + _first(unplanned) if unplanned else ''}; "
                         "run notebook 03 again to finish the set")


def read_sample_set(profile: str, variant: str, purpose: str) -> SampleSet:
    """The ``purpose`` (``augment`` | ``eval``) sample set of ``variant``, checked by :func:`check_files`."""
    folder = paths.samples_dir(profile, variant, purpose)
    hint = f"run notebooks/03_balanced_sampling.ipynb with PROFILE={profile!r}, VARIANT={variant!r}"
    if not folder.is_dir():
        raise FileNotFoundError(f"the {purpose} sample set of {variant!r} ({profile}) is missing: "
                                f"{folder} not found; {hint}")
    for name in ("manifest.csv", "params.json", "provenance.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"the {purpose} sample set of {variant!r} ({profile}) is incomplete: "
                                    f"{folder / name} not found; {hint}")
    params = _read_json(folder / "params.json")
    raw = pd.read_csv(folder / "manifest.csv")
    schema.require_columns(raw, ("image_path", "md5hash", "plan_fst", "lesion", "requested_fst",
                                 "estimated_fst", "sample_index"), str(folder / "manifest.csv"))
    check_files(folder, raw, planned_cells(params, folder / "params.json"))
    return SampleSet(purpose, folder, sample.load_manifest(folder), params,
                     _read_json(folder / "provenance.json"))


def read_run(profile: str, variant: str) -> Run:
    """The trained ``variant`` of ``profile`` (``paths.run_dir``), with its stored config and stamp."""
    if variant not in config.VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(config.VARIANTS)}")
    folder = paths.run_dir(profile, variant)
    for name in ("model.safetensors", "config.json", "provenance.json"):
        if not (folder / "final" / name).is_file():
            raise FileNotFoundError(
                f"variant {variant!r} of profile {profile!r} was never trained: {folder / 'final' / name} "
                f"not found; train it with notebooks/02_conditional_finetune.ipynb (PROFILE={profile!r}, "
                f"VARIANT={variant!r}) or python -m bmglib.diffusion.train --profile {profile} --variant {variant}")
    model, cfg = train.load_trained(folder)
    return Run(folder, model, cfg, schedule.model_scheduler(model, cfg.diffusion),
               config.file_digest(folder / "final" / "model.safetensors"),
               _read_json(folder / "final" / "provenance.json"))


def check_drawn_by(s: SampleSet, run: Run) -> None:
    """Raise unless ``s`` was drawn by the run's current weights (03 stamps ``model_id``)."""
    if s.params.get("model_id") != run.model_id:
        raise ValueError(f"{s.folder} was drawn by the model {s.params.get('model_id')!r}, but "
                         f"{run.folder / 'final' / 'model.safetensors'} is {run.model_id!r} (retrained "
                         "since): run notebook 03 again to redraw the set from the current model")


@dataclass
class TrainingData:
    """The prepared table (01) the variant was trained on: ``train``/``test`` splits, its
    dataset name and stamp, and the ``source`` values of its training rows."""

    dataset: str
    train: pd.DataFrame
    test: pd.DataFrame
    provenance: dict
    sources: tuple[str, ...]


def read_training_data(profile: str, dataset_hash: str) -> TrainingData:
    """The prepared dataset of ``profile`` whose training split has ``dataset_hash``
    (:func:`bmglib.config.hash_table`, what the run's provenance stores)."""
    tried = []
    for name in schema.SOURCES:
        folder = paths.processed_dir(profile, name)
        if not (folder / "metadata.csv").is_file():
            continue
        tried.append(name)
        meta = prepare.load_prepared(profile, name)
        train_df = meta[meta["split"] == "train"]
        if config.hash_table(train_df) == dataset_hash:
            stamp = _read_json(folder / "provenance.json") if (folder / "provenance.json").is_file() else {}
            return TrainingData(name, train_df.reset_index(drop=True),
                                meta[meta["split"] == "test"].reset_index(drop=True), stamp,
                                tuple(sorted(train_df["source"].astype(str).unique())))
    raise FileNotFoundError(
        f"the training data of this run (dataset hash {dataset_hash}) is not among the datasets prepared "
        f"under {paths.data_root() / 'processed' / profile} (found: {tried or 'none'}): run "
        "notebooks/01_data_audit.ipynb for the dataset the variant was trained on")
