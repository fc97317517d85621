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


def _write_checkpoint(model_dir: Path, path: Path) -> Path:
    from lib_sdtrain.models.loading import load_sd_model
    from lib_sdtrain.models.saving import save_sd_checkpoint

    return save_sd_checkpoint(load_sd_model(model_dir), path)


@pytest.fixture(scope="session")
def tiny_sd_checkpoint(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1 model as a single-file ldm checkpoint (a folder of its own, no tokenizer beside it)."""
    return _write_checkpoint(tiny_sd_dir, tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def tiny_sd2_checkpoint(tiny_sd2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_checkpoint(tiny_sd2_dir, tmp_path_factory.mktemp("ckpt") / "tiny-sd2-v.safetensors")


@pytest.fixture(scope="session", autouse=True)
def standalone_home(tmp_path_factory: pytest.TempPathFactory):
    """The standalone host's home (its Lora folder receives every trained LoRA) in a temporary folder, not in the
    working directory."""
    from lib_sdtrain.host import standalone

    previous = standalone.configure()
    home = standalone.configure(home=tmp_path_factory.mktemp("sdtrain-home")).home
    yield home
    standalone.configure(home=previous.home)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs (tests.mounts.remount_read_only makes it read-only), unmounted afterwards."""
    from tests.mounts import tmpfs_mount

    with tmpfs_mount(tmp_path / "tmpfs") as folder:
        yield folder
