"""Image-folder datasets: latents encoded once before training (cache_latents, on by default), written to and read
back from kohya's .npz beside each image (cache_latents_to_disk), vae_batch_size images per VAE call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lib_sdtrain.prepare.latents import encode_latents, image_noise_seed
from lib_sdtrain.train import data
from lib_sdtrain.train.loop import STORAGE_DEVICE, Trainer, train
from lib_sdtrain.train.settings import load_config


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "folders" / "2_sks"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (64, 64), (200, 40 * i, 20)).save(folder / f"{i}.png")
        (folder / f"{i}.caption").write_text("sks")
    return folder


def folder_config(tiny_sd_dir, folder, tmp_path, **overrides):
    settings = {
        "pretrained_model_name_or_path": str(tiny_sd_dir), "train_data_dir": str(folder.parent),
        "resolution": "64,64", "min_bucket_reso": 64, "network_module": "networks.lora", "network_dim": 4,
        "train_batch_size": 2, "max_train_steps": 2, "output_dir": str(tmp_path / "out"), "output_name": "c",
        "learning_rate": 1e-3, "seed": 3,
    }  # fmt: skip
    return load_config(None, {**settings, **overrides})


def setup_trainer(config) -> Trainer:
    trainer = Trainer(config, None, None)
    trainer.setup()
    return trainer


def test_folder_latents_are_encoded_once_and_the_vae_leaves_the_device(tiny_sd_dir, image_folder, tmp_path):
    trainer = setup_trainer(folder_config(tiny_sd_dir, image_folder, tmp_path))
    assert all(trainer.latent_cache.covers(item) for item in trainer.items)
    assert trainer.latent_cache.encoded == 4  # 4 images, 8 items with repeats: each image once
    assert not trainer.vae_needed() and trainer.model.vae.device == STORAGE_DEVICE
    assert "latents encoded once before training (4 encoded)" in trainer.summary()

    item = trainer.items[0]
    generator = torch.Generator().manual_seed(image_noise_seed(item.key, 3))
    expected = encode_latents(trainer.model.vae, data.load_pixels(item)[None], [generator])[0]
    assert torch.equal(trainer.latent_cache.get(item, flip=False), expected)  # the image's own posterior sample


def test_flip_aug_caches_the_mirrored_latents_too(tiny_sd_dir, image_folder, tmp_path):
    trainer = setup_trainer(folder_config(tiny_sd_dir, image_folder, tmp_path, flip_aug=True))
    item = trainer.items[0]
    plain, flipped = trainer.latent_cache.get(item, False), trainer.latent_cache.get(item, True)
    assert plain.shape == flipped.shape and not torch.equal(plain, flipped)


def test_cache_latents_off_encodes_at_each_step(tiny_sd_dir, image_folder, tmp_path):
    trainer = setup_trainer(folder_config(tiny_sd_dir, image_folder, tmp_path, cache_latents=False))
    assert not trainer.latent_cache.latents and trainer.vae_needed()
    assert "images encoded by the VAE at each step (cache_latents is off)" in trainer.summary()
    assert train(folder_config(tiny_sd_dir, image_folder, tmp_path, cache_latents=False)).steps == 2


def test_cache_to_disk_writes_kohya_npz_and_the_next_run_reads_them(tiny_sd_dir, image_folder, tmp_path):
    config = folder_config(tiny_sd_dir, image_folder, tmp_path, cache_latents_to_disk=True, flip_aug=True)
    first = setup_trainer(config)
    npz_files = sorted(image_folder.glob("*.npz"))
    assert len(npz_files) == 4
    with np.load(npz_files[0]) as npz:
        assert {"latents", "latents_flipped", "original_size", "crop_ltrb"} <= set(npz.files)
        assert npz["latents"].shape == (4, 8, 8) and list(npz["original_size"]) == [64, 64]
    again = setup_trainer(config)
    assert again.latent_cache.read_from_disk == 4 and again.latent_cache.encoded == 0
    item = first.items[0]
    assert torch.equal(again.latent_cache.get(item, True), first.latent_cache.get(item, True))
    assert train(config).steps == 2


def test_vae_batch_size_sets_the_images_per_vae_call(tiny_sd_dir, image_folder, tmp_path, monkeypatch):
    calls: list[int] = []
    from lib_sdtrain.train import latent_cache

    def counting_encode(vae, pixels, generators):
        calls.append(len(pixels))
        return encode_latents(vae, pixels, generators)

    monkeypatch.setattr(latent_cache, "encode_latents", counting_encode)
    setup_trainer(folder_config(tiny_sd_dir, image_folder, tmp_path, vae_batch_size=3))
    assert calls == [3, 1]


def test_the_summary_names_the_cache_default_only_where_it_acts(tiny_sd_dir, image_folder, sks_dataset, tmp_path):
    folders = setup_trainer(folder_config(tiny_sd_dir, image_folder, tmp_path / "a")).summary()
    assert "default differs from kohya: cache_latents True" in folders
    from tests.train.test_training import config_for

    metadata = setup_trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path / "b", max_train_steps=1)).summary()
    assert "cached latents (.npz from Prepare)" in metadata and "cache_latents" not in metadata
