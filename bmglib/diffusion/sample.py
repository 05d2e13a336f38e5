"""Sampling from a trained conditional model: diffusers DDIM / DPM-Solver++ with guidance.

Classifier-free guidance: ``pred = cond + w · (cond − uncond)`` where *uncond* uses the null
tokens; ``w = 0`` is plain conditional sampling (DESIGN.md: w=0.5 was fine, w=2 broke samples on
the toy — tune w on a validation measure).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from PIL import Image
from tqdm.auto import tqdm

from bmglib import config, paths, skintone
from bmglib.config import write_provenance
from bmglib.data import schema
from bmglib.data.images import LESION_INDEX
from bmglib.data.synthetic import LESION_LABELS

#: sampler name → (diffusers scheduler, its settings beyond the training schedule's config):
#: DDIM; DPM-Solver++ (2M) on the training timesteps; DPM-Solver++ 2M with Karras et al.'s sigma
#: spacing (for Stable Diffusion's schedule: on the CPU UNet's cosine schedule, whose σ_max is huge,
#: it puts 10 steps at t = 998, 998, 998, 998, 997, 995, 983, 894, 259, 0); UniPC (bh2, Zhao et al. 2023)
SAMPLERS = {"ddim": (DDIMScheduler, {}), "dpmpp": (DPMSolverMultistepScheduler, {}),
            "dpmpp_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
            "unipc": (UniPCMultistepScheduler, {})}


@torch.no_grad()
def sample(model: torch.nn.Module, train_scheduler, fst: torch.Tensor | None, lesion: torch.Tensor | None,
           n: int | None = None, size: int = 32, steps: int = 25, guidance: float = 0.5,
           sampler: str = "ddim", seed: int = 0, batch_size: int = 64, progress: bool = False,
           guidance_until: float = 1.0) -> torch.Tensor:
    """Draw images for requested labels. ``fst`` (B,) in 1..6 or None (not conditioned),
    ``lesion`` (B,) index into ``schema.LESIONS`` or None. Returns (B, 3, size, size) in [-1, 1],
    on the CPU whatever the model's device. ``guidance_until`` < 1 applies the guidance on that
    leading fraction of the solver steps only (the high-noise ones; the later steps take one UNet
    pass instead of two)."""
    if not 0 <= guidance_until <= 1:
        raise ValueError(f"guidance_until must be in [0, 1] (a fraction of the solver steps), got {guidance_until}")
    if hasattr(model, "decode_latents"):  # Stable Diffusion: sample in latent space, decode
        from bmglib.diffusion.model_sd import sample_sd

        if guidance_until != 1:  # not silently ignored: the latent sampler guides every step
            raise NotImplementedError("guidance_until < 1 is not implemented for Stable Diffusion models")
        return sample_sd(model, fst, lesion, n=n, steps=steps, guidance=guidance,
                         generator=torch.Generator().manual_seed(seed)).cpu()
    ref = fst if fst is not None else lesion
    total = len(ref) if ref is not None else n
    if total is None:
        raise ValueError("give fst and/or lesion labels, or n for unconditional samples")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    cls, extra = SAMPLERS[sampler]
    sched = cls.from_config(train_scheduler.config, **extra)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, total, batch_size), desc=f"sampling {sampler}-{steps}", disable=not progress):
        f = None if fst is None else fst[i:i + batch_size].to(device)
        les = None if lesion is None else lesion[i:i + batch_size].to(device)
        b = min(batch_size, total - i)
        x = torch.randn((b, 3, size, size), generator=gen).to(device)
        sched.set_timesteps(steps)
        if hasattr(sched, "set_begin_index"):  # Karras sigmas can repeat the first timestep, and the
            sched.set_begin_index(0)            # index lookup would then start at the second one
        guided = math.ceil(guidance_until * len(sched.timesteps))
        for k, t in enumerate(sched.timesteps):
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            cond = model(x, tt, f, les)
            if guidance != 0 and k < guided:
                uncond = model(x, tt, None, None)
                cond = cond + guidance * (cond - uncond)
            x = sched.step(cond, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


# --- sample sets on disk -----------------------------------------------------------------------

MANIFEST_VERSION = 2  # bump when the manifest's columns change: existing sample sets are redrawn
#: columns of ``manifest.csv`` beyond the metadata schema's; its five FST columns
#: (``fitzpatrick_scale``, ``plan_fst``, ``requested_fst``, ``estimated_fst``, ``fst_estimated``)
#: are documented in one place, the docstring of :mod:`bmglib.data.schema`
MANIFEST_EXTRA = ("lesion", "source", "variant", "sample_index", "plan_fst", "requested_fst", "estimated_fst",
                  "fst_estimated", "seed", "sampler", "steps", "guidance")


def scheduler_config(train_scheduler) -> dict:
    """The scheduler's settings for a cache key: diffusers' private entries (``_use_default_values``
    is a list built from a set, in an order that changes from process to process) are left out."""
    return {k: v for k, v in train_scheduler.config.items() if not k.startswith("_")}


def sample_cached(model: torch.nn.Module, train_scheduler, fst: torch.Tensor | None,
                  lesion: torch.Tensor | None, *, model_id: str, cache_dir: str | Path | None = None,
                  **kw) -> torch.Tensor:
    """:func:`sample`, kept on disk under a key of ``model_id`` (e.g. the md5 of the weights), the
    scheduler config, the labels and every sampling argument in ``kw``: a notebook re-run with
    an unchanged model reads its samples back instead of drawing them again."""
    key = config.cache_key(model=model_id, scheduler=scheduler_config(train_scheduler),
                           fst=None if fst is None else fst.tolist(),
                           lesion=None if lesion is None else lesion.tolist(),
                           **{k: v for k, v in kw.items() if k != "progress"}, version=1)
    path = Path(cache_dir or paths.cache_dir() / "samples") / f"samples_{key}.pt"
    if path.exists():
        return torch.load(path)
    x = sample(model, train_scheduler, fst, lesion, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(x, tmp)
    tmp.replace(path)
    return x


def grid_requests(per_cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_cell`` requests for every FST × lesion cell, FST-major: (fst (N,) in 1..6, lesion (N,)
    index into ``schema.LESIONS``), N = 6 · 4 · per_cell (02's sample grid)."""
    n_fst, n_lesion = len(schema.FST_LEVELS), len(schema.LESIONS)
    fst = torch.arange(1, n_fst + 1).repeat_interleave(n_lesion * per_cell)
    return fst, torch.arange(n_lesion).repeat(n_fst * per_cell)


def sample_jobs(plan: pd.DataFrame, fst_cond: bool) -> pd.DataFrame:
    """One row per image to draw: ``sample_index``, ``plan_fst`` (the plan cell it fills),
    ``requested_fst`` (= ``plan_fst``, or -1 when the model is not conditioned on FST: it then gets
    the lesion only, and its draw stands in for whatever FST the cell wanted), ``lesion``.
    Cell-major, deterministic."""
    rows = [(int(r.fitzpatrick_scale), int(r.fitzpatrick_scale) if fst_cond else schema.FST_UNKNOWN,
             r.lesion) for r in plan.itertuples() for _ in range(int(r.n_synthetic))]
    jobs = pd.DataFrame(rows, columns=["plan_fst", "requested_fst", "lesion"])
    return jobs.rename_axis("sample_index").reset_index()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _manifest_rows(images: torch.Tensor, jobs: pd.DataFrame, out_dir: Path, settings: dict) -> list[dict]:
    """Write one batch's PNGs; return their manifest rows. ``images``: (B, 3, S, S) in [-1, 1]."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    est = [skintone.estimate_fst(a) for a in arr]
    rows = []
    for a, e, job in zip(arr, est, jobs.itertuples(), strict=True):
        png = _png(a)
        rel = f"images/{settings['variant']}_{job.sample_index:06d}.png"
        (out_dir / rel).write_bytes(png)
        label, nine, three = LESION_LABELS[job.lesion]
        requested = int(job.requested_fst)
        rows.append({"md5hash": hashlib.md5(png).hexdigest(),
                     "fitzpatrick_scale": requested if requested > 0 else e,
                     "label": label, "three_partition_label": three, "nine_partition_label": nine,
                     "image_path": rel, "lesion": job.lesion,
                     "source": f"synthetic:{settings['variant']}", "variant": settings["variant"],
                     "sample_index": int(job.sample_index), "plan_fst": int(job.plan_fst),
                     "requested_fst": requested,
                     "estimated_fst": e, "fst_estimated": requested <= 0,
                     **{k: settings[k] for k in ("seed", "sampler", "steps", "guidance")}})
    return rows


def _prepare_dir(out_dir: Path, settings: dict, on_change: str) -> pd.DataFrame | None:
    """The rows already on disk for the same settings; start afresh (or raise) otherwise."""
    params, manifest = out_dir / "params.json", out_dir / "manifest.csv"
    if params.exists():
        if json.loads(params.read_text()) == settings:
            if manifest.exists():
                done = pd.read_csv(manifest)
                present = [(out_dir / p).exists() for p in done["image_path"]]
                return done[present].reset_index(drop=True)
            return None
        if on_change == "error":
            raise FileExistsError(f"{out_dir} holds samples of other settings ({params}); "
                                  "delete it or pass on_change='restart'")
        print(f"{out_dir}: settings changed, regenerating from scratch")
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    params.write_text(json.dumps(settings, indent=2))
    return None


def generate_to_disk(model: torch.nn.Module, train_scheduler, plan: pd.DataFrame, out_dir: str | Path,
                     *, variant: str, fst_cond: bool, model_id: str, size: int = 32, steps: int = 25,
                     guidance: float = 0.5, sampler: str = "ddim", seed: int = 0, batch_size: int = 64,
                     provenance: dict | None = None, on_change: str = "restart",
                     progress: bool = True) -> pd.DataFrame:
    """Draw the images of a quota ``plan`` (:func:`bmglib.diffusion.balance.plan_quota`) into ``out_dir``:
    ``images/*.png`` + ``manifest.csv`` in the metadata schema (plus :data:`MANIFEST_EXTRA`).

    Resumable: batch ``k`` of ``batch_size`` images uses seed ``(seed, k)``, and its rows are
    appended to the manifest once its PNGs are written; a rerun with the same settings (``model_id``
    names the weights, e.g. a hash of the checkpoint) skips every finished batch and redraws only
    an unfinished one, identically. Other settings: start afresh (``on_change="restart"``) or raise
    (``"error"``). ``fitzpatrick_scale`` is the requested FST, or for a model not conditioned on FST
    the ITA estimate (``fst_estimated`` True); ``estimated_fst`` is always the ITA estimate.
    """
    out_dir = Path(out_dir)
    jobs = sample_jobs(plan, fst_cond)
    settings = {"format": MANIFEST_VERSION, "variant": variant, "model_id": model_id, "fst_cond": fst_cond, "size": size,
                "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed,
                "batch_size": batch_size,
                "plan": repr(jobs[["plan_fst", "lesion"]].value_counts().sort_index().to_dict())}
    done = _prepare_dir(out_dir, settings, on_change)
    if provenance is not None:
        write_provenance(out_dir / "provenance.json", provenance)
    finished = set() if done is None else set(done["sample_index"])
    manifest = out_dir / "manifest.csv"
    if done is not None:
        done.to_csv(manifest, index=False)  # drop rows whose PNG went missing
    bar = tqdm(total=len(jobs), initial=len(finished), desc=f"sampling {variant} ({sampler}-{steps})",
               disable=not progress)
    for k, start in enumerate(range(0, len(jobs), batch_size)):
        batch = jobs.iloc[start:start + batch_size]
        if set(batch["sample_index"]) <= finished:
            continue
        fst = torch.tensor(batch["requested_fst"].to_numpy()) if fst_cond else None
        lesion = torch.tensor([LESION_INDEX[v] for v in batch["lesion"]])
        x = sample(model, train_scheduler, fst, lesion, size=size, steps=steps, guidance=guidance,
                   sampler=sampler, seed=seed * 1_000_003 + k, batch_size=len(batch))
        rows = [r for r in _manifest_rows(x, batch, out_dir, settings) if r["sample_index"] not in finished]
        pd.DataFrame(rows).to_csv(manifest, mode="a", header=not manifest.exists(), index=False)
        bar.update(len(rows))
    bar.close()
    return load_manifest(out_dir)


def set_model_id(out_dir: str | Path) -> str:
    """The ``model_id`` (md5 of the generator's weights) a sample set in ``out_dir`` was drawn with."""
    params = Path(out_dir) / "params.json"
    if not params.exists():
        raise FileNotFoundError(f"{params} not found: run notebooks/03_balanced_sampling.ipynb first")
    return json.loads(params.read_text())["model_id"]


def load_manifest(out_dir: str | Path) -> pd.DataFrame:
    """A sample set's ``manifest.csv`` as a validated schema table (absolute ``image_path``)."""
    out_dir = Path(out_dir).resolve()
    path = out_dir / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebooks/03_balanced_sampling.ipynb first")
    df = pd.read_csv(path)
    df["image_path"] = [str(out_dir / p) for p in df["image_path"]]
    return schema.finalize(df, where=str(path))


def augmentation_plan(cfg: config.Config, train_df: pd.DataFrame) -> pd.DataFrame:
    """The quota plan of ``cfg.sampling`` (policy, per-cell count, ratio cap, budget, lesions) over
    the real training split: how many synthetic images notebook 03 draws per FST × lesion cell."""
    from bmglib.diffusion import balance

    s = cfg.sampling
    return balance.plan_quota(train_df, s.policy, per_cell=s.per_cell, max_ratio=s.max_ratio or None,
                              budget=s.budget or None,
                              lesions=tuple(s.lesions.split(",")) if s.lesions else None)


def draw_set(cfg: config.Config, train_df: pd.DataFrame, purpose: str, plan: pd.DataFrame, seed: int,
             trained: tuple | None = None, progress: bool = True) -> pd.DataFrame:
    """Draw ``plan`` from the generator of ``cfg`` (its variant and ``diffusion.seed``, trained by
    notebook 02) into ``paths.samples_dir(profile, variant, purpose, diffusion.seed)`` with the
    sampler of ``cfg.sampling`` and batch seeds from ``seed`` (resumable,
    :func:`generate_to_disk`); the manifest records the weights' md5 as ``model_id``.
    ``trained``: ``train.load_trained``'s ``(model, run_cfg)``, to load the model once."""
    from bmglib.diffusion import schedule, train

    d0 = cfg.diffusion
    run_dir = paths.run_dir(cfg.profile, d0.variant, d0.seed)
    model, run_cfg = trained or train.load_trained(run_dir)
    d, s = run_cfg.diffusion, cfg.sampling
    model_id = config.file_digest(run_dir / "final" / "model.safetensors")
    stamp = config.provenance(cfg, dataset_hash=config.hash_table(train_df), seed=seed, model_id=model_id,
                              run_dir=str(run_dir))
    return generate_to_disk(model, schedule.model_scheduler(model, d), plan,
                            paths.samples_dir(cfg.profile, d0.variant, purpose, d0.seed), variant=d0.variant,
                            fst_cond=d.fst_cond, model_id=model_id, size=d.image_size, steps=s.steps,
                            guidance=s.guidance, sampler=s.sampler, seed=seed, batch_size=s.batch_size,
                            provenance=stamp, progress=progress)
