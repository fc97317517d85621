"""train/loop.py's Trainer: zero learning rates, LoCon, dim_from_weights, network_multiplier, a VAE, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.network.lora import LoRANetwork, NetworkSpec
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.utils.progress import Progress
from tests.train.conftest import config_for, train_settings

# --- a learning rate of 0 freezes that part ------------------------------------------------------------------------


def test_unet_lr_zero_freezes_the_unet_lora(tiny_sd_dir, sks_dataset, tmp_path):
    result = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, unet_lr=0, max_train_steps=3))
    weights, metadata = load_lora(result.output)
    unet_ups = [v for k, v in weights.items() if k.startswith("lora_unet") and "lora_up" in k]
    te_ups = [v for k, v in weights.items() if k.startswith("lora_te") and "lora_up" in k]
    assert unet_ups and all(not v.abs().sum() for v in unet_ups), "the UNet LoRA trained at unet_lr = 0"
    assert any(v.abs().sum() for v in te_ups)
    assert metadata["ss_unet_lr"] == "0.0"


def test_text_encoder_lr_zero_freezes_the_text_encoder(tiny_sd_dir, sks_dataset, tmp_path):
    trainer = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, text_encoder_lr=0.0), None, None)
    trainer.setup()
    te_params = {id(p) for p in trainer.network.text_encoder_loras.parameters()}
    assert not any(id(p) in te_params for g in trainer.optimizer.param_groups for p in g["params"])
    assert not any(p.requires_grad for p in trainer.network.text_encoder_loras.parameters())
    assert trainer.trains_text_encoder is False
    assert all(g["lr"] == 2e-3 for g in trainer.optimizer.param_groups)


def test_both_learning_rates_zero_is_refused(tiny_sd_dir, sks_dataset, tmp_path):
    with pytest.raises(ConfigError, match="nothing to train"):
        Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, unet_lr=0, text_encoder_lr=0), None, None).setup()


# --- text-encoder outputs cached -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fixed"),
    [
        ({"caption_prefix": "photo of", "caption_suffix": "done", "secondary_separator": ";"}, True),
        ({"caption_tag_dropout_rate": 0.1}, False),
        ({"caption_dropout_every_n_epochs": 3}, False),
        ({"token_warmup_step": 5}, False),
        ({"enable_wildcard": True}, False),
    ],
)
def test_text_encoder_outputs_are_cached_only_for_fixed_captions(tiny_sd_dir, sks_dataset, tmp_path, overrides, fixed):
    settings = train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", network_train_unet_only=True, **overrides)
    meta = json.loads(sks_dataset["meta"].read_text())
    meta["red0"]["caption"] = "{sks|red}"  # a wildcard caption, for enable_wildcard
    sks_dataset["meta"].write_text(json.dumps(meta))
    trainer = Trainer(load_config(None, settings), None, None)
    assert trainer.captions_fixed() is fixed
    if fixed:
        trainer.setup()
        assert "photo of sks done" in trainer.text_cache  # the processed caption, which steps look up


# --- the network ---------------------------------------------------------------------------------------------------


def test_network_args_locon_trains_the_convolutions(tiny_sd_dir, sks_dataset, tmp_path):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1,
                        network_args=["conv_dim=2", "conv_alpha=1"])  # fmt: skip
    weights, metadata = load_lora(train(config).output)
    assert any("resnets" in k for k in weights)
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}


def test_dim_from_weights_builds_the_files_network(tiny_sd_dir, sks_dataset, tmp_path):
    from lib_sdtrain.models.loading import load_sd_model
    from lib_sdtrain.network.kohya_file import save_lora

    model = load_sd_model(tiny_sd_dir)
    spec = NetworkSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1, train_text_encoder=False)
    state = LoRANetwork(model.unet, model.text_encoder, spec).kohya_state_dict()
    file = save_lora(state, tmp_path / "start.safetensors", {}, "float")
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, network_dim=16, network_alpha=16, network_weights=str(file),
                        dim_from_weights=True, max_train_steps=1)  # fmt: skip
    result = train(config)
    saved, metadata = load_lora(result.output)
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in state.items()}
    assert all(float(saved[k]) == float(state[k]) for k in state if k.endswith(".alpha"))
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    assert '"conv_dim": "2"' in metadata["ss_network_args"]


def test_network_multiplier_scales_the_lora_while_training(tiny_sd_dir, sks_dataset, tmp_path):
    trainer = Trainer(config_for(tiny_sd_dir, sks_dataset, tmp_path, network_multiplier=0.25), None, None)
    trainer.setup()
    assert {lora.multiplier for lora in trainer.network.all_loras()} == {0.25}
    lora = next(m for m in trainer.network.unet_loras if m.lora_down.weight.ndim == 2)  # a Linear layer's
    with torch.no_grad():
        lora.lora_up.weight.fill_(0.01)
        x = torch.randn(2, lora.lora_down.weight.shape[1], device=lora.lora_down.weight.device)
        update = lora.forward(x) - lora._base_forward(x)
        expected = 0.25 * lora.scale * lora.lora_up(lora.lora_down(x))
    torch.testing.assert_close(update, expected)


def test_external_vae_replaces_the_checkpoints_for_training_and_metadata(tiny_sd_dir, sks_dataset, tmp_path):
    from lib_sdtrain.models.loading import load_sd_model, load_vae

    model = load_sd_model(tiny_sd_dir)
    changed = load_vae(tiny_sd_dir / "vae")
    with torch.no_grad():
        changed.decoder.conv_out.bias.add_(0.5)
    changed.save_pretrained(tmp_path / "vae_folder", safe_serialization=True)
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, vae=str(tmp_path / "vae_folder"))
    trainer = Trainer(config, model, None)
    torch.testing.assert_close(trainer.model.vae.decoder.conv_out.bias, changed.decoder.conv_out.bias)
    assert trainer.model.vae is not model.vae  # the host's model keeps its own VAE
    assert trainer.model.unet is model.unet

    from lib_sdtrain.train.outputs import vae_metadata

    vae_file = tmp_path / "my_vae.safetensors"
    save_file({"x": torch.zeros(3)}, str(vae_file))
    meta = vae_metadata(str(vae_file))
    assert meta["ss_vae_name"] == "my_vae.safetensors" and len(meta["ss_vae_hash"]) == 8
    import hashlib

    assert meta["ss_new_vae_hash"] == hashlib.sha256(vae_file.read_bytes()).hexdigest()
    assert vae_metadata(None) == {}  # kohya writes ss_vae_name only with a vae


# --- the progress bar after resume ---------------------------------------------------------------------------------


class _CountingProgress(Progress):
    def __init__(self) -> None:
        super().__init__()
        self.shown = 0

    def on_start(self) -> None:
        self.shown = 0

    def on_advance(self, n, info) -> None:
        self.shown += n


def test_progress_after_resume_ends_at_the_total(tiny_sd_dir, sks_dataset, tmp_path):
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=6, save_every_n_steps=3, save_state=True))
    progress = _CountingProgress()
    state_dir = tmp_path / "out" / "sks-step00000003-state"
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path / "r", max_train_steps=6, resume=str(state_dir)),
          progress=progress)  # fmt: skip
    assert progress.shown == 6 and progress.state.done == 6
