"""The Stable Diffusion path on a tiny random SD-shaped checkpoint written to disk."""

from __future__ import annotations

import json

import pytest
import torch

from bmglib.diffusion import losses
from bmglib.diffusion.model_sd import (
    MODES,
    TRAINABLE,
    build_sd,
    build_tiny_sd,
    load_sd,
    load_sd_components,
    prompt_for,
    sample_sd,
    save_sd,
)

FST = torch.tensor([1, 3, 6, -1])
LESION = torch.tensor([0, 1, 2, 3])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores, 2 threads made these tiny steps 3-30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd"))


def test_tiny_checkpoint_is_laid_out_like_sd(tiny_sd):
    for f in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
              "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        assert (tiny_sd / f).is_file(), f
    parts = load_sd_components(tiny_sd)
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size == 32
    ids = parts.tokenizer([prompt_for(5, "melanoma")], return_tensors="pt").input_ids
    assert ids[0, 0] == parts.tokenizer.bos_token_id and ids[0, -1] == parts.tokenizer.eos_token_id


def test_missing_subfolder_is_a_clear_error(tmp_path):
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / sub).mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing subfolder\(s\) \['vae'\]") as err:
        load_sd_components(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_prompt_for():
    assert prompt_for(5, "melanoma") == "a clinical photo of melanoma on Fitzpatrick type V skin"
    assert prompt_for(None, "melanoma") == prompt_for(-1, 0) == "a clinical photo of melanoma"
    assert prompt_for(2, None) == "a clinical photo on Fitzpatrick type II skin"
    assert prompt_for(None, None) == ""


def test_context_shapes(tiny_sd):
    append = build_sd(tiny_sd, "append", "lora", lora_rank=2, cond_dim=16)
    assert append.context(FST, LESION, 4).shape == (4, 77 + 2, 32)  # generic prompt + 2 tokens
    labels = build_sd(tiny_sd, "labels", "lora", lora_rank=2, cond_dim=16)
    everything = torch.ones(4, dtype=torch.bool)
    null = labels.context(FST, LESION, 4, drop_fst=everything, drop_lesion=everything)
    assert null.shape == (4, 2, 32)
    torch.testing.assert_close(null, labels.context(None, None, 4))  # dropped = null tokens
    prompt = build_sd(tiny_sd, "prompt", "lora", lora_rank=2)
    assert prompt.context(FST, LESION, 4).shape == (4, 77, 32)


def _train(model, steps: int = 3) -> None:
    """A few optimiser steps of the v/ε MSE on latents of random 32×32 images."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    z0 = model.encode_images(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, generator=g)
    drop = torch.tensor([False, False, True, False])
    for _ in range(steps):
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (4,), generator=g)
        pred = model(model.scheduler.add_noise(z0, noise, t), t, FST, LESION, drop, drop.flip(0))
        loss = losses.denoising_loss(pred, losses.training_target(model.scheduler, z0, noise, t))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("trainable", TRAINABLE)
@pytest.mark.parametrize("mode", MODES)
def test_train_changes_only_trainable_and_roundtrips(tiny_sd, tmp_path, mode, trainable):
    torch.manual_seed(0)
    model = build_sd(tiny_sd, mode, trainable, lora_rank=4, cond_dim=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("vae.", "text_encoder.")) for n in train_names)
    assert any(n.startswith("proj.") for n in train_names) == (mode != "prompt")
    unet_names = {n for n in train_names if n.startswith("unet.")}
    if trainable == "lora":
        assert unet_names and all(".lora_" in n for n in unet_names)
    else:
        assert unet_names == {n for n in before if n.startswith("unet.")}

    _train(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == train_names  # every trainable tensor moved; VAE, text encoder, base UNet not

    out = save_sd(model, tmp_path / "ckpt", provenance={"seed": 0})
    cfg = json.loads((out / "sd_conditional.json").read_text())
    assert (cfg["mode"], cfg["trainable"], cfg["base_path"]) == (mode, trainable, str(tiny_sd))
    assert (out / "unet").is_dir() == (trainable == "full")
    loaded = load_sd(out)
    model.eval()
    loaded.eval()
    g = torch.Generator().manual_seed(1)
    z, t = torch.randn(4, 4, 16, 16, generator=g), torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, FST, LESION), model(z, t, FST, LESION),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_sample_shape_finite_and_seeded(tiny_sd, mode):
    model = build_sd(tiny_sd, mode, "lora", lora_rank=2, cond_dim=16)
    kw = {"fst": torch.tensor([1, 6]), "lesion": torch.tensor([0, 2]), "steps": 3, "guidance": 0.5}
    a = sample_sd(model, generator=torch.Generator().manual_seed(0), **kw)
    b = sample_sd(model, generator=torch.Generator().manual_seed(0), **kw)
    assert a.shape == (2, 3, 32, 32)
    assert torch.isfinite(a).all() and a.abs().max() <= 1
    torch.testing.assert_close(a, b)
    assert model.training  # restored
    assert sample_sd(model, n=3, steps=2, generator=torch.Generator().manual_seed(0)).shape[0] == 3
