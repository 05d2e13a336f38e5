"""The generator of a release, in diffusers' ``save_pretrained`` layout, and its loader.

    generator/
      unet/             config.json + diffusion_pytorch_model.safetensors (UNet2DConditionModel)
      scheduler/        scheduler_config.json: the training noise schedule (DDPMScheduler)
      conditioner/      config.json + model.safetensors: the FST/lesion label tokens
                        (:class:`~bmglib.diffusion.model.LabelConditioner`)
      sampling.json     sampler, steps, guidance and image size the released images were drawn with
      bmg_config.json   the training run's resolved bmg config (a record; the loader does not read it)
      provenance.json   the training run's stamp (commit, dataset hash, seed) and the release's
      README.md         the model card (:mod:`bmglib.release.card`)

A Stable Diffusion variant (``diffusion.backbone = "sd"``) is written by
:func:`bmglib.diffusion.model_sd.save_sd` into ``sd/`` instead of ``unet/`` + ``conditioner/``
(the LoRA adapter in diffusers' format, or the full UNet, + conditioner and projection); the base
SD checkpoint is not redistributed, so :func:`load_generator` then needs ``base_path``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from bmglib.data import schema
from bmglib.diffusion import sample
from bmglib.diffusion.model import (
    FST_NULL,
    FST_UNKNOWN_TOKEN,
    LESION_NULL,
    ConditionalUNet,
    LabelConditioner,
)

SAMPLING_KEYS = ("sampler", "steps", "guidance", "image_size")


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _save_scheduler(scheduler: DDPMScheduler, folder: Path) -> None:
    """``save_pretrained`` without the values the schedule never set (its ``_use_default_values``).

    A sampler built from a config (``DPMSolverMultistepScheduler.from_config``) takes its own
    defaults for those (e.g. ``timestep_spacing``); written out, they would become DDPM's and the
    reloaded generator would step at other timesteps and draw other images than the original."""
    scheduler.save_pretrained(folder)
    path = folder / "scheduler_config.json"
    unset = set(scheduler.config.get("_use_default_values", ()))
    _write_json(path, {k: v for k, v in json.loads(path.read_text()).items() if k not in unset})


def export_generator(model: torch.nn.Module, scheduler: DDPMScheduler, out: Path, *, sampling: dict,
                     bmg_config: Path, provenance: dict) -> Path:
    """Write ``model`` (a :class:`ConditionalUNet` or an SD model) and its ``scheduler`` to ``out``
    in the layout above. ``sampling``: :data:`SAMPLING_KEYS`; ``bmg_config``: the run's
    ``final/config.json`` (copied as it is); ``provenance``: written to ``provenance.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, ConditionalUNet):
        model.unet.save_pretrained(out / "unet")
        _save_scheduler(scheduler, out / "scheduler")
        cond = model.conditioner
        (out / "conditioner").mkdir()
        save_file({k: v.detach().contiguous() for k, v in cond.state_dict().items()},
                  out / "conditioner" / "model.safetensors")
        _write_json(out / "conditioner" / "config.json", {
            "_class_name": "LabelConditioner", "dim": cond.dim, "pooled": cond.pooled,
            "fst_tokens": {"null": FST_NULL, **{schema.FST_ROMAN[f]: f for f in schema.FST_LEVELS},
                           "unknown": FST_UNKNOWN_TOKEN},
            "lesion_tokens": {"null": LESION_NULL, **{les: i + 1 for i, les in enumerate(schema.LESIONS)}}})
    elif hasattr(model, "decode_latents"):  # Stable Diffusion (imported only then: peft, CLIP)
        from bmglib.diffusion import model_sd

        model_sd.save_sd(model, out / "sd")
    else:
        raise TypeError(f"cannot export a {type(model).__name__}: expected ConditionalUNet or SDConditional")
    missing = [k for k in SAMPLING_KEYS if k not in sampling]
    if missing:
        raise KeyError(f"export_generator: sampling settings lack {missing}")
    _write_json(out / "sampling.json", {k: sampling[k] for k in SAMPLING_KEYS})
    shutil.copyfile(bmg_config, out / "bmg_config.json")
    _write_json(out / "provenance.json", provenance)
    return out


@dataclass
class Generator:
    """A released generator: ``model(x_t, t, fst, lesion) -> prediction``, its training noise
    schedule and the settings the release was sampled with (``sampling``: :data:`SAMPLING_KEYS`)."""

    model: torch.nn.Module
    scheduler: DDPMScheduler
    sampling: dict
    folder: Path

    def sample(self, fst=None, lesion=None, *, n: int | None = None, seed: int = 0,
               batch_size: int = 64, **overrides) -> torch.Tensor:
        """Images for requested labels: (B, 3, S, S) float in [-1, 1], S = ``image_size``.

        ``fst``: FSTs 1..6 (a list, a tensor, or one int for every image; None: not requested);
        ``lesion``: names in ``schema.LESIONS`` or their indices (likewise); ``n``: the number of
        images when both are single values or None. ``overrides``: ``sampler``, ``steps``,
        ``guidance`` instead of the release's; the same ``seed`` gives the same images.
        """
        unknown = set(overrides) - {"sampler", "steps", "guidance"}
        if unknown:
            raise TypeError(f"Generator.sample: unknown setting(s) {sorted(unknown)}; use sampler, steps, guidance")
        kw = {k: overrides.get(k, self.sampling[k]) for k in ("sampler", "steps", "guidance")}
        fst_t, les_t = _labels(fst, lesion, n)
        return sample.sample(self.model, self.scheduler, fst_t, les_t, n=n, size=self.sampling["image_size"],
                             seed=seed, batch_size=batch_size, **kw)


def _as_list(values, n: int | None) -> list | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (int, str)):
        return None if n is None else [values] * n
    return list(values)


def _labels(fst, lesion, n: int | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Label lists → (B,) long tensors; single values broadcast to the other list's length or ``n``."""
    lengths = {len(v) for v in (_as_list(fst, None), _as_list(lesion, None)) if v is not None}
    if len(lengths) > 1:
        raise ValueError(f"fst and lesion have different lengths {sorted(lengths)}")
    size = next(iter(lengths)) if lengths else n
    if size is None:
        raise ValueError("give fst and/or lesion as lists, or n for the number of images")
    fs, ls = _as_list(fst, size), _as_list(lesion, size)
    if fs is not None and not all(int(f) in schema.FST_LEVELS for f in fs):
        raise ValueError(f"fst must be in {schema.FST_LEVELS}, got {sorted(set(fs))}")
    if ls is not None:
        bad = sorted({str(v) for v in ls if v not in schema.LESIONS and v not in range(len(schema.LESIONS))})
        if bad:
            raise ValueError(f"lesion must be one of {schema.LESIONS} or an index 0..{len(schema.LESIONS) - 1}, got {bad}")
        ls = [schema.LESIONS.index(v) if isinstance(v, str) else int(v) for v in ls]
    return (None if fs is None else torch.tensor([int(f) for f in fs]),
            None if ls is None else torch.tensor(ls))


def load_generator(folder: str | Path, base_path: str | Path | None = None,
                   device: str = "cpu") -> Generator:
    """Rebuild a generator from an :func:`export_generator` folder alone (no bmg config or run
    folder needed). ``base_path``: the base Stable Diffusion folder, for an SD generator only."""
    folder = Path(folder)
    if not (folder / "sampling.json").is_file():
        raise FileNotFoundError(f"{folder} is not a released generator: {folder / 'sampling.json'} not found")
    sampling = json.loads((folder / "sampling.json").read_text())
    if (folder / "sd").is_dir():
        from bmglib.diffusion import model_sd

        model = model_sd.load_sd(folder / "sd", base_path=base_path, device=device)
        return Generator(model.eval(), model.scheduler, sampling, folder)
    for part in ("unet/config.json", "scheduler/scheduler_config.json", "conditioner/config.json",
                 "conditioner/model.safetensors"):
        if not (folder / part).is_file():
            raise FileNotFoundError(f"{folder} is not a complete released generator: {folder / part} not found")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    spec = json.loads((folder / "conditioner" / "config.json").read_text())
    conditioner = LabelConditioner(spec["dim"], spec["pooled"])
    conditioner.load_state_dict(load_file(folder / "conditioner" / "model.safetensors"))
    return Generator(ConditionalUNet(unet, conditioner).to(device).eval(), scheduler, sampling, folder)
