"""train/cli.py: the kohya flags SD-Train accepts in a TOML are accepted on the command line."""

from __future__ import annotations

from lib_sdtrain.train.settings import load_config
from tests.train.conftest import REQUIRED


def test_cli_accepts_the_kohya_flags_the_toml_accepts():
    from lib_sdtrain.cli import build_parser
    from lib_sdtrain.train.cli import command_line_overrides

    parser = build_parser()
    args = parser.parse_args(["train", "--xformers", "--cache_latents", "--vae_batch_size", "4",
                              "--save_model_as", "safetensors"])  # fmt: skip
    config = load_config(None, {**command_line_overrides(args), **REQUIRED})
    assert config.ignored == {"xformers": True}
    assert (config.cache_latents, config.vae_batch_size, config.save_model_as) == (True, 4, "safetensors")
