"""Options that mean what they mean in kohya sd-scripts (issue 9): zero learning rates, EXIF, cached latents in
sub-folders and of the wrong size, kohya-only CLI flags, the CUDA RNG on resume, network_args, the start summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lib_sdtrain.dataset.images import load_image_rgb
from lib_sdtrain.errors import ConfigError, DatasetError
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.train import data, state
from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.utils.progress import CallbackProgress, Progress
from tests.train.conftest import SCALING, target_latent, train_settings

REQUIRED = {"pretrained_model_name_or_path": "models/base.safetensors", "train_data_dir": "datasets/sks"}


def config_for(tiny_sd_dir, sks_dataset, tmp_path, **overrides):
    return load_config(None, train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", **overrides))


# --- bug 2: a learning rate of 0 freezes that part -------------------------------------------------------------------


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


# --- bug 3: EXIF-rotated images are bucketed upright -------------------------------------------------------------


def test_exif_rotated_image_gets_the_upright_bucket(tmp_path):
    root = tmp_path / "train" / "2_sks"
    root.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    Image.new("RGB", (128, 64), (200, 10, 10)).save(root / "phone.jpg", exif=exif)
    config = TrainConfig(train_data_dir=str(tmp_path / "train"), resolution="96,96", min_bucket_reso=64,
                         bucket_reso_steps=32)  # fmt: skip
    item = data.collect_items(config)[0]
    upright = load_image_rgb(root / "phone.jpg").size
    assert upright == (64, 128)
    assert item.bucket[1] > item.bucket[0], f"portrait photo put in landscape bucket {item.bucket}"
    assert data.load_pixels(item).shape == (3, item.bucket[1], item.bucket[0])


# --- bug 4: cached latents beside images in sub-folders ---------------------------------------------------------


def test_cached_latents_in_sub_folders_are_found(tmp_path):
    root = tmp_path / "data"
    metadata = {}
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        image = root / sub / f"img_{sub}.png"
        Image.new("RGB", (64, 64)).save(image)
        np.savez(image.with_suffix(".npz"), latents=(target_latent() / SCALING).numpy())
        metadata[str(image)] = {"caption": "sks", "train_resolution": [64, 64]}
    meta = root / "meta_lat.json"
    meta.write_text(json.dumps(metadata))
    config = TrainConfig(train_data_dir=str(root), in_json=str(meta), resolution="64,64", min_bucket_reso=64)
    items = data.collect_items(config)
    assert [i.latents_path for i in items] == [root / "a" / "img_a.npz", root / "b" / "img_b.npz"]


def test_dotted_names_find_their_latents(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (64, 64)).save(root / "photo.v2.png")
    np.savez(root / "photo.v2.npz", latents=(target_latent() / SCALING).numpy())
    (root / "meta_lat.json").write_text(json.dumps({"photo.v2": {"caption": "sks", "train_resolution": [64, 64]}}))
    config = TrainConfig(train_data_dir=str(root), in_json=str(root / "meta_lat.json"), resolution="64,64",
                         min_bucket_reso=64)  # fmt: skip
    (item,) = data.collect_items(config)
    assert item.image_path == root / "photo.v2.png" and item.latents_path == root / "photo.v2.npz"


# --- bug 5: latents of the wrong size are refused before training -------------------------------------------------


def test_latents_prepared_at_another_resolution_are_refused(sks_dataset):
    config = TrainConfig(train_data_dir=str(sks_dataset["dir"]), in_json=str(sks_dataset["meta"]),
                         resolution="128,128", min_bucket_reso=64)  # fmt: skip
    with pytest.raises(DatasetError, match=r"red0\.npz.*64x64.*128x128.*Prepare"):
        data.collect_items(config)


def test_stale_latents_of_another_size_are_refused(sks_dataset):
    np.savez(sks_dataset["dir"] / "red2.npz", latents=np.zeros((4, 16, 8), np.float32))  # 64 wide, 128 high
    config = TrainConfig(train_data_dir=str(sks_dataset["dir"]), in_json=str(sks_dataset["meta"]),
                         resolution="64,64", min_bucket_reso=64)  # fmt: skip
    with pytest.raises(DatasetError, match=r"red2\.npz.*64x128.*64x64.*Prepare"):
        data.collect_items(config)


# --- bug 8: kohya flags SD-Train accepts in a TOML are accepted on the command line -----------------------------


def test_cli_accepts_the_kohya_flags_the_toml_accepts():
    from lib_sdtrain.cli import build_parser
    from lib_sdtrain.train.cli import command_line_overrides

    parser = build_parser()
    args = parser.parse_args(["train", "--xformers", "--cache_latents", "--vae_batch_size", "4",
                              "--save_model_as", "safetensors"])  # fmt: skip
    config = load_config(None, {**command_line_overrides(args), **REQUIRED})
    assert config.ignored == {"xformers": True}
    assert (config.cache_latents, config.vae_batch_size, config.save_model_as) == (True, 4, "safetensors")


# --- bug 6: the CUDA random state is saved and restored -----------------------------------------------------------


def test_state_carries_the_cuda_rng_when_cuda_is_present(tmp_path, monkeypatch):
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    generator = torch.Generator().manual_seed(3)
    rng = state.rng_state({"noise": generator})
    assert torch.equal(rng["cuda"], cuda_state)
    state.restore_rng(rng, {"noise": generator})
    assert len(restored) == 1 and torch.equal(restored[0], cuda_state)
    restored.clear()
    state.restore_rng({k: v for k, v in rng.items() if k != "cuda"}, {"noise": generator})  # an older state
    assert restored == []


def test_state_without_cuda_has_no_cuda_rng(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in state.rng_state({})


# --- network_args as kohya reads them ----------------------------------------------------------------------------


def test_network_args_conv_dim_makes_a_locon():
    config = load_config(None, {**REQUIRED, "network_module": "networks.lora",
                                "network_args": ["conv_dim=8", "conv_alpha=4"]})  # fmt: skip
    assert "network_args" not in config.ignored
    assert (config.locon_dim, config.locon_alpha) == (8, 4.0)
    kohya_default = load_config(None, {**REQUIRED, "network_module": "networks.lora", "network_args": ["conv_dim=8"]})
    assert (kohya_default.locon_dim, kohya_default.locon_alpha) == (8, 1.0)  # kohya: conv_alpha defaults to 1
    plain = load_config(None, {**REQUIRED, "network_module": "lycoris.kohya", "network_args": ["algo=lora"]})
    assert plain.locon_dim is None
    locon = load_config(None, {**REQUIRED, "network_module": "lycoris.kohya",
                               "network_args": ["algo=locon", "conv_dim=4", "conv_alpha=2"]})  # fmt: skip
    assert (locon.locon_dim, locon.locon_alpha) == (4, 2.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["algo=loha"], r"algo=loha .*lora or locon"),
        (["algo=lokr"], r"algo=lokr"),
        (["rank_dropout=1"], r"rank_dropout=1: expected a number from 0 to below 1"),
        (["module_dropout=-0.1"], r"module_dropout"),
        (["conv_dim=eight"], r"conv_dim=eight"),
        (["conv_dim"], r"'conv_dim'.*key=value"),
        (["block_dims=2,2,2"], r"block_dims.*not supported"),
    ],
)
def test_network_args_that_are_not_implemented_or_out_of_range_are_refused(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**REQUIRED, "network_module": "networks.lora", "network_args": args})


def test_network_args_and_conv_dim_must_agree():
    with pytest.raises(ConfigError, match="conv_dim"):
        load_config(None, {**REQUIRED, "network_module": "networks.lora", "conv_dim": 4,
                           "network_args": ["conv_dim=8"]})  # fmt: skip


def test_network_args_locon_trains_the_convolutions(tiny_sd_dir, sks_dataset, tmp_path):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1,
                        network_args=["conv_dim=2", "conv_alpha=1"])  # fmt: skip
    weights, metadata = load_lora(train(config).output)
    assert any("resnets" in k for k in weights)
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}


# --- the start-of-training summary and the progress bar after resume -------------------------------------------


def test_summary_says_what_the_run_will_do(tiny_sd_dir, sks_dataset, tmp_path):
    settings = train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_steps=2)
    del settings["learning_rate"], settings["save_precision"]
    progress = CallbackProgress()
    train(load_config(None, settings), progress=progress)
    summary = "\n".join(progress.messages)
    for part in (
        "4 images",
        "repeats 10",
        "1 bucket",
        "10 batches per epoch",
        "1 epoch",
        "2 steps",
        "cpu",
        "trainable parameters",
        "dim 8",
        "alpha 8",
        str(tmp_path / "out" / "sks.safetensors"),
        "learning_rate 0.0001 (kohya's default: 2e-06)",
        "save_precision fp16 (kohya's default: fp32)",
    ):
        assert part in summary, f"{part!r} missing from:\n{summary}"


def test_summary_names_no_default_the_user_set(tiny_sd_dir, sks_dataset, tmp_path):
    progress = CallbackProgress()
    train(
        config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, enable_bucket=True, cache_latents=True),
        progress=progress,
    )
    assert "kohya's default" not in "\n".join(progress.messages)


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


def test_keys_training_reads_are_not_reported_as_unused(tiny_sd_dir, sks_dataset, tmp_path):
    settings = train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_steps=1, no_half_vae=True,
                              training_comment="first try", xformers=True)  # fmt: skip
    progress = CallbackProgress()
    train(load_config(None, settings), progress=progress)
    unused = [m for m in progress.messages if m.startswith("Accepted but not used")]
    assert unused == ["Accepted but not used by SD-Train: xformers"]


def test_log_prefix_names_the_tensorboard_folder(tiny_sd_dir, sks_dataset, tmp_path):
    logs = tmp_path / "logs"
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, logging_dir=str(logs), log_prefix="lora"))
    (folder,) = logs.iterdir()
    assert folder.name.startswith("lora") and folder.name[4:].isdigit()  # kohya: <log_prefix><timestamp>
    assert list(folder.glob("events.out.tfevents.*"))


def test_debug_dataset_is_refused_since_it_would_not_train(tiny_sd_dir, sks_dataset, tmp_path):
    with pytest.raises(ConfigError, match="debug_dataset = True is not implemented"):
        config_for(tiny_sd_dir, sks_dataset, tmp_path, debug_dataset=True)
    assert config_for(tiny_sd_dir, sks_dataset, tmp_path, debug_dataset=False).ignored == {"debug_dataset": False}
