"""kohya's `--dataset_config` TOML: `[general]`, `[[datasets]]` and `[[datasets.subsets]]`.

    [general]
    shuffle_caption = true
    [[datasets]]
    resolution = 512
    batch_size = 2
      [[datasets.subsets]]
      image_dir = "train/sks"
      num_repeats = 10
      class_tokens = "sks girl"
      [[datasets.subsets]]
      image_dir = "reg/girl"
      is_reg = true
      class_tokens = "girl"

As in kohya's config_util, a subset's value comes from the subset, else its dataset, else `[general]`, else the
training config (`dataset_repeats` stands for num_repeats, `train_batch_size` for batch_size), else kohya's default;
dataset-level values (resolution, batch_size, buckets) replace the training config's. A key kohya knows that SD-Train
does not implement is accepted only at kohya's default value (where it changes nothing); any other value, and any
key kohya does not know, is refused naming the key. One `[[datasets]]` block is supported: kohya keeps several
datasets apart (buckets, batch size and regularisation balance each), which SD-Train's single dataset cannot.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.config import TrainConfig, read_toml


@dataclass(frozen=True)
class Augment:
    """Per-subset caption and image augmentation (kohya sets these per subset); the names are TrainConfig's, so a
    TrainConfig serves as the flat layouts' Augment."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    flip_aug: bool = False


@dataclass(frozen=True)
class Subset:
    """One folder (DreamBooth style: image_dir + caption files) or one metadata file (fine-tuning style)."""

    image_dir: Path | None
    num_repeats: int
    caption_extension: str = ".caption"
    class_tokens: str | None = None
    is_reg: bool = False
    metadata_file: Path | None = None
    augment: Augment | None = None  # None: the training config's settings (flat layouts)
    key_base: Path | None = None  # item keys are image paths relative to this (default: image_dir's parent)


@dataclass(frozen=True)
class DatasetSpec:
    settings: dict[str, Any]  # TrainConfig fields that the dataset (or [general]) sets
    subsets: tuple[Subset, ...]


# Dataset-level keys SD-Train implements -> TrainConfig field.
DATASET_FIELDS = {
    "resolution": "resolution",
    "batch_size": "train_batch_size",
    "min_bucket_reso": "min_bucket_reso",
    "max_bucket_reso": "max_bucket_reso",
    "bucket_reso_steps": "bucket_reso_steps",
}
# Subset-level keys SD-Train implements -> (TrainConfig field they fall back to, or None; kohya's default).
SUBSET_FIELDS: dict[str, tuple[str | None, Any]] = {
    "num_repeats": ("dataset_repeats", 1),
    "shuffle_caption": ("shuffle_caption", False),
    "keep_tokens": ("keep_tokens", 0),
    "caption_dropout_rate": ("caption_dropout_rate", 0.0),
    "flip_aug": ("flip_aug", False),
    "caption_extension": ("caption_extension", ".caption"),
    "class_tokens": (None, None),
}
# Keys only a subset may carry (kohya's "distinct" schema).
SUBSET_ONLY = ("image_dir", "is_reg", "metadata_file")

# kohya keys SD-Train does not implement -> the values that change nothing (kohya's defaults, or what SD-Train
# always does). Any other value is refused.
_OFF = (None, False)
DATASET_DEFAULT_ONLY: dict[str, tuple] = {
    "enable_bucket": (True,),  # SD-Train always buckets; one fixed bucket is not implemented yet
    "bucket_no_upscale": _OFF,
    "network_multiplier": (1, 1.0),
    "validation_split": (0, 0.0),
    "validation_seed": (),  # any value: without a validation split it chooses nothing
    "resize_interpolation": (None,),
}
SUBSET_DEFAULT_ONLY: dict[str, tuple] = {
    "color_aug": _OFF,
    "random_crop": _OFF,
    "face_crop_aug_range": (None,),
    "keep_tokens_separator": (None, ""),
    "secondary_separator": (None, ""),
    "caption_separator": (None, ","),
    "enable_wildcard": _OFF,
    "token_warmup_min": (1,),
    "token_warmup_step": (0, 0.0),
    "caption_prefix": (None, ""),
    "caption_suffix": (None, ""),
    "custom_attributes": (None, {}),
    "resize_interpolation": (None,),
    "caption_dropout_every_n_epochs": (0,),
    "caption_tag_dropout_rate": (0, 0.0),
    "cache_info": (),  # any value: kohya's cache of image sizes only saves start-up time
    "alpha_mask": _OFF,
}
_SUBSET_KEYS = {*SUBSET_FIELDS, *SUBSET_DEFAULT_ONLY}  # may also sit in a dataset or [general]
_DATASET_KEYS = {*DATASET_FIELDS, *DATASET_DEFAULT_ONLY, *_SUBSET_KEYS}
_TYPES: dict[str, type] = {
    "batch_size": int, "min_bucket_reso": int, "max_bucket_reso": int, "bucket_reso_steps": int,
    "num_repeats": int, "keep_tokens": int, "shuffle_caption": bool, "flip_aug": bool, "is_reg": bool,
    "caption_dropout_rate": float, "caption_extension": str, "class_tokens": str, "image_dir": str,
    "metadata_file": str,
}  # fmt: skip


def read_dataset_config(path: str | Path, config: TrainConfig) -> DatasetSpec:
    """The dataset that `path` describes, with kohya's fallbacks to `config`; ConfigError naming any key that
    SD-Train would otherwise ignore."""
    path = Path(path)
    data = read_toml(path, "dataset_config")
    _check_keys(data, {"general", "datasets"}, f"{path.name}: top level")
    general = _table(data.get("general", {}), "[general]")
    _check_keys(general, _DATASET_KEYS, "[general]")
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise ConfigError(f"dataset_config {path.name} has no [[datasets]] block.")
    if len(datasets) > 1:
        raise ConfigError(
            f"dataset_config {path.name} has {len(datasets)} [[datasets]] blocks; SD-Train trains one. Put every "
            "folder into one [[datasets]] as [[datasets.subsets]] (kohya balances regularisation images and makes "
            "buckets per dataset, so several datasets would train differently)."
        )
    dataset = _table(datasets[0], "[[datasets]]")
    _check_keys(dataset, _DATASET_KEYS | {"subsets"}, "[[datasets]]")
    scopes = [dataset, general]  # nearest first, as kohya searches them
    settings = {field: _value(key, scopes, "[[datasets]]") for key, field in DATASET_FIELDS.items()}
    settings = {k: v for k, v in settings.items() if v is not None}
    _check_default_only(DATASET_DEFAULT_ONLY, scopes, "[[datasets]]")
    subsets = dataset.get("subsets", [])
    if not isinstance(subsets, list) or not subsets:
        raise ConfigError(f"dataset_config {path.name}: the [[datasets]] block has no [[datasets.subsets]].")
    base = path.parent
    parsed = tuple(_subset(_table(s, f"subset {i + 1}"), i, scopes, config, base) for i, s in enumerate(subsets))
    if any(s.metadata_file for s in parsed) and not all(s.metadata_file for s in parsed):
        raise ConfigError(
            "dataset_config: subsets with metadata_file (fine-tuning style) and subsets without it (image folders) "
            "cannot share a dataset, as in kohya."
        )
    return DatasetSpec(settings, parsed)


def _subset(table: dict, index: int, scopes: list[dict], config: TrainConfig, base: Path) -> Subset:
    where = f"[[datasets.subsets]] {index + 1}"
    _check_keys(table, _SUBSET_KEYS | set(SUBSET_ONLY), where)
    chain = [table, *scopes]
    _check_default_only(SUBSET_DEFAULT_ONLY, chain, where)
    values = {}
    for key, (field, default) in SUBSET_FIELDS.items():
        value = _value(key, chain, where)
        values[key] = value if value is not None else (getattr(config, field) if field else default)
    image_dir = _value("image_dir", [table], where)
    metadata_file = _value("metadata_file", [table], where)
    is_reg = bool(_value("is_reg", [table], where))
    if metadata_file is None and image_dir is None:
        raise ConfigError(f"{where}: image_dir is required (or metadata_file for a fine-tuning subset).")
    if metadata_file is not None and is_reg:
        raise ConfigError(f"{where}: is_reg is for image folders; a metadata_file subset cannot be regularisation.")
    if values["num_repeats"] < 1:
        raise ConfigError(f"{where}: num_repeats must be at least 1, not {values['num_repeats']}.")
    augment = Augment(
        values["shuffle_caption"], values["keep_tokens"], values["caption_dropout_rate"], values["flip_aug"]
    )
    return Subset(
        image_dir=_path(image_dir, base),
        num_repeats=values["num_repeats"],
        caption_extension=values["caption_extension"],
        class_tokens=values["class_tokens"],
        is_reg=is_reg,
        metadata_file=_path(metadata_file, base),
        augment=augment,
    )


def _path(text: str | None, base: Path) -> Path | None:
    # kohya opens paths from the working folder; a relative one that only exists beside the TOML is found there too.
    if text is None:
        return None
    path = Path(text)
    return base / path if not path.is_absolute() and not path.exists() and (base / path).exists() else path


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"dataset_config {where}: expected a table, not {value!r}.")
    return value


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"dataset_config {where}: unknown key {key!r}.{hint}")


def _value(key: str, scopes: list[dict], where: str) -> Any:
    """The nearest scope's value of `key`, type-checked (kohya skips unset values the same way)."""
    for scope in scopes:
        if scope.get(key) is not None:
            return _coerce(key, scope[key], where)
    return None


def _coerce(key: str, value: Any, where: str) -> Any:
    from lib_sdtrain.train.options import Option, coerce_value, option_by_name

    # kohya's resolution is one number or [width, height]; the training option's check accepts both.
    option = option_by_name("resolution") if key == "resolution" else Option(key, _TYPES[key], None, "-", "dataset")
    try:
        return coerce_value(option, value)
    except ConfigError as e:
        raise ConfigError(f"dataset_config {where}: {e}") from None


def _fix_hint(key: str, value: Any) -> str:
    from lib_sdtrain.train.options import toml_value

    if value is None:
        return "remove it."
    shown = "{}" if isinstance(value, dict) else toml_value(value)
    return f"remove it or set {key} = {shown} (what SD-Train does)."


def _check_default_only(keys: dict[str, tuple], scopes: list[dict], where: str) -> None:
    for key, accepted in keys.items():
        for scope in scopes:
            if key in scope:
                value = scope[key]
                if accepted and value not in accepted:
                    raise ConfigError(
                        f"dataset_config {where}: {key} = {value!r} is not implemented in SD-Train; "
                        + _fix_hint(key, accepted[-1])
                    )
                break
