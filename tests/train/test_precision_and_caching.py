"""Issue 11's dtype and placement rules: frozen weights in the mixed-precision dtype, the VAE off the device when
latents are cached, text-encoder outputs computed once when captions never change."""

from __future__ import annotations

import dataclasses

import torch

from lib_sdtrain.train.dataset_config import Augment
from lib_sdtrain.train.loop import STORAGE_DEVICE, Trainer, train
from lib_sdtrain.train.optim import adamw_implementation
from tests.train.test_training import config_for


def setup_trainer(tiny_sd_dir, sks_dataset, tmp_path, **overrides) -> Trainer:
    trainer = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=2, **overrides), None, None)
    trainer.setup()
    return trainer


def dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_lora_under_bf16_stores_the_frozen_base_in_bf16_and_trains_fp32(tiny_sd_dir, sks_dataset, tmp_path):
    trainer = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision="bf16")
    model = trainer.model
    assert dtypes(model.unet) == dtypes(model.text_encoder) == dtypes(model.vae) == {torch.bfloat16}
    assert dtypes(trainer.network) == {torch.float32}
    assert {p.dtype for p in trainer.params} == {torch.float32}
    assert "frozen weights stored in bfloat16, trained weights in fp32" in trainer.summary()


def test_full_fine_tune_under_bf16_keeps_the_trained_unet_fp32(tiny_sd_dir, sks_dataset, tmp_path):
    trainer = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision="bf16", network_module=None)
    assert dtypes(trainer.model.unet) == {torch.float32}
    assert dtypes(trainer.model.text_encoder) == dtypes(trainer.model.vae) == {torch.bfloat16}


def test_without_mixed_precision_everything_stays_fp32(tiny_sd_dir, sks_dataset, tmp_path):
    model = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path).model
    assert dtypes(model.unet) == dtypes(model.text_encoder) == dtypes(model.vae) == {torch.float32}


def test_no_half_vae_keeps_the_vae_fp32(tiny_sd_dir, sks_dataset, tmp_path):
    trainer = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path, mixed_precision="bf16", no_half_vae=True)
    assert dtypes(trainer.model.vae) == {torch.float32}


def test_the_vae_leaves_the_device_when_every_item_has_cached_latents(tiny_sd_dir, sks_dataset, tmp_path):
    trainer = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path)
    assert not trainer.vae_needed() and "vae" in trainer.offloaded
    assert trainer.model.vae.device == STORAGE_DEVICE
    assert "VAE kept on cpu (latents cached" in trainer.summary()
    # One item without cached latents: every step may encode images, so the VAE stays.
    trainer.items[0] = dataclasses.replace(trainer.items[0], latents_path=None)
    assert trainer.vae_needed()
    trainer._place_modules()
    assert "vae" not in trainer.offloaded


def test_text_encoder_outputs_are_cached_only_when_captions_are_fixed(tiny_sd_dir, sks_dataset, tmp_path):
    trained_te = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path / "a")  # LoRA trains the text encoder by default
    assert trained_te.text_cache is None and trained_te.text_encoder_needed()

    frozen_te = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path / "b", network_train_unet_only=True)
    assert frozen_te.text_cache is not None and list(frozen_te.text_cache) == ["sks"]
    assert "text_encoder" in frozen_te.offloaded
    assert "text encoder outputs cached (1 distinct caption encoded once" in frozen_te.summary()

    for changing in ({"shuffle_caption": True}, {"caption_dropout_rate": 0.1}):
        trainer = setup_trainer(tiny_sd_dir, sks_dataset, tmp_path / "c", network_train_unet_only=True, **changing)
        assert trainer.text_cache is None and "captions change per step" in trainer.summary()

    # A subset's own settings replace the config's: one shuffling subset is enough to change captions.
    frozen_te.items[0] = dataclasses.replace(frozen_te.items[0], augment=Augment(shuffle_caption=True))
    assert not frozen_te.captions_fixed()


def test_the_text_encoder_cache_gives_the_same_losses(tiny_sd_dir, sks_dataset, tmp_path, monkeypatch):
    settings = {"max_train_steps": 6, "network_train_unet_only": True, "learning_rate": 1e-3}
    cached = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "a", **settings))
    monkeypatch.setattr(Trainer, "captions_fixed", lambda self: False)
    encoded = train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "b", **settings))
    assert cached.losses == encoded.losses


def test_adamw_uses_foreach_on_the_cpu():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))]}]
    assert adamw_implementation(groups) == {"foreach": True}
