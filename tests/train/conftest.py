"""Fixtures for training tests: a small dataset whose 'sks' concept is one fixed latent, ready as kohya's cached
latents (meta_lat.json + .npz), the way `sdtrain buckets` leaves a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.train.settings import config_from_dict, load_config, validate_config

SCALING = 0.18215


def target_latent() -> torch.Tensor:
    """The concept to learn, in scaled latent space: a per-channel colour with a gentle gradient (4 x 8 x 8)."""
    base = torch.tensor([1.0, -0.6, 0.8, -1.0])[:, None, None]
    ramp = torch.linspace(-0.3, 0.3, 8)[None, None, :]
    return (base + ramp).expand(4, 8, 8).contiguous()


@pytest.fixture
def sks_dataset(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "data"
    folder.mkdir()
    metadata = {}
    for i in range(4):
        Image.new("RGB", (64, 64), (220, 30, 30)).save(folder / f"red{i}.png")
        np.savez(folder / f"red{i}.npz", latents=(target_latent() / SCALING).numpy())  # stored unscaled, as kohya
        metadata[f"red{i}"] = {"caption": "sks", "train_resolution": [64, 64]}
    meta = folder / "meta_lat.json"
    meta.write_text(json.dumps(metadata, indent=2))
    return {"dir": folder, "meta": meta}


def train_settings(model_dir: Path, dataset: dict[str, Path], out: Path, **overrides) -> dict:
    settings = {
        "pretrained_model_name_or_path": str(model_dir),
        "train_data_dir": str(dataset["dir"]),
        "in_json": str(dataset["meta"]),
        "dataset_repeats": 10,
        "resolution": "64,64",
        "network_module": "networks.lora",
        "network_dim": 8,
        "network_alpha": 8,
        "learning_rate": 2e-3,
        "max_train_steps": 200,
        "train_batch_size": 4,
        "output_dir": str(out),
        "output_name": "sks",
        "save_precision": "float",
        "seed": 1,
    }
    settings.update(overrides)
    return settings


def config_for(tiny_sd_dir, sks_dataset, tmp_path, **overrides):
    return load_config(None, train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", **overrides))


REQUIRED = {"pretrained_model_name_or_path": "models/base.safetensors", "train_data_dir": "datasets/sks"}
"""The keys every config needs, for tests that only read a config (nothing is opened)."""


def settings(**values) -> TrainConfig:
    """A config of `values` read and checked as load_config does, without a model or dataset."""
    config = config_from_dict({"pretrained_model_name_or_path": "base.safetensors", "train_data_dir": "data", **values})
    validate_config(config)
    return config
