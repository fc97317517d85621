"""The full SD1.5 architecture (random weights) goes through the same loading and saving path as the tiny models.

About 30 s and 10 GB of memory on the 2-core CI machine, so it runs with `-m slow`, not in the default suite."""

from __future__ import annotations

import pytest
import torch

from bench.sd15_architecture import SD15_UNET, random_sd15_model
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.models.saving import save_sd_checkpoint
from tests.tiny_models import write_tiny_tokenizer


@pytest.mark.slow
def test_full_sd15_architecture_round_trip(tmp_path):
    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer")
    model = random_sd15_model(tokenizer)
    path = save_sd_checkpoint(model, tmp_path / "sd15.safetensors", dtype=torch.float16)
    assert 1.9e9 < path.stat().st_size < 2.2e9  # the size of a real pruned fp16 SD1.5 file

    loaded = load_sd_model(path, tokenizer=tmp_path / "tokenizer")
    assert loaded.version == "sd1"
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim"):
        assert (
            list(loaded.unet.config[key]) == list(SD15_UNET[key])
            if isinstance(SD15_UNET[key], list)
            else (loaded.unet.config[key] == SD15_UNET[key])
        )
    for name in ("unet", "vae", "text_encoder"):
        original, again = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == again.keys()
        for key in original:
            assert torch.equal(original[key].half().float(), again[key]), key
