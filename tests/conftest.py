"""Shared fixtures: tiny models written to disk once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest-xdist or helpers run beside it.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.tiny_models import write_tiny_diffusers_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-architecture model as a diffusers folder (fixed seed)."""
    return write_tiny_diffusers_model(tmp_path_factory.mktemp("models") / "tiny-sd1")


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD2-architecture (v-prediction, linear projections) model as a diffusers folder."""
    return write_tiny_diffusers_model(tmp_path_factory.mktemp("models") / "tiny-sd2-v", sd2=True)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_sd_dir: Path) -> Path:
    return tiny_sd_dir / "tokenizer"
