"""Training settings under kohya sd-scripts' names, read from a TOML `--config_file` like the tutorial's.

Top-level tables are flattened one level, as kohya does ([training_arguments] output_dir = ... is output_dir).
Unlike kohya, an unknown key is an error naming the key and the closest known one: a misspelt option that is
silently ignored is the trap users of kohya fall into most.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from lib_sdtrain.errors import ConfigError

# Options kohya accepts that change nothing here (speed switches this implementation does differently, or features
# not built yet). They are accepted so the tutorial's config files load, and named in a warning.
IGNORED_KEYS = frozenset(
    {
        "xformers", "mem_eff_attn", "sdpa", "lowram", "debug_dataset", "vae_batch_size",
        "persistent_data_loader_workers",
        "log_prefix", "save_n_epoch_ratio", "save_last_n_epochs", "save_last_n_epochs_state", "no_metadata",
        "training_comment", "sample_sampler", "save_model_as", "color_aug", "face_crop_aug_range",
        "token_warmup_min", "token_warmup_step", "caption_dropout_every_n_epochs", "lr_scheduler_power",
        "max_grad_norm_type", "full_fp16", "full_bf16", "v2", "cache_latents", "cache_latents_to_disk",
        "max_data_loader_n_workers", "enable_bucket", "bucket_no_upscale", "random_crop", "network_args",
        "optimizer_args", "lr_scheduler_num_cycles", "caption_tag_dropout_rate", "scale_v_pred_loss_like_noise_pred",
    }
)  # fmt: skip

NETWORK_MODULES = ("networks.lora", "lycoris.kohya")


@dataclass
class TrainConfig:
    # model
    pretrained_model_name_or_path: str = ""
    tokenizer: str | None = None
    v_parameterization: bool = False
    clip_skip: int = 1
    # data
    train_data_dir: str = ""
    in_json: str | None = None
    dataset_repeats: int = 1
    caption_extension: str = ".caption"
    resolution: str = "512,512"
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    max_token_length: int = 75
    flip_aug: bool = False
    # network (None: full fine-tune)
    network_module: str | None = None
    network_dim: int = 4
    network_alpha: float = 1.0
    network_dropout: float = 0.0
    conv_dim: int | None = None
    conv_alpha: float | None = None
    network_train_unet_only: bool = False
    network_train_text_encoder_only: bool = False
    train_text_encoder: bool = False  # full fine-tune: also train the text encoder
    network_weights: str | None = None
    # optimisation
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer_type: str = "AdamW"
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 1600
    max_train_epochs: int | None = None
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    seed: int = 42
    # outputs
    output_dir: str = "output"
    output_name: str = "last"
    save_precision: str = "fp16"
    save_every_n_epochs: int | None = None
    save_every_n_steps: int | None = None
    save_state: bool = False
    resume: str | None = None
    logging_dir: str | None = None
    sample_every_n_steps: int | None = None
    sample_every_n_epochs: int | None = None
    sample_prompts: str | None = None
    ignored: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lora(self) -> bool:
        return self.network_module is not None

    def validate(self) -> None:
        if not self.pretrained_model_name_or_path:
            raise ConfigError("pretrained_model_name_or_path is required: the base model to train from.")
        if not self.train_data_dir:
            raise ConfigError("train_data_dir is required: the folder with the training images.")
        if self.network_module is not None and self.network_module not in NETWORK_MODULES:
            raise ConfigError(f"network_module {self.network_module!r} is not supported; use 'networks.lora'.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}.")
        if self.max_token_length not in (75, 150, 225):
            raise ConfigError(f"max_token_length must be 75, 150 or 225, not {self.max_token_length}.")
        if self.clip_skip < 1:
            raise ConfigError("clip_skip must be 1 or more (1 = the last layer).")
        for name in (
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "network_dim",
            "dataset_repeats",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise ConfigError("network_train_unet_only and network_train_text_encoder_only exclude each other.")

    @property
    def resolution_size(self) -> tuple[int, int]:
        from lib_sdtrain.prepare.buckets import parse_resolution

        return parse_resolution(self.resolution)


KNOWN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.name != "ignored")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat kohya-style keys; unknown keys raise ConfigError with a suggestion."""
    known: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in values.items():
        if key in KNOWN_KEYS:
            known[key] = value
        elif key in IGNORED_KEYS:
            ignored[key] = value
        else:
            close = difflib.get_close_matches(key, sorted(KNOWN_KEYS | IGNORED_KEYS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown setting {key!r}.{hint}")
    config = TrainConfig(**known, ignored=ignored)
    if isinstance(config.resolution, list | tuple):
        config.resolution = ",".join(str(v) for v in config.resolution)
    return config


def flatten_toml(data: dict[str, Any]) -> dict[str, Any]:
    """kohya's rule: each top-level table's keys are lifted to the top level."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[inner] = inner_value
        else:
            flat[key] = value
    return flat


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read `path` (TOML), apply `overrides` (CLI flags win, as in kohya), validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file not found: {path}")
        try:
            values = flatten_toml(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path.name} is not valid TOML: {e}") from e
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = config_from_dict(values)
    config.validate()
    return config
