"""lib_sdtrain.train.register with the WebUI stand-in's folders: names that never destroy someone else's file, the
card files, the subfolder setting, and what the user edited on a card surviving a retrain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.host import webui as adapter
from lib_sdtrain.network.kohya_file import save_lora
from lib_sdtrain.train.outputs import OWNER_KEY
from lib_sdtrain.train.register import CANCELLED, DONE, RunSummary, register_run


def summary(status: str = DONE, name: str = "sks") -> RunSummary:
    return RunSummary(
        name=name, status=status, is_lora=True, sd_version="sd1", steps=120, total_steps=400, epochs=3,
        images=12, base_model="v1-5.safetensors [6ce0161689]", network_dim=16, network_alpha=8, trigger_word="sks",
    )  # fmt: skip


def lora_file(path: Path, owner: str | None = "sks", value: float = 1.0) -> Path:
    metadata = {"ss_output_name": "sks", **({OWNER_KEY: owner} if owner else {})}
    return save_lora({"lora_unet_x.lora_down.weight": torch.full((2, 2), value)}, path, metadata, "float")


def test_a_file_of_the_same_name_that_is_not_ours_is_never_replaced(webui, tmp_path):
    folder = adapter.lora_dir()
    theirs = lora_file(folder / "sks.safetensors", owner=None)  # e.g. downloaded, or kohya's
    original = theirs.read_bytes()
    (folder / "sks-1.ckpt").write_bytes(b"an old LoRA")

    first = register_run(adapter, summary(), lora_file(tmp_path / "out" / "sks.safetensors", value=2.0))
    assert first.model == folder / "sks-2.safetensors" and theirs.read_bytes() == original
    assert (folder / "sks-2.json").is_file()

    again = register_run(adapter, summary(), lora_file(tmp_path / "out" / "sks.safetensors", value=3.0))
    assert again.model == folder / "sks-2.safetensors"  # our own earlier output of this name: updated
    assert sorted(p.name for p in folder.iterdir()) == ["sks-1.ckpt", "sks-2.json", "sks-2.safetensors",
                                                        "sks.safetensors"]  # fmt: skip


def test_another_runs_output_is_not_replaced_either(webui, tmp_path):
    folder = adapter.lora_dir()
    lora_file(folder / "sks.safetensors", owner="other-run")
    registered = register_run(adapter, summary(), lora_file(tmp_path / "sks.safetensors"))
    assert registered.model == folder / "sks-1.safetensors"


def test_card_edits_survive_a_retrain_and_a_cancel_is_described(webui, tmp_path):
    source = lora_file(tmp_path / "sks.safetensors")
    card = adapter.lora_dir() / "sks.json"
    register_run(adapter, summary(), source)
    data = json.loads(card.read_text())
    assert data == {
        "description": "LoRA (dim 16, alpha 8) trained by SD-Train from v1-5.safetensors [6ce0161689]: 120 steps, "
        "3 epochs, 12 images.",
        "sd version": "SD1",
        "activation text": "sks",
        "preferred weight": 0.8,
        "negative text": "",
        "notes": "",
    }
    card.write_text(json.dumps({**data, "preferred weight": 0.6, "notes": "works best with a 2:3 frame"}))

    register_run(adapter, summary(CANCELLED), source)
    data = json.loads(card.read_text())
    assert data["preferred weight"] == 0.6 and data["notes"] == "works best with a 2:3 frame"
    assert data["description"].endswith("12 images. Cancelled at step 120 of 400.")


def test_the_subfolder_setting_is_used_and_kept_inside_the_lora_folder(webui, tmp_path):
    source = lora_file(tmp_path / "sks.safetensors")
    webui.shared.opts.data["sdtrain_lora_subfolder"] = "trained/mine"
    assert register_run(adapter, summary(), source).model == adapter.lora_dir() / "trained" / "mine" / "sks.safetensors"
    for outside in ("../elsewhere", "/tmp/elsewhere"):
        webui.shared.opts.data["sdtrain_lora_subfolder"] = outside
        with pytest.raises(SDTrainError, match="points outside the Lora folder"):
            register_run(adapter, summary(), source)


def test_refreshing_the_list_is_a_setting(webui, tmp_path):
    source = lora_file(tmp_path / "sks.safetensors")
    webui.shared.opts.data["sdtrain_refresh_after_training"] = False
    register_run(adapter, summary(), source)
    assert webui.networks.list_calls == 0
    webui.shared.opts.data["sdtrain_refresh_after_training"] = True
    register_run(adapter, summary(), source)
    assert webui.networks.list_calls == 1 and "sks" in webui.networks.available_networks
