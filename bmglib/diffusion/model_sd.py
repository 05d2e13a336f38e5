"""Stable Diffusion as the conditional denoiser: the ``paper`` profile's GPU path.

A local diffusers-format SD 1.5 / 2.1 folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)
is fine-tuned in latent space. :class:`SDConditional` keeps the CPU model's interface,
``model(z_t, t, fst, lesion, drop_fst, drop_lesion) -> prediction`` (v or ε, as the checkpoint's
scheduler says), so the same loss code trains either. Three ways to condition the UNet:

* ``"labels"`` — the :class:`~bmglib.diffusion.model.LabelConditioner` tokens, projected to the text width,
  *replace* the prompt: cross-attention context (B, 2, W).
* ``"append"`` — the tokens are appended after the frozen encoding of :data:`GENERIC_PROMPT`:
  (B, L + 2, W), so the pretrained model starts from a prompt it understands.
* ``"prompt"`` — the public baselines: :func:`prompt_for` text through the frozen text encoder.

The VAE and text encoder are always frozen; the UNet is trained in full or through LoRA adapters
(peft, the diffusers-native ``unet.add_adapter``); the conditioner and projection always train.
:func:`build_tiny_sd` writes a tiny random SD-shaped checkpoint so all of this is tested on files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import logging as dlogging
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bmglib.data import schema
from bmglib.diffusion.model import LabelConditioner

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
MODES = ("labels", "append", "prompt")
TRAINABLE = ("full", "lora")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
GENERIC_PROMPT = "a clinical photo of a skin lesion"
LESION_WORDS = {"melanoma": "melanoma", "nevus": "a melanocytic nevus",
                "seborrheic_keratosis": "seborrheic keratosis", "other": "a skin lesion"}
CONFIG_FILE, COND_FILE = "sd_conditional.json", "conditioner.safetensors"
LORA_DIR, UNET_DIR, LORA_FILE = "unet_lora", "unet", "pytorch_lora_weights.safetensors"


def prompt_for(fst: int | None, lesion: str | int | None) -> str:
    """The baselines' prompt, e.g. ``prompt_for(5, "melanoma")`` →
    "a clinical photo of melanoma on Fitzpatrick type V skin".

    A null (None) or unknown (-1) FST and a null lesion leave their part out; both null → ""
    (SD's unconditional prompt). ``lesion``: a name in ``schema.LESIONS`` or its index.
    """
    if isinstance(lesion, int):
        lesion = schema.LESIONS[lesion]
    known_fst = fst is not None and int(fst) in schema.FST_LEVELS
    if lesion is None and not known_fst:
        return ""
    text = "a clinical photo"
    if lesion is not None:
        text += f" of {LESION_WORDS[lesion]}"
    if known_fst:
        text += f" on Fitzpatrick type {schema.FST_ROMAN[int(fst)]} skin"
    return text


def _batch_prompts(fst, lesion, batch: int, drop_fst=None, drop_lesion=None) -> list[str]:
    """Per-sample prompts; tensors (B,) as in :meth:`SDConditional.forward`."""
    fs = [None] * batch if fst is None else [int(v) for v in fst]
    ls = [None] * batch if lesion is None else [int(v) for v in lesion]
    if drop_fst is not None:
        fs = [None if d else f for f, d in zip(fs, drop_fst.tolist(), strict=True)]
    if drop_lesion is not None:
        ls = [None if d else les for les, d in zip(ls, drop_lesion.tolist(), strict=True)]
    return [prompt_for(f, les) for f, les in zip(fs, ls, strict=True)]


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion checkpoint this package uses (``path``: where from)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler  # the training noise schedule; sampling derives a DDIM from it
    path: Path


def load_sd_components(path, device="cpu", dtype=torch.float32, unet_path=None) -> SDComponents:
    """Load a local diffusers SD folder, offline. ``unet_path``: a fine-tuned full UNet to use
    instead of ``path/unet`` (a :func:`save_sd` checkpoint).

    Raises FileNotFoundError naming the folder and the missing subfolder(s).
    """
    root = Path(path)
    missing = [s for s in SD_SUBFOLDERS if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a diffusers Stable Diffusion folder: missing subfolder(s) {missing} "
            f"(expected {', '.join(s + '/' for s in SD_SUBFOLDERS)}; e.g. a local copy of "
            "stable-diffusion-v1-5 or stable-diffusion-2-1-base)")
    kw = {"local_files_only": True}
    src, sub = (Path(unet_path), None) if unet_path else (root, "unet")
    # diffusers: torch_dtype at load keeps its fp32-only modules; transformers 4/5 differ in the
    # keyword (torch_dtype/dtype), so the text encoder is cast after loading
    unet = UNet2DConditionModel.from_pretrained(src, subfolder=sub, torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, **kw)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **kw)
    scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw)
    return SDComponents(unet.to(device), vae.to(device), text_encoder.to(device, dtype), tokenizer,
                        scheduler, root)


def _write_tiny_tokenizer(folder: Path, max_length: int = 77) -> None:
    """A byte-level CLIP vocabulary without merges (every character is a token): 514 ids, written
    as ``vocab.json`` + ``merges.txt`` like a real SD tokenizer folder."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": i + 256 for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length}))


def build_tiny_sd(tmp_dir, prediction_type: str = "v_prediction", width: int = 32,
                  seed: int = 0) -> Path:
    """Write a tiny random SD-shaped checkpoint to ``tmp_dir/tiny-sd`` and return its path.

    UNet (32, 64) with cross-attention (dim ``width``) at full latent resolution, VAE with two
    blocks (32 px images ↔ 4×16×16 latents), a 2-layer CLIP text encoder of width ``width``.
    """
    root = Path(tmp_dir) / "tiny-sd"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
            cross_attention_dim=width, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1, norm_num_groups=32, sample_size=32)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=514, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
            pad_token_id=513))
    scheduler = DDPMScheduler(  # SD's schedule
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type=prediction_type)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder),
                       ("scheduler", scheduler)):
        part.save_pretrained(root / name)
    _write_tiny_tokenizer(root / "tokenizer")
    lib = {"unet": "diffusers", "vae": "diffusers", "scheduler": "diffusers",
           "text_encoder": "transformers", "tokenizer": "transformers"}
    names = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "scheduler": "DDPMScheduler",
             "text_encoder": "CLIPTextModel", "tokenizer": "CLIPTokenizer"}
    index = {"_class_name": "StableDiffusionPipeline"} | {k: [lib[k], names[k]] for k in names}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


class SDConditional(nn.Module):
    """Frozen VAE + text encoder, a trainable UNet (``"full"``) or LoRA adapters (``"lora"``),
    and (modes ``labels``/``append``) a :class:`LabelConditioner` + projection to the text width.

    Latents are ``vae latents * scaling_factor``: (B, 4, H/f, W/f), f = :attr:`vae_scale_factor`.
    """

    def __init__(self, parts: SDComponents, mode: str = "labels", trainable: str = "lora",
                 lora_rank: int = 8, lora_alpha: int | None = None, cond_dim: int = 64,
                 generic_prompt: str = GENERIC_PROMPT):
        super().__init__()
        if mode not in MODES or trainable not in TRAINABLE:
            raise ValueError(f"mode must be in {MODES} and trainable in {TRAINABLE}; "
                             f"got {mode!r}, {trainable!r}")
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        self.tokenizer, self.scheduler = parts.tokenizer, parts.scheduler
        self.base_path, self.mode, self.trainable = parts.path, mode, trainable
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha or lora_rank
        self.cond_dim, self.generic_prompt = cond_dim, generic_prompt
        width = self.unet.config.cross_attention_dim
        if self.text_encoder.config.hidden_size != width:
            raise ValueError(f"text width {self.text_encoder.config.hidden_size} != UNet "
                             f"cross_attention_dim {width}")
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.unet.requires_grad_(trainable == "full")
        if trainable == "lora":
            self.unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=self.lora_alpha,
                                             init_lora_weights="gaussian",
                                             target_modules=list(LORA_TARGETS)))
            cast_training_params(self.unet, torch.float32)  # fp32 adapters on an fp16 base
        self.conditioner = self.proj = None
        if mode != "prompt":
            self.conditioner = LabelConditioner(cond_dim).to(self.unet.device)
            self.proj = nn.Linear(cond_dim, width).to(self.unet.device)
        self._prompt_cache: dict[str, torch.Tensor] = {}  # frozen encoder: prompt → (L, W)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Frozen text-encoder states (B, L, W), L = tokenizer.model_max_length (77 for SD)."""
        new = sorted({p for p in prompts if p not in self._prompt_cache})
        if new:
            ids = self.tokenizer(new, padding="max_length", truncation=True, return_tensors="pt",
                                 max_length=self.tokenizer.model_max_length).input_ids
            states = self.text_encoder(ids.to(self.text_encoder.device))[0]
            self._prompt_cache.update(zip(new, states, strict=True))
        return torch.stack([self._prompt_cache[p] for p in prompts]).to(self.unet.device)

    def context(self, fst, lesion, batch: int, drop_fst=None, drop_lesion=None) -> torch.Tensor:
        """Cross-attention context: (B, 2, W) labels · (B, L+2, W) append · (B, L, W) prompt."""
        if self.mode == "prompt":
            return self.encode_prompts(_batch_prompts(fst, lesion, batch, drop_fst, drop_lesion))
        tokens, _ = self.conditioner(fst, lesion, batch, drop_fst, drop_lesion)
        ctx = self.proj(tokens)
        if self.mode == "append":
            prefix = self.encode_prompts([self.generic_prompt] * batch).to(ctx.dtype)
            ctx = torch.cat([prefix, ctx], dim=1)
        return ctx

    def forward(self, latents_t, t, fst=None, lesion=None, drop_fst=None, drop_lesion=None):
        """``latents_t``: (B, 4, h, w) noisy latents; ``t``: (B,) long; ``fst``: (B,) in {-1, 1..6}
        or None; ``lesion``: (B,) index into ``schema.LESIONS`` or None; ``drop_*``: (B,) bool →
        null label. Returns the prediction (B, 4, h, w)."""
        ctx = self.context(fst, lesion, len(latents_t), drop_fst, drop_lesion)
        return self.unet(latents_t, t, encoder_hidden_states=ctx.to(self.unet.dtype)).sample

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, generator=None, sample: bool = True) -> torch.Tensor:
        """``x``: (B, 3, H, W) in [-1, 1] → scaled latents (B, 4, H/f, W/f)."""
        dist = self.vae.encode(x.to(self.vae.device, self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.vae.config.scaling_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images (B, 3, H, W), about [-1, 1], not clamped. Differentiable (the
        fairness loss scores decoded x̂0); the VAE weights stay frozen."""
        return self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample


def build_sd(base_path, mode: str = "labels", trainable: str = "lora", device="cpu",
             dtype=torch.float32, unet_path=None, **kwargs) -> SDConditional:
    """:func:`load_sd_components` + :class:`SDConditional` (``kwargs``: lora_rank, cond_dim...)."""
    parts = load_sd_components(base_path, device, dtype, unet_path=unet_path)
    return SDConditional(parts, mode=mode, trainable=trainable, **kwargs)


def save_sd(model: SDConditional, out_dir, provenance: dict | None = None) -> Path:
    """Write the trainable state and ``sd_conditional.json`` (how to rebuild it) to ``out_dir``.

    LoRA: ``unet_lora/pytorch_lora_weights.safetensors`` (diffusers' format, adapter config in the
    metadata); full: ``unet/`` by ``save_pretrained``. Conditioner + projection: safetensors.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model.trainable == "lora":
        level = dlogging.get_verbosity()  # it calls unet.to(dtype=None): a spurious cast warning
        dlogging.set_verbosity_error()
        try:
            model.unet.save_lora_adapter(out / LORA_DIR, weight_name=LORA_FILE)
        finally:
            dlogging.set_verbosity(level)
    else:
        model.unet.save_pretrained(out / UNET_DIR)
    if model.conditioner is not None:
        state = {f"{name}.{k}": v.detach().contiguous()
                 for name in ("conditioner", "proj")
                 for k, v in getattr(model, name).state_dict().items()}
        save_file(state, out / COND_FILE)
    cfg = {"mode": model.mode, "trainable": model.trainable, "lora_rank": model.lora_rank,
           "lora_alpha": model.lora_alpha, "cond_dim": model.cond_dim,
           "generic_prompt": model.generic_prompt, "provenance": provenance,
           "base_path": str(Path(model.base_path).resolve())}
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str))
    return out


def load_sd(out_dir, base_path=None, device="cpu", dtype=torch.float32) -> SDConditional:
    """Rebuild a :func:`save_sd` checkpoint from its stored config; ``base_path`` overrides the
    stored base SD folder (e.g. on another machine)."""
    out = Path(out_dir)
    cfg = json.loads((out / CONFIG_FILE).read_text())
    full = cfg["trainable"] == "full"
    model = build_sd(base_path or cfg["base_path"], cfg["mode"], cfg["trainable"], device, dtype,
                     unet_path=out / UNET_DIR if full else None, lora_rank=cfg["lora_rank"],
                     lora_alpha=cfg["lora_alpha"], cond_dim=cfg["cond_dim"],
                     generic_prompt=cfg["generic_prompt"])
    if not full:
        lora = load_file(out / LORA_DIR / LORA_FILE, device=str(model.unet.device))
        result = set_peft_model_state_dict(model.unet, lora)
        if result.unexpected_keys:
            raise KeyError(f"{out / LORA_DIR}: unexpected LoRA keys {result.unexpected_keys[:5]}")
    if model.conditioner is not None:
        state = load_file(out / COND_FILE, device=str(model.unet.device))
        for name in ("conditioner", "proj"):
            prefix = f"{name}."
            sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            getattr(model, name).load_state_dict(sub)
    return model


def _twice(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.cat([x, x])


@torch.no_grad()
def sample_sd(model: SDConditional, fst=None, lesion=None, n: int | None = None, steps: int = 25,
              guidance: float = 0.5, generator=None, size: int | None = None,
              eta: float = 0.0) -> torch.Tensor:
    """DDIM in latent space with classifier-free guidance, decoded: (B, 3, size, size) in [-1, 1].

    ``fst``/``lesion``: (B,) tensors or None (null); ``n``: batch size when both are None.
    Guidance follows ``DiffusionConfig.guidance``: cond + w·(cond − uncond), where uncond drops
    both labels (null tokens; the empty prompt in mode ``prompt``). ``size``: image side in pixels
    (default: the UNet's ``sample_size`` × the VAE factor, 512 for SD 1.5).
    """
    ref = fst if fst is not None else lesion
    b = len(ref) if ref is not None else n
    if b is None:
        raise ValueError("give fst, lesion or n")
    device = model.unet.device
    fst = None if fst is None else torch.as_tensor(fst, device=device)
    lesion = None if lesion is None else torch.as_tensor(lesion, device=device)
    f = model.vae_scale_factor
    side = (size or model.unet.config.sample_size * f) // f
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps, device=device)
    z = sched.init_noise_sigma * randn_tensor((b, model.unet.config.in_channels, side, side),
                                              generator=generator, device=device,
                                              dtype=model.unet.dtype)
    drop = torch.arange(2 * b, device=device) >= b  # second half: unconditional
    was_training = model.training
    model.eval()
    for t in sched.timesteps:
        zin = sched.scale_model_input(torch.cat([z, z]), t)
        cond, uncond = model(zin, t.expand(2 * b), _twice(fst), _twice(lesion), drop, drop).chunk(2)
        pred = cond + guidance * (cond - uncond)
        z = sched.step(pred, t, z, eta=eta, generator=generator).prev_sample
    model.train(was_training)
    return model.decode_latents(z).clamp(-1, 1)
