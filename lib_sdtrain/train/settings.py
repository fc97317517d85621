"""Reading a training config: flat kohya keys from a TOML file, a dict and overrides (command-line flags, a form),
each value checked against the option schema and the kohya key table, then the options checked against each other
(validate_config). It sits above the declarations (config.py), the schema (options.py) and the modules whose rules
it applies (dataset_config, optim, noise_and_loss), none of which import it.

    config = load_config("lora.toml", {"max_train_steps": 200})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.config import (
    KNOWN_KEYS,
    TrainConfig,
    flatten_toml,
    parse_network_args,
    read_toml,
    unknown_key_error,
)
from lib_sdtrain.train.dataset_config import read_dataset_config
from lib_sdtrain.train.kohya_keys import ACCEPTED_OUTSIDE_SCHEMA, check_accepted_value, refusal
from lib_sdtrain.train.noise_and_loss import check_options, timestep_range
from lib_sdtrain.train.optim import check_optimizer_settings
from lib_sdtrain.train.options import check_schema_values, coerce_value, option_by_name


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat kohya-style keys, each type-checked against the option schema; unknown keys raise
    ConfigError with a suggestion."""
    known: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in values.items():
        if key in KNOWN_KEYS:
            known[key] = coerce_value(option_by_name(key), value)
        elif key in ACCEPTED_OUTSIDE_SCHEMA:
            check_accepted_value(key, value)
            ignored[key] = value
        elif (reason := refusal(key)) is not None:
            raise ConfigError(f"{key} is not supported by SD-Train: {reason}.")
        else:
            raise unknown_key_error(key)
    if known.get("dataset_config"):
        known.update(_dataset_settings(known))
    return TrainConfig(**known, ignored=ignored, given=frozenset(known))


def _dataset_settings(known: dict[str, Any]) -> dict[str, Any]:
    """The training settings a dataset_config's [[datasets]] (or [general]) sets; they win over the config file's,
    as in kohya. Reading it here also refuses a bad dataset_config before anything starts."""
    return read_dataset_config(known["dataset_config"], TrainConfig(**known)).settings


def config_file_values(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat values of the TOML at `path` with `overrides` applied (CLI flags win, as in kohya), not yet checked:
    a job checks their paths before anything they name (a dataset_config) is read."""
    values: dict[str, Any] = {}
    if path is not None:
        values = flatten_toml(read_toml(path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read `path` (TOML), apply `overrides`, validate."""
    config = config_from_dict(config_file_values(path, overrides))
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """ConfigError for the first value its option does not allow, and for options that contradict each other
    or need one another; before anything is read or loaded."""
    check_schema_values(config)  # every value's type, choices and range, as the option schema says
    if not config.pretrained_model_name_or_path:
        raise ConfigError("pretrained_model_name_or_path is required: the base model to train from.")
    if not config.train_data_dir and not config.dataset_config:
        raise ConfigError("train_data_dir is required: the folder with the training images (or a dataset_config).")
    if config.reg_data_dir and config.in_json and not config.dataset_config:
        raise ConfigError(
            "reg_data_dir needs the N_name folder layout, not in_json (kohya ignores it with in_json); remove "
            "one, or describe both in a dataset_config."
        )
    for name, needs in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if getattr(config, name) and config.mixed_precision != needs:
            raise ConfigError(f"{name} needs mixed_precision = {needs!r}, not {config.mixed_precision!r}.")
    if config.network_train_unet_only and config.network_train_text_encoder_only:
        raise ConfigError("network_train_unet_only and network_train_text_encoder_only exclude each other.")
    _check_network_args(config)
    _check_noise_and_loss(config)
    if config.is_lora and config.save_model_as.startswith("diffusers"):
        raise ConfigError(
            f"save_model_as = {config.save_model_as!r} is for full fine-tunes; a LoRA is saved as safetensors, "
            "ckpt or pt, as in kohya."
        )
    check_optimizer_settings(config)


def _check_noise_and_loss(config: TrainConfig) -> None:
    """The noise, timestep and loss options (lib_sdtrain.train.noise_and_loss), and the LoRA options only a
    LoRA reads; the v-prediction checks are repeated against the loaded model's objective."""
    check_options(config, True if config.v_parameterization else None)
    timestep_range(config.min_timestep, config.max_timestep, 1000)
    lora_only = ("dim_from_weights", "scale_weight_norms")
    if not config.is_lora and (config.dim_from_weights or config.scale_weight_norms or config.network_multiplier != 1):
        raise ConfigError(f"{', '.join(lora_only)} and network_multiplier apply to a LoRA (network_module).")
    if config.dim_from_weights and not config.network_weights:
        raise ConfigError("dim_from_weights needs network_weights: the LoRA file to read the dims from.")


def _check_network_args(config: TrainConfig) -> None:
    args = parse_network_args(config.network_args)
    for key in ("conv_dim", "conv_alpha"):
        own = getattr(config, key)
        if key in args and own is not None and own != args[key]:
            raise ConfigError(f"{key} = {own} and network_args {key}={args[key]} disagree; set it in one place.")
