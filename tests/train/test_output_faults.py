"""A finished run is never lost to its output folder (issue 10, item 1), on real file systems: a read-only tmpfs is
refused before the model loads, one too small before the first step, and one that fills up during the run ends
with the LoRA (and state) in the rescue folder, named by the message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lib_sdtrain.errors import OutputError
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.train import loop
from lib_sdtrain.train.safe_save import RESCUE_ENV
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.utils.progress import CallbackProgress
from tests.mounts import remount_read_only, tmpfs_mount
from tests.train.conftest import train_settings


def config_for(tiny_sd_dir: Path, sks_dataset: dict[str, Path], out: Path, **overrides):
    return load_config(None, train_settings(tiny_sd_dir, sks_dataset, out, max_train_steps=4, **overrides))


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def filled_at_last_step(folder: Path, total: int) -> CallbackProgress:
    def on_event(event: str, payload: dict) -> None:
        if event == "advance" and payload["done"] == total:
            fill(folder)

    return CallbackProgress(on_event)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_read_only_output_is_refused_before_the_model_loads(tiny_sd_dir, sks_dataset, tmpfs, monkeypatch):
    def no_model(config):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loop, "_load_model", no_model)
    remount_read_only(tmpfs)
    with pytest.raises(OutputError, match=rf"Cannot write in {tmpfs} \(Read-only file system\).*sks\.safetensors"):
        loop.train(config_for(tiny_sd_dir, sks_dataset, tmpfs / "out"))


def test_output_without_room_for_one_save_is_refused_before_the_first_step(tiny_sd_dir, sks_dataset, tmp_path):
    progress = CallbackProgress()
    with tmpfs_mount(tmp_path / "small", size="64k") as small:
        with pytest.raises(OutputError, match=rf"{small}/out has .* free, but one save needs about 2\d\d\.\d KiB"):
            loop.train(config_for(tiny_sd_dir, sks_dataset, small / "out"), progress=progress)
        assert progress.state.done == 0 and not list(small.iterdir())


def test_disk_full_at_the_end_saves_the_lora_and_state_in_the_rescue_folder(
    tiny_sd_dir, sks_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv(RESCUE_ENV, str(tmp_path / "rescue"))
    with tmpfs_mount(tmp_path / "disk", size="2m") as disk:
        out = disk / "out"
        config = config_for(tiny_sd_dir, sks_dataset, out, save_state=True)
        with pytest.raises(OutputError) as caught:
            loop.train(config, progress=filled_at_last_step(disk, total=4))
        assert leftovers(disk) == []
        assert not (out / "sks.safetensors").exists()
    (rescue,) = (tmp_path / "rescue").iterdir()
    message = str(caught.value)
    assert message.startswith("Training finished.")
    assert f"({out}: No space left on device)" in message
    assert str(rescue) in message and "sks.safetensors, sks-state" in message
    state, metadata = load_lora(rescue / "sks.safetensors")
    assert metadata["ss_steps"] == "4" and any(v.abs().sum() > 0 for k, v in state.items() if "lora_up" in k)
    assert sorted(os.listdir(rescue / "sks-state")) == [
        "optimizer.safetensors", "rng.safetensors", "scheduler.safetensors", "train_state.json",
        "trainable.safetensors",
    ]  # fmt: skip


def test_rescue_folder_defaults_to_the_temporary_folder(monkeypatch, tmp_path):
    from lib_sdtrain.train.safe_save import rescue_folder

    monkeypatch.delenv(RESCUE_ENV, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = rescue_folder("sks", 0.0)
    assert folder.parent == tmp_path / "sd-train-rescue" and folder.name.startswith("sks-19")
