"""train/outputs.py: kohya's save options: save_model_as, save_last_n_epochs/steps, save_n_epoch_ratio."""

from __future__ import annotations

import pytest
import torch

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.loop import train
from tests.train.conftest import config_for, settings


def names(tmp_path, pattern: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").glob(pattern))


def test_save_last_n_epochs_keeps_only_the_newest(tiny_sd_dir, sks_dataset, tmp_path):
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, dataset_repeats=1, max_train_epochs=5,
                     save_every_n_epochs=1, save_last_n_epochs=2, save_state=True,
                     save_last_n_epochs_state=1))  # fmt: skip
    assert names(tmp_path, "sks-0*.safetensors") == ["sks-000003.safetensors", "sks-000004.safetensors"]
    assert names(tmp_path, "sks-0*-state") == ["sks-000004-state"]


def test_save_n_epoch_ratio_and_save_last_n_steps(tiny_sd_dir, sks_dataset, tmp_path):
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, dataset_repeats=1, max_train_epochs=6, save_n_epoch_ratio=3,
                     save_every_n_steps=2, save_last_n_steps=1))  # fmt: skip
    assert names(tmp_path, "sks-0*.safetensors") == ["sks-000002.safetensors", "sks-000004.safetensors"]
    steps = names(tmp_path, "sks-step*.safetensors")
    assert steps == ["sks-step00000004.safetensors"]  # saved at 2 and 4; at 4, step 2 is older than the last 1


def test_save_model_as_ckpt_for_a_lora_and_diffusers_for_a_fine_tune(tiny_sd_dir, sks_dataset, tmp_path):
    result = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, save_model_as="ckpt"))
    assert result.output.name == "sks.ckpt"
    state = torch.load(result.output, weights_only=True)
    assert any(k.startswith("lora_unet_") for k in state)
    tune = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, network_module=None,
                            learning_rate=1e-5, save_model_as="diffusers_safetensors"))  # fmt: skip
    assert tune.output.is_dir() and (tune.output / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tune.output / "model_index.json").is_file()
    with pytest.raises(ConfigError, match="a LoRA is saved as safetensors, ckpt or pt"):
        settings(network_module="networks.lora", save_model_as="diffusers")
