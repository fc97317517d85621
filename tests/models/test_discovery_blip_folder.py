"""A BLIP folder saved as safetensors (model.safetensors) is a BLIP model, never offered as an SD checkpoint."""

from __future__ import annotations

from lib_sdtrain.demo.tiny_blip import write_tiny_blip
from lib_sdtrain.models import discovery


def test_a_blip_folders_weights_are_not_an_sd_checkpoint(tmp_path):
    blip = write_tiny_blip(tmp_path / "demo" / "blip-tiny")
    assert (blip / "model.safetensors").is_file()
    assert discovery.blip_models([tmp_path]) == [blip]
    assert blip / "model.safetensors" not in discovery.sd_models([tmp_path])
