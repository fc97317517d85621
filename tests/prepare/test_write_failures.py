"""Writes that fail, on real read-only and full file systems: each is refused or reported naming the folder, before
long work where that can be checked, and nothing half-written is left."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.dataset.editing import apply_bulk_edit, load_entries, plan_bulk_edit, save_entry
from lib_sdtrain.errors import DatasetError
from lib_sdtrain.main import main
from lib_sdtrain.models import cli as models_cli
from tests.mounts import remount_read_only, tmpfs_mount


def images_in(folder: Path, count: int, size: int = 64) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size, size), (40 * i % 255, 90, 160)).save(folder / f"img{i}.png")
        (folder / f"img{i}.caption").write_text(f"picture {i}")


def test_convert_into_a_read_only_folder_is_refused_before_the_model_loads(tmpfs, tiny_sd_dir, monkeypatch, capsys):
    monkeypatch.setattr(models_cli, "_load", lambda args: pytest.fail("the model was loaded"))
    (tmpfs / "out").mkdir()
    remount_read_only(tmpfs)
    assert main(["convert", str(tiny_sd_dir), str(tmpfs / "out" / "model.safetensors")]) == 1
    assert f"Cannot write in {tmpfs / 'out'} (Read-only file system)" in capsys.readouterr().err


def test_a_full_disk_during_latent_caching_names_the_folder_and_leaves_nothing_half_written(
    tmp_path, tiny_sd_dir, capsys
):
    with tmpfs_mount(tmp_path / "disk", size="512k") as disk:
        data = disk / "data"
        images_in(data, 12, size=128)
        meta = tmp_path / "meta_clean.json"
        assert main(["merge", str(data), str(meta)]) == 0
        free = shutil.disk_usage(disk).free  # leave room for about two latent files (4x16x16 fp32: 4 KiB each)
        (disk / "filler").write_bytes(b"\0" * (free - 10 * 1024))
        out = data / "meta_lat.json"
        argv = ["buckets", str(data), str(meta), str(out), str(tiny_sd_dir), "--max_resolution", "128,128",
                "--batch_size", "1"]  # fmt: skip
        assert main(argv) == 1
        error = capsys.readouterr().err
        assert f"Could not write the latents in {data} (No space left on device)" in error
        assert "run again with --skip_existing" in error
        assert not out.exists()
        assert [p.name for p in data.iterdir() if ".tmp" in p.name] == []
        written = list(data.glob("*.npz"))
        assert 0 < len(written) < 12
        assert all(np.load(npz)["latents"].shape == (4, 16, 16) for npz in written)  # each written one is whole


def test_saving_captions_into_an_unwritable_folder_names_it_and_changes_nothing(tmpfs):
    images_in(tmpfs / "data", 2)
    entries = load_entries(tmpfs / "data")
    remount_read_only(tmpfs)
    with pytest.raises(DatasetError, match=rf"Cannot write in {tmpfs / 'data'} \(Read-only file system\)"):
        save_entry(entries[0], "a new caption", "new, tags")
    with pytest.raises(DatasetError, match=rf"{tmpfs / 'data'}"):
        apply_bulk_edit(plan_bulk_edit(entries, "add to front", "sks"))
    assert (tmpfs / "data" / "img0.caption").read_text() == "picture 0"
    assert entries[0].caption == "picture 0" and entries[0].tags == []
