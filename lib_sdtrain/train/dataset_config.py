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
key kohya does not know, is refused naming the key. Several `[[datasets]]` blocks train as one, as kohya's
DatasetGroup: each with its own resolution, batch size, buckets and regularisation balance, and a batch never mixes
two datasets.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib_sdtrain.errors import ConfigError, shorten
from lib_sdtrain.train.config import TrainConfig, read_toml
from lib_sdtrain.train.options import OPTIONS, Option, coerce_value, option_by_name
from lib_sdtrain.utils.path_kinds import PathKind

AUGMENT_KEYS = tuple(o.name for o in OPTIONS if o.per_subset)
"""The caption and image settings kohya sets per subset (opt(..., per_subset=True) in config.py)."""


def _augment_class() -> type:
    hints = typing.get_type_hints(TrainConfig)
    fields = [(o.name, hints[o.name], dataclasses.field(default=o.default)) for o in OPTIONS if o.per_subset]
    doc = "One subset's caption and image settings, under TrainConfig's names, types and defaults."
    return dataclasses.make_dataclass("Augment", fields, frozen=True, namespace={"__doc__": doc})


if TYPE_CHECKING:
    Augment = TrainConfig  # for the type checker: the same names and types, so a TrainConfig serves as one
else:
    Augment = _augment_class()


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
class Dataset:
    """One `[[datasets]]` block: kohya builds one dataset (buckets, batches, regularisation balance) from it."""

    settings: dict[str, Any]  # TrainConfig fields this dataset (or [general]) sets
    subsets: tuple[Subset, ...]


@dataclass(frozen=True)
class DatasetSpec:
    settings: dict[str, Any]  # TrainConfig fields that every dataset sets alike (they replace the config's)
    datasets: tuple[Dataset, ...]

    @property
    def subsets(self) -> tuple[Subset, ...]:
        return tuple(s for d in self.datasets for s in d.subsets)


# Dataset-level keys SD-Train implements -> TrainConfig field.
DATASET_FIELDS = {
    "resolution": "resolution",
    "batch_size": "train_batch_size",
    "enable_bucket": "enable_bucket",
    "min_bucket_reso": "min_bucket_reso",
    "max_bucket_reso": "max_bucket_reso",
    "bucket_reso_steps": "bucket_reso_steps",
    "bucket_no_upscale": "bucket_no_upscale",
}
# Subset-level keys SD-Train implements -> (TrainConfig field they fall back to, or None; kohya's default).
SUBSET_FIELDS: dict[str, tuple[str | None, Any]] = {
    "num_repeats": ("dataset_repeats", 1),
    **{key: (key, getattr(Augment(), key)) for key in AUGMENT_KEYS},
    "caption_extension": ("caption_extension", ".caption"),
    "class_tokens": (None, None),
}
# Keys only a subset may carry (kohya's "distinct" schema).
SUBSET_ONLY = ("image_dir", "is_reg", "metadata_file")

# kohya keys SD-Train does not implement -> the values that change nothing (kohya's defaults, or what SD-Train
# always does). Any other value is refused.
_OFF = (None, False)
DATASET_DEFAULT_ONLY: dict[str, tuple] = {
    "network_multiplier": (1, 1.0),
    "validation_split": (0, 0.0),
    "validation_seed": (),  # any value: without a validation split it chooses nothing
    "resize_interpolation": (None,),
}
SUBSET_DEFAULT_ONLY: dict[str, tuple] = {
    "face_crop_aug_range": (None,),
    "custom_attributes": (None, {}),
    "resize_interpolation": (None,),
    "cache_info": (),  # any value: kohya's cache of image sizes only saves start-up time
    "alpha_mask": _OFF,
}
_SUBSET_KEYS = {*SUBSET_FIELDS, *SUBSET_DEFAULT_ONLY}  # may also sit in a dataset or [general]
_DATASET_KEYS = {*DATASET_FIELDS, *DATASET_DEFAULT_ONLY, *_SUBSET_KEYS}
# The subset keys that are not training options (the others are checked as the option they fall back to).
_SUBSET_ONLY_KINDS: dict[str, tuple[type, PathKind | None]] = {
    "image_dir": (str, PathKind.READ_FOLDER),
    "metadata_file": (str, PathKind.READ_FILE),
    "class_tokens": (str, PathKind.TEXT),
    "is_reg": (bool, None),
}


def read_dataset_config(path: str | Path, config: TrainConfig) -> DatasetSpec:
    """The datasets that `path` describes, with kohya's fallbacks to `config`; ConfigError naming any key that
    SD-Train would otherwise ignore."""
    path = Path(path)
    data = read_toml(path, "dataset_config")
    _check_keys(data, {"general", "datasets"}, f"{path.name}: top level")
    general = _table(data.get("general", {}), "[general]")
    _check_keys(general, _DATASET_KEYS, "[general]")
    blocks = data.get("datasets", [])
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"dataset_config {path.name} has no [[datasets]] block.")
    where = "[[datasets]]" if len(blocks) == 1 else "[[datasets]] {}"
    datasets = tuple(
        _dataset(_table(block, where.format(i + 1)), general, config, path, where.format(i + 1))
        for i, block in enumerate(blocks)
    )
    shared = {k: v for k, v in datasets[0].settings.items() if all(d.settings.get(k) == v for d in datasets)}
    return DatasetSpec(shared, datasets)


def _dataset(table: dict, general: dict, config: TrainConfig, path: Path, where: str) -> Dataset:
    _check_keys(table, _DATASET_KEYS | {"subsets"}, where)
    scopes = [table, general]  # nearest first, as kohya searches them
    settings = {field: _value(key, scopes, where) for key, field in DATASET_FIELDS.items()}
    settings = {k: v for k, v in settings.items() if v is not None}
    _check_default_only(DATASET_DEFAULT_ONLY, scopes, where)
    subsets = table.get("subsets", [])
    if not isinstance(subsets, list) or not subsets:
        raise ConfigError(f"dataset_config {path.name}: the {where} block has no [[datasets.subsets]].")
    own = dataclasses.replace(config, **settings)  # the subsets fall back to this dataset's values
    parsed = tuple(_subset(_table(s, f"subset {i + 1}"), i, scopes, own, path.parent) for i, s in enumerate(subsets))
    if any(s.metadata_file for s in parsed) and not all(s.metadata_file for s in parsed):
        raise ConfigError(
            f"dataset_config {where}: subsets with metadata_file (fine-tuning style) and subsets without it (image "
            "folders) cannot share a dataset, as in kohya; put them into separate [[datasets]] blocks."
        )
    return Dataset(settings, parsed)


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
    augment = Augment(**{key: values[key] for key in AUGMENT_KEYS})
    try:
        check_augment(augment)
    except ConfigError as e:
        raise ConfigError(f"dataset_config {where}: {e}") from None
    return Subset(
        image_dir=_path(image_dir, base),
        num_repeats=values["num_repeats"],
        caption_extension=values["caption_extension"],
        class_tokens=values["class_tokens"],
        is_reg=is_reg,
        metadata_file=_path(metadata_file, base),
        augment=augment,
    )


def check_augment(augment: Augment | TrainConfig) -> None:
    """ConfigError for caption settings kohya would fail on (the ranges are the option schema's)."""
    if not augment.caption_separator:
        raise ConfigError('caption_separator must not be empty (kohya\'s default is ",").')


def _path(text: str | None, base: Path) -> Path | None:
    # kohya opens paths from the working folder; a relative one that only exists beside the TOML is found there too.
    if text is None:
        return None
    path = Path(text)
    return base / path if not path.is_absolute() and not path.exists() and (base / path).exists() else path


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"dataset_config {where}: expected a table, not {shorten(value)}.")
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
    """`value` checked as the training option `key` falls back to (type, range, shape), under the key's own name."""

    field = DATASET_FIELDS.get(key) or SUBSET_FIELDS.get(key, (None, None))[0]
    if field is not None:
        option = dataclasses.replace(option_by_name(field), name=key)
    else:
        value_type, kind = _SUBSET_ONLY_KINDS[key]
        option = Option(key, value_type, None, "-", "dataset", kind=kind)
    try:
        return coerce_value(option, value)
    except ConfigError as e:
        raise ConfigError(f"dataset_config {where}: {e}") from None


def _fix_hint(key: str, value: Any) -> str:
    from lib_sdtrain.train.toml_writer import toml_value

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
                        f"dataset_config {where}: {key} = {shorten(value)} is not implemented in SD-Train; "
                        + _fix_hint(key, accepted[-1])
                    )
                break
