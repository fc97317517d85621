"""Fixtures for the dataset-preparation tests: the tiny VAE (as the CLI loads it) and small image folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vae_loaded(tiny_sd_dir: Path):
    """The tiny model's VAE through the same loader the `buckets` command uses."""
    from lib_sdtrain.models.loading import load_vae

    return load_vae(tiny_sd_dir).eval()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
