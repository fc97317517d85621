"""The `ss_*` training metadata kohya writes into every LoRA (what the WebUI's metadata view and other tools read)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from lib_sdtrain.train.data import reg_image_count
from lib_sdtrain.train.network.kohya_file import lora_model_spec

if TYPE_CHECKING:
    from lib_sdtrain.models.sd_model import SDModel
    from lib_sdtrain.train.loop import Trainer

SESSION_ID = str(uuid.uuid4().int >> 96)
OWNER_KEY = "sdtrain_output_name"
"""SD-Train's own header entry (the run's output_name): tells its outputs from other files of the same name."""


def legacy_file_hash(path: str | Path) -> str:
    """The old 8-digit model hash (the WebUI's sd_models.model_hash, kohya's model_hash): sha256 of the 64 KiB at
    offset 1 MiB. Cheap, unlike the full sha256."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def base_model_metadata(model: SDModel) -> dict[str, str]:
    """ss_sd_model_name and, when known, kohya's hashes of the base model: the host's names for a model it
    handed over (the WebUI's checkpoint), else the file's."""
    source = Path(model.source) if model.source else None
    meta = {"ss_sd_model_name": model.source_name or (source.name if source else "")}
    model_hash = model.source_hash
    if not model_hash and source is not None and source.is_file():
        model_hash = legacy_file_hash(source)
    if model_hash:
        meta["ss_sd_model_hash"] = model_hash
    if model.source_sha256:
        meta["ss_new_sd_model_hash"] = model.source_sha256
    return meta


def _tag_frequency(trainer: Trainer) -> dict[str, dict[str, int]]:
    """{dataset folder: {tag: count}} over the captions' comma-separated tags, as kohya's ss_tag_frequency."""
    counts: dict[str, Counter] = {}
    for item in trainer.items:
        folder = Path(item.key).parent.name or Path(trainer.config.train_data_dir).name
        counts.setdefault(folder, Counter()).update(t.strip() for t in item.caption.split(",") if t.strip())
    return {k: dict(v) for k, v in counts.items()}


def lora_metadata(trainer: Trainer, finished: bool) -> dict[str, str]:
    config, model = trainer.config, trainer.model
    buckets = Counter(item.bucket for item in trainer.items)
    resolution = config.resolution_size
    spec = trainer.network.spec if trainer.network is not None else None
    meta = {
        "ss_session_id": SESSION_ID,
        "ss_training_started_at": str(trainer.started_at),
        "ss_output_name": config.output_name,
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.unet_learning_rate),
        "ss_text_encoder_lr": str(config.text_encoder_learning_rate),
        "ss_num_train_images": str(sum(not item.is_reg for item in trainer.items)),  # with repeats, as kohya
        "ss_num_reg_images": str(reg_image_count(config)),
        "ss_num_batches_per_epoch": str(trainer.batches_per_epoch),
        "ss_num_epochs": str(trainer.num_epochs),
        "ss_max_train_steps": str(trainer.total_steps),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_network_module": config.network_module or "networks.lora",
        "ss_network_dim": str(config.network_dim),
        "ss_network_alpha": str(config.network_alpha),
        "ss_network_dropout": str(config.network_dropout),
        "ss_network_args": json.dumps({"conv_dim": str(spec.conv_rank), "conv_alpha": str(spec.conv_alpha)})
        if spec and spec.conv_rank
        else "{}",
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": "False",
        "ss_v2": str(model.version == "sd2"),
        "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2_v" if model.v_prediction else "sd_v2"}[model.version],
        "ss_clip_skip": str(config.clip_skip),
        "ss_max_token_length": str(config.max_token_length),
        "ss_cache_latents": str(all(i.latents_path is not None for i in trainer.items)),
        "ss_seed": str(config.seed),
        "ss_noise_offset": str(config.noise_offset),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_optimizer": config.optimizer_type,
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_caption_dropout_rate": str(config.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": "0.0",
        "ss_batch_size_per_device": str(config.train_batch_size),
        "ss_total_batch_size": str(config.train_batch_size * config.gradient_accumulation_steps),
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_flip_aug": str(config.flip_aug),
        "ss_shuffle_caption": str(config.shuffle_caption),
        "ss_enable_bucket": str(len(buckets) > 1),
        "ss_min_bucket_reso": str(config.min_bucket_reso),
        "ss_max_bucket_reso": str(config.max_bucket_reso),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_bucket_info": json.dumps(
            {
                "buckets": {
                    str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(buckets.items()))
                }
            }
        ),
        "ss_tag_frequency": json.dumps(_tag_frequency(trainer)),
        "ss_dataset_dirs": json.dumps(
            {Path(config.train_data_dir).name: {"n_repeats": config.dataset_repeats, "img_count": len(trainer.items)}}
        ),
        **base_model_metadata(model),
        "ss_steps": str(trainer.position.step),
        "ss_epoch": str(trainer.position.epoch),
    }
    if finished:
        meta["ss_training_finished_at"] = str(time.time())
    if trainer.stop_note:  # a cancelled run's LoRA says so wherever its metadata is shown
        meta["ss_training_comment"] = trainer.stop_note
    meta[OWNER_KEY] = config.output_name
    title = config.output_name
    return {**meta, **lora_model_spec(model.version, model.v_prediction, title, resolution)}
