"""The ss_* metadata: kohya v0.8.7 train_network.py's keys for a DreamBooth-style (N_name folders) LoRA run, and
no_metadata's minimum."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from safetensors import safe_open

from lib_sdtrain.train.data import TrainItem
from lib_sdtrain.train.loop import train
from lib_sdtrain.train.outputs import MINIMUM_KEYS, lora_metadata
from lib_sdtrain.train.settings import config_from_dict
from lib_sdtrain.train.state import Position
from tests.train.conftest import config_for

# kohya sd-scripts v0.8.7 train_network.py: the keys of its metadata dict for a run without dataset_config (which
# writes ss_datasets instead of the dataset keys), plus those added per save. ss_network_args only with network_args;
# ss_sd_model_hash / ss_new_sd_model_hash when the model is a file; ss_vae_name and its hashes only with a vae.
KOHYA_087_KEYS = {
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_reg_images", "ss_num_batches_per_epoch", "ss_num_epochs",
    "ss_gradient_checkpointing", "ss_gradient_accumulation_steps", "ss_max_train_steps", "ss_lr_warmup_steps",
    "ss_lr_scheduler", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_dropout",
    "ss_mixed_precision", "ss_full_fp16", "ss_v2", "ss_base_model_version", "ss_clip_skip", "ss_max_token_length",
    "ss_cache_latents", "ss_seed", "ss_lowram", "ss_noise_offset", "ss_multires_noise_iterations",
    "ss_multires_noise_discount", "ss_adaptive_noise_scale", "ss_zero_terminal_snr", "ss_training_comment",
    "ss_sd_scripts_commit_hash", "ss_optimizer", "ss_max_grad_norm", "ss_caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range",
    "ss_prior_loss_weight", "ss_min_snr_gamma", "ss_scale_weight_norms", "ss_ip_noise_gamma", "ss_debiased_estimation",
    "ss_noise_offset_random_strength", "ss_ip_noise_gamma_random_strength",
    # dataset (no dataset_config)
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso",
    "ss_max_bucket_reso", "ss_keep_tokens", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info",
    # model and per save
    "ss_sd_model_name", "ss_training_finished_at", "ss_steps", "ss_epoch",
}  # fmt: skip


class FakeTrainer:  # what lora_metadata reads of a Trainer
    def __init__(self, config, items):
        self.config, self.items = config, items
        self.model = SimpleNamespace(
            version="sd1", v_prediction=False, source=None, source_name="base.safetensors", source_hash=None,
            source_sha256=None,
        )  # fmt: skip
        self.network = None
        self.batches_per_epoch, self.num_epochs, self.total_steps, self.started_at = 6, 2, 12, 1700000000.0
        self.position = Position(step=12, epoch=2)
        self.stop_note = None
        self.optimizer_description = "torch.optim.adamw.AdamW"
        self.accelerator = SimpleNamespace(num_processes=1)

    def vae_needed(self) -> bool:
        return False  # every item's latents cached


def _dataset(tmp_path: Path) -> tuple[FakeTrainer, Path]:
    """10_sks: two images (640x512 and 512x512) x 10 repeats; 1_person (reg): one image."""
    root = tmp_path / "img"
    items = []
    for folder, name, size, caption, repeats, reg in [
        ("10_sks", "a.png", (640, 512), "sks, red, red", 10, False),
        ("10_sks", "b.png", (512, 512), "sks, blue", 10, False),
        ("1_person", "c.png", (512, 512), "person", 1, True),
    ]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(root / folder / name)
        bucket = (576, 448) if size[0] > 512 else (512, 512)
        item = TrainItem(f"{folder}/{name}", caption, bucket, root / folder / name, is_reg=reg)
        items += [item] * repeats
    config = config_from_dict(
        {"pretrained_model_name_or_path": "base.safetensors", "train_data_dir": str(root), "network_module":
         "networks.lora", "cache_latents": True, "xformers": True}
    )  # fmt: skip
    return FakeTrainer(config, items), root


def test_metadata_has_kohya_087_keys(tmp_path):
    trainer, _ = _dataset(tmp_path)
    meta = lora_metadata(trainer, finished=True)
    ss_keys = {k for k in meta if k.startswith("ss_")}
    assert not KOHYA_087_KEYS - ss_keys
    # the loss keys kohya v0.9 added (huber_scale: later); no ss_network_args without network_args, as in kohya
    assert ss_keys - KOHYA_087_KEYS == {"ss_loss_type", "ss_huber_schedule", "ss_huber_c", "ss_huber_scale"}
    assert all(isinstance(v, str) for v in meta.values())
    # unset options read "None", kohya's str(None); off switches "False"
    for key in ("ss_multires_noise_iterations", "ss_scale_weight_norms", "ss_ip_noise_gamma",
                "ss_caption_dropout_every_n_epochs", "ss_face_crop_aug_range", "ss_training_comment"):  # fmt: skip
        assert meta[key] == "None", key
    assert meta["ss_zero_terminal_snr"] == meta["ss_color_aug"] == meta["ss_debiased_estimation"] == "False"
    assert meta["ss_prior_loss_weight"] == "1.0"


def test_metadata_dataset_values_as_kohya_counts_them(tmp_path):
    trainer, _ = _dataset(tmp_path)
    meta = lora_metadata(trainer, finished=False)
    assert "ss_training_finished_at" not in meta
    assert meta["ss_enable_bucket"] == "True"
    # one entry per N_name folder, images counted once, N from the folder name
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_sks": {"n_repeats": 10, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 1}}
    # each image counted once, not once per repeat; a tag twice in a caption counts twice, as kohya's loop does
    tags = json.loads(meta["ss_tag_frequency"])
    assert tags["10_sks"] == {"sks": 2, "red": 2, "blue": 1}
    info = json.loads(meta["ss_bucket_info"])
    assert info["buckets"]["0"] == {"resolution": [512, 512], "count": 11}
    expected = np.mean([abs(576 / 448 - 640 / 512), 0.0, 0.0])
    assert abs(info["mean_img_ar_error"] - expected) < 1e-9


def test_mean_ar_error_reads_cached_latents_original_size(tmp_path):
    trainer, root = _dataset(tmp_path)
    items = []
    for item in trainer.items:  # latents only: the images are gone, the .npz knows the size
        npz = root / Path(item.key).with_suffix(".npz")
        np.savez(npz, latents=np.zeros((4, 8, 8), np.float32), original_size=np.array([512, 256]))
        items.append(dataclasses.replace(item, latents_path=npz, image_path=None))
    trainer.items = items
    info = json.loads(lora_metadata(trainer, finished=True)["ss_bucket_info"])
    assert abs(info["mean_img_ar_error"] - np.mean([abs(576 / 448 - 2), 1, 1])) < 1e-9


def test_mean_ar_error_is_left_out_when_sizes_are_unknown(tmp_path):
    trainer, root = _dataset(tmp_path)
    items = []
    for item in trainer.items:  # kohya v0.6 latents: arr_0 only, no original_size; no image
        npz = root / Path(item.key).with_suffix(".npz")
        np.savez(npz, arr_0=np.zeros((4, 8, 8), np.float32))
        items.append(dataclasses.replace(item, latents_path=npz, image_path=None))
    trainer.items = items
    info = json.loads(lora_metadata(trainer, finished=True)["ss_bucket_info"])
    assert "mean_img_ar_error" not in info and info["buckets"]


def test_training_comment_is_written_when_given(tmp_path):
    trainer, _ = _dataset(tmp_path)
    trainer.config.training_comment = "my first LoRA"
    assert lora_metadata(trainer, finished=True)["ss_training_comment"] == "my first LoRA"
    trainer.stop_note = "cancelled at step 3 of 12"  # a stopped run says so, whatever the comment
    assert lora_metadata(trainer, finished=False)["ss_training_comment"] == "cancelled at step 3 of 12"


def test_no_metadata_keeps_kohyas_minimum_and_training_comment_is_written(tiny_sd_dir, sks_dataset, tmp_path):
    bare = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, no_metadata=True,
                            training_comment="hello"))  # fmt: skip
    with safe_open(str(bare.output), "pt") as f:
        ss = {k for k in f.metadata() if k.startswith("ss_")}
    assert ss and ss <= MINIMUM_KEYS and "ss_network_dim" in ss
    full = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, training_comment="hello"))
    with safe_open(str(full.output), "pt") as f:
        assert f.metadata()["ss_training_comment"] == "hello"
