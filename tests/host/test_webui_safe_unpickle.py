"""Inside the WebUI, whose modules/safe.py replaces torch.load with a checker that refuses every file current torch
writes (and returns None): resuming, captioning with a BLIP folder or an original .pth, and diffusers folders with
.bin weights all work, because SD-Train reads pickles through its one weights-only reader and states hold none."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip
from lib_sdtrain.demo.tiny_blip import write_tiny_blip
from lib_sdtrain.errors import ModelLoadError, SDTrainError
from lib_sdtrain.jobs import DONE, runner
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.train.state import load_state
from tests.dataset.test_captioning import _to_original_layout
from tests.train.conftest import train_settings
from tests.waiting import finished

OPTIONS = CaptionOptions(beam_search=True, num_beams=2, min_length=3, max_length=12, overwrite=True)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(folder / "a.png")
    return folder


def _without_new_entries(path: Path) -> Path:
    """The file as torch before 2.x wrote it: no .format_version (nor .storage_alignment) entry."""
    old = path.with_name("old-" + path.name)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w") as target:
        for name in source.namelist():
            if not name.endswith((".format_version", ".storage_alignment")):
                target.writestr(name, source.read(name))
    return old


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_stand_in_refuses_what_the_webui_refuses(webui, tmp_path, capsys):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.load(path) is None  # current torch writes .format_version: the WebUI's checker refuses it
    assert f"Error verifying pickled file from {path}" in capsys.readouterr().err
    assert torch.equal(torch.load(_without_new_entries(path))["w"], torch.ones(2))  # what it was written for

    marker = tmp_path / "ran"
    torch.save({"x": Evil(marker)}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    assert torch.load(tmp_path / "evil.pt") is None and not marker.exists()
    assert "The file may be malicious" in capsys.readouterr().err


def test_the_stand_in_is_off_with_disable_safe_unpickle_and_gone_after_the_test(start_webui, tmp_path):
    real_load = torch.load
    start_webui("--disable-safe-unpickle")
    assert torch.load is not real_load
    torch.save({"w": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.equal(torch.load(tmp_path / "x.pt")["w"], torch.ones(2))
    start_webui()  # started again: one checker, wrapping the real torch.load
    assert sys.modules["modules.safe"].unsafe_torch_load is real_load


def _train(model: Path, dataset: dict, out: Path, steps: int, **options) -> dict:
    """A LoRA trained in the stand-in WebUI's job runner, one image per step (fast), until it stops."""
    settings = train_settings(model, dataset, out, max_train_steps=steps, train_batch_size=1, **options)
    snap = finished(runner().start("train", settings))
    assert snap["status"] == DONE, snap["error"]
    return snap


def test_resume_works_inside_the_webui(webui, tiny_sd_dir, sks_dataset, tmp_path):
    out = tmp_path / "out"
    _train(tiny_sd_dir, sks_dataset, out, 1, save_state=True)
    assert not list((out / "sks-state").glob("*.pt"))  # no pickle in a state
    snap = _train(tiny_sd_dir, sks_dataset, out, 2, resume=str(out / "sks-state"))
    assert snap["done"] == 2 and any("at step 1." in line for line in snap["log"] if "Resumed" in line)


def test_a_state_from_before_this_format_still_resumes_inside_the_webui(webui, tiny_sd_dir, sks_dataset, tmp_path):
    """States saved by earlier versions hold optimizer.pt, scheduler.pt and rng.pt."""
    out = tmp_path / "out"
    _train(tiny_sd_dir, sks_dataset, out, 1, save_state=True)
    state = load_state(out / "sks-state")
    legacy = tmp_path / "legacy-state"
    legacy.mkdir()
    shutil.copy(out / "sks-state" / "trainable.safetensors", legacy)
    shutil.copy(out / "sks-state" / "train_state.json", legacy)
    for part in ("optimizer", "scheduler", "rng"):
        torch.serialization.save(getattr(state, part), legacy / f"{part}.pt")
    snap = _train(tiny_sd_dir, sks_dataset, out, 2, resume=str(legacy))
    assert any(f"Resumed from {legacy} at step 1." in line for line in snap["log"])


def test_a_malicious_pickle_in_a_state_is_refused_naming_it(webui, tmp_path):
    marker = tmp_path / "ran"
    state = tmp_path / "evil-state"
    state.mkdir()
    save_file({"a": torch.zeros(1)}, str(state / "trainable.safetensors"))
    (state / "train_state.json").write_text('{"step": 1, "epoch": 0, "batch": 1}')
    for part in ("optimizer", "scheduler", "rng"):
        contents = {"x": Evil(marker)} if part == "optimizer" else {}
        torch.serialization.save(contents, state / f"{part}.pt", pickle_module=pickle)
    with pytest.raises(SDTrainError, match=r"evil-state: Refusing to load optimizer\.pt"):
        load_state(state)
    assert not marker.exists()


def test_captioning_with_the_demo_blip_and_with_a_bin_folder_inside_the_webui(webui, tmp_path, images):
    demo = write_tiny_blip(tmp_path / "demo-blip")
    assert (demo / "model.safetensors").is_file() and not (demo / "pytorch_model.bin").exists()
    assert caption_images(images, load_blip(str(demo), device="cpu"), OPTIONS).written == 1
    expected = (images / "a.caption").read_text()

    old_style = tmp_path / "bin-blip"
    shutil.copytree(demo, old_style)
    (old_style / "model.safetensors").unlink()
    model = load_blip(str(demo), device="cpu").model
    torch.serialization.save(model.state_dict(), old_style / "pytorch_model.bin")
    assert caption_images(images, load_blip(str(old_style), device="cpu"), OPTIONS).written == 1
    assert (images / "a.caption").read_text() == expected

    sharded = tmp_path / "sharded-blip"
    shutil.copytree(old_style, sharded)
    (sharded / "pytorch_model.bin").unlink()
    model.save_pretrained(sharded, safe_serialization=False, max_shard_size="200KB")
    assert (sharded / "pytorch_model.bin.index.json").is_file()
    assert caption_images(images, load_blip(str(sharded), device="cpu"), OPTIONS).written == 1
    assert (images / "a.caption").read_text() == expected


def test_an_original_blip_pth_loads_inside_the_webui(webui, tmp_path, images):
    demo = write_tiny_blip(tmp_path / "demo-blip")
    reference = load_blip(str(demo), device="cpu")
    pth = tmp_path / "model_large_caption.pth"
    torch.serialization.save({"model": _to_original_layout(reference.model.state_dict())}, pth)
    converted = load_blip(str(pth), device="cpu", processor_source=str(demo))
    assert all(torch.equal(converted.model.state_dict()[k], v) for k, v in reference.model.state_dict().items())

    pth.write_bytes(pth.read_bytes()[:200])  # cut off
    with pytest.raises(ModelLoadError, match=r"model_large_caption\.pth is not a readable checkpoint"):
        load_blip(str(pth), device="cpu", processor_source=str(demo))


def test_a_diffusers_folder_with_bin_weights_loads_inside_the_webui(webui, tiny_sd_dir, tmp_path):
    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_sd_dir, folder)
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = (folder / part).glob("*.safetensors")
        name = "pytorch_model.bin" if part == "text_encoder" else "diffusion_pytorch_model.bin"
        torch.serialization.save(load_file(str(weights)), folder / part / name)
        weights.unlink()
    ours, reference = load_sd_model(str(folder)), load_sd_model(str(tiny_sd_dir))
    for part in ("unet", "vae", "text_encoder"):
        theirs = getattr(reference, part).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(ours, part).state_dict().items())
