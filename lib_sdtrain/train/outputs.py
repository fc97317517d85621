"""The `ss_*` training metadata kohya writes into every LoRA (what the WebUI's metadata view and other tools read)."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
import weakref
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lib_sdtrain.network.kohya_file import lora_model_spec
from lib_sdtrain.prepare.buckets import parse_resolution
from lib_sdtrain.train.data import REPEAT_FOLDER, TrainItem, reg_image_count, upright_size

if TYPE_CHECKING:
    from lib_sdtrain.models.sd_model import SDModel
    from lib_sdtrain.train.config import TrainConfig
    from lib_sdtrain.train.loop import Trainer

SESSION_ID = str(uuid.uuid4().int >> 96)
OWNER_KEY = "sdtrain_output_name"
"""SD-Train's own header entry (the run's output_name): tells its outputs from other files of the same name."""
MINIMUM_KEYS = frozenset(
    {"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args"}
)
"""kohya's SS_METADATA_MINIMUM_KEYS: all the ss_* entries no_metadata keeps (the model spec entries stay too)."""


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
    model_hash, sha256 = model.source_hash, model.source_sha256
    if source is not None and source.is_file() and not (model_hash and sha256):
        hashes = file_hashes(source)
        model_hash, sha256 = model_hash or hashes[0], sha256 or hashes[1]
    if model_hash:
        meta["ss_sd_model_hash"] = model_hash
    if sha256:
        meta["ss_new_sd_model_hash"] = sha256
    return meta


_FILE_HASHES: dict[tuple[str, float], tuple[str, str]] = {}


def file_hashes(path: Path) -> tuple[str, str]:
    """(kohya's model_hash, the file's sha256), as kohya writes them for the base model and a VAE; computed once per
    file and modification time in a process (the sha256 of an SD 1.5 file takes a few seconds)."""
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = (legacy_file_hash(path), digest.hexdigest())
    return _FILE_HASHES[key]


def _tag_frequency(items: list[TrainItem], config: TrainConfig) -> dict[str, dict[str, int]]:
    """{dataset folder: {tag: count}} over the captions' comma-separated tags, as kohya's ss_tag_frequency: each
    image counts once, however many repeats it has."""
    counts: dict[str, Counter] = {}
    for item in _unique_images(items):
        folder = Path(item.key).parent.name or Path(config.train_data_dir).name
        counts.setdefault(folder, Counter()).update(t.strip() for t in item.caption.split(",") if t.strip())
    return {k: dict(v) for k, v in counts.items()}


def _unique_images(items: list[TrainItem]) -> list[TrainItem]:
    """The items without the repeats (an image with N repeats is N items with the same key)."""
    seen: dict[str, TrainItem] = {}
    for item in items:
        seen.setdefault(item.key, item)
    return list(seen.values())


def _image_size(item: TrainItem) -> tuple[int, int] | None:
    """The image's upright size: the cached latents' original_size, else the image file; None when unknown."""
    if item.latents_path is not None:
        try:
            with np.load(item.latents_path) as npz:
                if "original_size" in npz.files:
                    width, height = (int(v) for v in npz["original_size"][:2])
                    return width, height
        except (OSError, ValueError, KeyError, EOFError, zlib.error):
            pass
    if item.image_path is not None:
        try:
            return upright_size(item.image_path)
        except (OSError, ValueError):
            return None
    return None


def _ar_error(items: list[TrainItem]) -> float | None:
    """kohya's bucket_info mean_img_ar_error: the mean |bucket aspect ratio - image aspect ratio| over the images
    (each once); None when an image's size is unknown (latents without original_size and no image file)."""
    errors = []
    for item in _unique_images(items):
        size = _image_size(item)
        if size is None or not size[1]:
            return None
        errors.append(abs(item.bucket[0] / item.bucket[1] - size[0] / size[1]))
    return float(np.mean(errors)) if errors else None


def _value(config: TrainConfig, key: str, default: Any = None) -> Any:
    value = getattr(config, key) if hasattr(config, key) else config.ignored.get(key, default)
    return default if value == "" else value


def _dataset_dirs(trainer: Trainer, reg: bool) -> dict[str, dict[str, int]]:
    """kohya's ss_dataset_dirs / ss_reg_dataset_dirs: {folder: {"n_repeats", "img_count"}}, one entry per N_name
    folder (N from its name), or the train_data_dir with dataset_repeats for metadata (in_json) datasets."""
    config = trainer.config
    repeats = Counter(item.key for item in trainer.items if item.is_reg == reg)  # an image's items: its repeats
    dirs: dict[str, dict[str, int]] = {}
    for key, n in repeats.items():
        folder = Path(key).parent.name
        if not folder:
            folder, n = Path(config.train_data_dir).name, config.dataset_repeats
        elif match := REPEAT_FOLDER.match(folder):
            n = int(match[1])
        entry = dirs.setdefault(folder, {"n_repeats": n, "img_count": 0})
        entry["img_count"] += 1
    return dirs


def _kohya_value(config: TrainConfig, key: str, default: Any = None) -> str:
    """A setting as kohya writes it into ss_*: str() of the value, "None" when unset (kohya's None); settings not in
    SD-Train's schema come from the accepted-but-unused keys."""
    return str(_value(config, key, default))


def _bucket_info(items: list[TrainItem], error: float | None) -> dict[str, Any]:
    buckets = Counter(item.bucket for item in items)
    info: dict[str, Any] = {
        "buckets": {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(buckets.items()))}
    }
    if error is not None:
        info["mean_img_ar_error"] = error
    return info


FLAT_DATASET_KEYS = frozenset(
    {
        "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
        "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso",
        "ss_max_bucket_reso", "ss_keep_tokens",
    }
)  # fmt: skip
"""The keys kohya writes only without a dataset_config; with one, ss_datasets holds them per dataset."""


_DATASET_METADATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dataset_metadata(trainer: Trainer) -> dict[str, str]:
    """The ss_* entries that describe the data. They read image headers, latents files and the dataset_config, and
    do not change while a run trains: worked out at the first save and reused by the later ones."""
    if trainer not in _DATASET_METADATA:
        items, config = trainer.items, trainer.config
        if config.dataset_config:
            meta = _datasets_metadata(trainer)
        else:
            meta = {
                "ss_bucket_info": json.dumps(_bucket_info(items, _ar_error(items))),
                "ss_tag_frequency": json.dumps(_tag_frequency(items, config)),
                "ss_dataset_dirs": json.dumps(_dataset_dirs(trainer, reg=False)),
                "ss_reg_dataset_dirs": json.dumps(_dataset_dirs(trainer, reg=True)),
            }
        _DATASET_METADATA[trainer] = {**meta, "ss_num_reg_images": str(reg_image_count(config))}
    return _DATASET_METADATA[trainer]


def _datasets_metadata(trainer: Trainer) -> dict[str, str]:
    """kohya's metadata for a dataset_config: ss_datasets (per [[datasets]] block its settings, counts, tag
    frequency and buckets, and per subset its settings), with ss_tag_frequency and ss_dataset_dirs merged over the
    blocks (regularisation folders left out, a folder used twice named "dir (2)"), as train_network.py does."""
    from lib_sdtrain.train.dataset_config import read_dataset_config

    config = trainer.config
    assert config.dataset_config is not None  # the caller asks only for a dataset_config's metadata
    spec = read_dataset_config(config.dataset_config, config)
    datasets, dirs = [], {}
    tags: dict[str, Any] = {}  # ss_tag_frequency: {folder: {tag: count}}
    for index, dataset in enumerate(spec.datasets):
        items = [item for item in trainer.items if item.dataset == index]
        settings = {**{k: getattr(config, k) for k in ("resolution", "train_batch_size", "enable_bucket",
                                                        "min_bucket_reso", "max_bucket_reso")},
                    **dataset.settings}  # fmt: skip
        width, height = parse_resolution(settings["resolution"])
        frequency = _tag_frequency(items, config)
        subsets = [_subset_metadata(subset, items, config) for subset in dataset.subsets]
        datasets.append(
            {
                "is_dreambooth": all(subset.metadata_file is None for subset in dataset.subsets),
                "batch_size_per_device": settings["train_batch_size"],
                "num_train_images": sum(not item.is_reg for item in items),
                "num_reg_images": sum(m["num_repeats"] * m["img_count"] for m in subsets if m.get("is_reg")),
                "resolution": [width, height],
                "enable_bucket": bool(settings["enable_bucket"]),
                "min_bucket_reso": settings["min_bucket_reso"],
                "max_bucket_reso": settings["max_bucket_reso"],
                "tag_frequency": frequency,
                "bucket_info": _bucket_info(items, _ar_error(items)),
                "subsets": subsets,
            }
        )
        for folder, counts in frequency.items():
            tags.setdefault(folder, counts)  # a folder in several datasets counts once, as in kohya
        for subset, meta in zip(dataset.subsets, subsets, strict=True):
            name = meta.get("metadata_file") or (None if subset.is_reg else meta.get("image_dir"))
            if name is not None:
                unique, number = name, 2
                while unique in dirs:
                    unique, number = f"{name} ({number})", number + 1
                dirs[unique] = {"n_repeats": subset.num_repeats, "img_count": meta["img_count"]}
    return {
        "ss_datasets": json.dumps(datasets),
        "ss_tag_frequency": json.dumps(tags),
        "ss_dataset_dirs": json.dumps(dirs),
    }


def _subset_metadata(subset, items: list[TrainItem], config: TrainConfig) -> dict[str, Any]:
    """One subset as kohya describes it in ss_datasets. Its images: those in its image_dir (a metadata subset:
    its dataset's images from no folder subset)."""
    augment = subset.augment or config
    if subset.image_dir is not None and subset.metadata_file is None:
        mine = [i for i in items if i.image_path is not None and i.image_path.parent == subset.image_dir]
    else:
        mine = [i for i in items if not i.is_reg]
    meta: dict[str, Any] = {
        "img_count": len(_unique_images(mine)),
        "num_repeats": subset.num_repeats,
        "color_aug": bool(augment.color_aug),
        "flip_aug": bool(augment.flip_aug),
        "random_crop": bool(augment.random_crop),
        "shuffle_caption": bool(augment.shuffle_caption),
        "keep_tokens": augment.keep_tokens,
        "keep_tokens_separator": augment.keep_tokens_separator,
        "secondary_separator": augment.secondary_separator,
        "enable_wildcard": bool(augment.enable_wildcard),
        "caption_prefix": augment.caption_prefix,
        "caption_suffix": augment.caption_suffix,
    }
    if subset.image_dir is not None:
        meta["image_dir"] = subset.image_dir.name
    if subset.metadata_file is None:
        meta["class_tokens"] = subset.class_tokens
        meta["is_reg"] = subset.is_reg
    else:
        meta["metadata_file"] = subset.metadata_file.name
    return meta


def _network_args(config: TrainConfig, spec) -> dict[str, str]:
    """kohya's net_kwargs: network_args as key -> text, LoCon's as the network has them (also when SD-Train's own
    conv_dim / conv_alpha keys set it)."""
    args = {key.strip(): text.strip() for key, _, text in (str(e).partition("=") for e in config.network_args)}
    if spec and spec.conv_rank:
        args.update(conv_dim=str(spec.conv_rank), conv_alpha=str(spec.conv_alpha))
    return args


def base_model_version(model: SDModel) -> str:
    """kohya's ss_base_model_version: sd_v1, sd_v2, sd_v2_v (768-v) or sdxl_base_v1-0."""
    if model.version == "sdxl":
        return "sdxl_base_v1-0"
    return "sd_v1" if model.version == "sd1" else "sd_v2_v" if model.v_prediction else "sd_v2"


def lora_metadata(trainer: Trainer, finished: bool) -> dict[str, str]:
    config, model = trainer.config, trainer.model
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
        "ss_num_batches_per_epoch": str(trainer.batches_per_epoch),
        "ss_num_epochs": str(trainer.num_epochs),
        "ss_max_train_steps": str(trainer.total_steps),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_network_module": config.network_module or "networks.lora",
        "ss_network_dim": str(spec.rank if spec else config.network_dim),  # dim_from_weights: the file's
        "ss_network_alpha": str(spec.alpha if spec else config.network_alpha),
        "ss_network_dropout": str(config.network_dropout),
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": str(bool(_value(config, "full_fp16", False))),
        "ss_v2": str(model.version == "sd2"),
        "ss_base_model_version": base_model_version(model),
        "ss_clip_skip": str(config.clip_skip),
        "ss_max_token_length": str(config.max_token_length),
        "ss_cache_latents": str(not trainer.vae_needed()),
        "ss_seed": str(config.seed),
        "ss_lowram": _kohya_value(config, "lowram", False),
        "ss_noise_offset": str(config.noise_offset),
        "ss_multires_noise_iterations": _kohya_value(config, "multires_noise_iterations"),
        "ss_multires_noise_discount": _kohya_value(config, "multires_noise_discount", 0.3),
        "ss_adaptive_noise_scale": _kohya_value(config, "adaptive_noise_scale"),
        "ss_zero_terminal_snr": _kohya_value(config, "zero_terminal_snr", False),
        "ss_sd_scripts_commit_hash": "(unknown)",  # kohya's value outside a git checkout; this is not sd-scripts
        "ss_scale_weight_norms": _kohya_value(config, "scale_weight_norms"),
        "ss_ip_noise_gamma": _kohya_value(config, "ip_noise_gamma"),
        "ss_debiased_estimation": str(bool(_value(config, "debiased_estimation_loss", False))),
        "ss_noise_offset_random_strength": _kohya_value(config, "noise_offset_random_strength", False),
        "ss_ip_noise_gamma_random_strength": _kohya_value(config, "ip_noise_gamma_random_strength", False),
        "ss_loss_type": str(config.loss_type),  # v0.9's loss keys; ss_huber_scale from later sd-scripts
        "ss_huber_schedule": str(config.huber_schedule),
        "ss_huber_c": str(config.huber_c),
        "ss_huber_scale": str(config.huber_scale),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_optimizer": trainer.optimizer_description,
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_caption_dropout_rate": str(config.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": _kohya_value(config, "caption_tag_dropout_rate", 0.0),
        "ss_caption_dropout_every_n_epochs": str(config.caption_dropout_every_n_epochs or None),  # kohya: None
        "ss_face_crop_aug_range": _kohya_value(config, "face_crop_aug_range"),
        "ss_prior_loss_weight": str(config.prior_loss_weight),
        "ss_batch_size_per_device": str(config.train_batch_size),
        "ss_total_batch_size": str(
            config.train_batch_size * config.gradient_accumulation_steps * trainer.accelerator.num_processes
        ),
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_flip_aug": str(config.flip_aug),
        "ss_shuffle_caption": str(config.shuffle_caption),
        "ss_enable_bucket": str(bool(getattr(config, "enable_bucket", True))),  # SD-Train buckets unless told not to
        "ss_bucket_no_upscale": _kohya_value(config, "bucket_no_upscale", False),
        "ss_color_aug": _kohya_value(config, "color_aug", False),
        "ss_random_crop": _kohya_value(config, "random_crop", False),
        "ss_min_bucket_reso": str(config.min_bucket_reso),
        "ss_max_bucket_reso": str(config.max_bucket_reso),
        "ss_keep_tokens": str(config.keep_tokens),
        **vae_metadata(config.vae),
        **base_model_metadata(model),
        "ss_steps": str(trainer.position.step),
        "ss_epoch": str(trainer.position.epochs_reached),
    }
    if config.dataset_config:
        meta = {k: v for k, v in meta.items() if k not in FLAT_DATASET_KEYS}
    meta.update(_dataset_metadata(trainer))
    if finished:
        meta["ss_training_finished_at"] = str(time.time())
    comment = trainer.stop_note or _value(config, "training_comment")
    network_args = _network_args(config, spec)
    if network_args:  # kohya writes its network_args only when there are some
        meta["ss_network_args"] = json.dumps(network_args)
    # A cancelled run's LoRA says so wherever its metadata is shown; unset: "None", as kohya writes it.
    meta["ss_training_comment"] = str(comment or None)
    if config.no_metadata:
        meta = {k: v for k, v in meta.items() if k in MINIMUM_KEYS}
    meta[OWNER_KEY] = config.output_name
    title = config.output_name
    spec_entries = lora_model_spec(model.version, model.v_prediction, title, resolution)
    if config.min_timestep is not None or config.max_timestep is not None:  # kohya's model-spec timestep range
        spec_entries["modelspec.timestep_range"] = f"{config.min_timestep or 0},{_or(config.max_timestep, 1000)}"
    return {**meta, **spec_entries}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def vae_metadata(vae: str | None) -> dict[str, str]:
    """kohya's ss_vae_name (only with a vae) and, for a VAE file, ss_vae_hash (the old 8-digit hash) and
    ss_new_vae_hash (its sha256); the file name without its folder."""
    if not vae:
        return {}
    path = Path(vae)
    if not path.exists():  # a hub id
        return {"ss_vae_name": vae}
    meta = {"ss_vae_name": path.name}
    if path.is_file():
        meta["ss_vae_hash"], meta["ss_new_vae_hash"] = file_hashes(path)
    return meta


# --- file formats and old saves (kohya's save_model_as, save_last_n_*) ---------------------------------------------


def save_extension(config: TrainConfig) -> str:
    """The saved file's extension for save_model_as; "" for a diffusers model folder."""
    return "" if config.save_model_as.startswith("diffusers") else f".{config.save_model_as}"


def write_lora(path: Path, state: dict, metadata: dict[str, str], config: TrainConfig) -> Path:
    """safetensors with the metadata; ckpt/pt as kohya's save_weights writes them: the bare state dict, no metadata."""
    from lib_sdtrain.network.kohya_file import SAVE_DTYPES, save_lora
    from lib_sdtrain.utils.files import atomic_path

    if config.save_model_as == "safetensors":
        return save_lora(state, path, metadata, config.save_precision)
    dtype = SAVE_DTYPES[config.save_precision]
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}, tmp)
    return path


def write_checkpoint(path: Path, model: SDModel, config: TrainConfig, position: Any, metadata: dict[str, str]) -> Path:
    """A fine-tuned model in save_model_as: one ldm-layout .safetensors (with `metadata`), kohya's .ckpt pickle
    ({"state_dict", "epoch", "global_step"}), or a diffusers folder (.bin; .safetensors with diffusers_safetensors)."""
    from lib_sdtrain.models.saving import save_sd_checkpoint, sd_model_to_ldm
    from lib_sdtrain.network.kohya_file import SAVE_DTYPES
    from lib_sdtrain.utils.files import atomic_path

    dtype = SAVE_DTYPES[config.save_precision]
    if config.save_model_as == "safetensors":
        return save_sd_checkpoint(model, path, dtype=dtype, metadata=metadata)
    if config.save_model_as.startswith("diffusers"):
        return _write_diffusers(path, model, dtype, safe=config.save_model_as == "diffusers_safetensors")
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in sd_model_to_ldm(model).items()
    }
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "epoch": position.epoch, "global_step": position.step}, tmp)
    return path


def _write_diffusers(folder: Path, model: SDModel, dtype: torch.dtype, safe: bool) -> Path:
    """A diffusers model folder, written beside and renamed into place so a crash leaves no half folder."""
    import copy
    import shutil

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    names = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if model.text_encoder_2 is not None else ())
    parts = {name: copy.deepcopy(getattr(model, name)).to("cpu", dtype) for name in names}
    pipe: Any
    if model.version == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **parts, tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, scheduler=model.noise_scheduler()
        )
    else:
        pipe = StableDiffusionPipeline(
            **parts, tokenizer=model.tokenizer, scheduler=model.noise_scheduler(), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp, safe_serialization=safe)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def epoch_save_interval(config: TrainConfig, num_epochs: int) -> int | None:
    """save_every_n_epochs, or kohya's save_n_epoch_ratio (which replaces it): epochs / ratio, at least 1."""
    if config.save_n_epoch_ratio:
        return math.floor(num_epochs / config.save_n_epoch_ratio) or 1
    return config.save_every_n_epochs


def epoch_to_remove(epoch: int, interval: int, keep: int | None) -> int | None:
    """kohya's get_remove_epoch_no: after saving epoch `epoch`, the epoch save that falls out of the last `keep`."""
    if not keep:
        return None
    old = epoch - interval * keep
    return old if old > 0 else None


def step_to_remove(step: int, interval: int, keep: int | None) -> int | None:
    """kohya's get_remove_step_no: the step save older than the last `keep` steps (a multiple of `interval`)."""
    if not keep:
        return None
    old = step - keep - 1
    old -= old % interval
    return old if old > 0 else None


def remove_old_save(path: Path, say: Callable[[str], None]) -> None:
    """Delete an older save (file or folder) that save_last_n_* no longer keeps; a missing one is fine."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.is_file():
        path.unlink()
    else:
        return
    say(f"Removed old save {path}")
