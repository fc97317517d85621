"""The one check every path passes before a job starts, whatever it came from: the job's options, a config file,
a dataset_config's subsets, a preset or a previous run's config (both reach a job as its options), and the files a
dataset lists (its images, their cached latents).

Each option declares what it holds (lib_sdtrain.utils.path_kinds.PathKind): training options in the schema, the
CLI stages' options where their parsers add them. A value of a path kind must be a place the host lets SD-Train use
(host.check_path_allowed: anything on a local server; only SD-Train's own folders when it listens on the network,
links resolved, so a link inside an allowed folder that points outside it is refused too). Names and extensions
are checked for their shape everywhere. A refusal is an InputError naming the field, raised before any file that
the value names is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lib_sdtrain.errors import ConfigError, InputError, SDTrainError
from lib_sdtrain.host.types import LOADED_CHECKPOINT
from lib_sdtrain.utils.path_kinds import PathKind, check_shape, is_hub_id


def check_values(values: Mapping[str, Any], kinds: Mapping[str, PathKind], where: str = "") -> None:
    """Check each value whose name has a kind; lists (network_args) entry by entry. Values of the wrong type are
    left to the type checks that follow. `where` prefixes the message (e.g. "dataset_config subset 2: ")."""
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is None or value is None:
            continue
        for entry in value if isinstance(value, list | tuple) else [value]:
            if isinstance(entry, str | Path) and str(entry) != "":
                check_value(name, str(entry), kind, where)


def check_value(name: str, value: str, kind: PathKind, where: str = "") -> None:
    from lib_sdtrain import host

    try:
        check_shape(name, value, kind)
    except ValueError as e:
        raise InputError(name, f"{where}{e}") from None
    if not kind.is_path or (kind is PathKind.MODEL and (value == LOADED_CHECKPOINT or is_hub_id(value))):
        return
    try:
        host.current().check_path_allowed(value, name)
    except SDTrainError as e:
        raise InputError(name, f"{where}{e}") from None
    except RuntimeError:  # Path.resolve on a link that points at itself, directly or through others
        raise InputError(name, f"{where}{name} {value} is a symbolic link loop.") from None
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise InputError(name, f"{where}{name} {value[:80]} cannot be used: {why}") from None


def check_files(name: str, paths: Iterable[Path | None], what: str) -> None:
    """Every file a stage is about to read (a dataset's images, their latents) is inside the folders SD-Train may
    use: a link in a dataset folder, or a metadata key with a full path, cannot reach beyond them. Checked only
    where the host restricts files (a local server may read anything its user can)."""
    from lib_sdtrain import host

    current = host.current()
    if current.file_access_allowed():
        return
    for path in paths:
        if path is None:
            continue
        try:
            current.check_path_allowed(path, what)
        except SDTrainError as e:
            raise InputError(name, str(e)) from None
        except (RuntimeError, OSError, ValueError):
            raise InputError(name, f"The {what} {path} cannot be used (a link loop or an unreadable path).") from None


def check_image_folder_files(name: str, folder: Path, recursive: bool) -> None:
    """The images a caption, tag, merge, buckets or report job will open, each resolved (links followed)."""
    from lib_sdtrain import host
    from lib_sdtrain.dataset.images import list_images

    if host.current().file_access_allowed() or not folder.is_dir():
        return
    check_files(name, list_images(folder, recursive), "image")


def load_train_config(config_file: str | None, options: Mapping[str, Any], default_output_dir: str) -> Any:
    """The TrainConfig a job (or the form's "load a previous run") gets from a config file and options, each path
    checked before anything it names is read: the config file before it is opened, its values (and the
    options) before a dataset_config they name is read, then the whole loaded config and its dataset."""
    from lib_sdtrain.train.options import path_kinds
    from lib_sdtrain.train.settings import config_file_values, config_from_dict, validate_config

    kinds = path_kinds()
    check_values({"config_file": config_file}, {"config_file": PathKind.READ_FILE})
    check_values(options, kinds)
    try:
        values = config_file_values(config_file, dict(options))
    except ConfigError as e:
        raise InputError("config_file", str(e)) from None
    values.setdefault("output_dir", default_output_dir)  # kohya's default "output" is the server's working folder
    check_values(values, kinds)
    try:
        config = config_from_dict(values)
        validate_config(config)
    except InputError:
        raise
    except ConfigError as e:
        raise InputError(field_in(str(e), values), str(e)) from None
    return config


def field_in(message: str, names: Iterable[str]) -> str:
    """The option a message is about (the longest name it mentions), for the form to show it there."""
    return max((name for name in names if name in message), key=len, default="")


def check_train_config(config: Any) -> None:
    """A loaded training config's paths: its options (again, now that the config file's and the preset's values
    are in), each dataset_config subset's image_dir and metadata_file, and the files of the dataset."""
    from lib_sdtrain.train.config import config_values
    from lib_sdtrain.train.options import path_kinds

    check_values(config_values(config), path_kinds())
    if config.dataset_config:
        from lib_sdtrain.train.dataset_config import read_dataset_config

        for index, subset in enumerate(read_dataset_config(config.dataset_config, config).subsets, 1):
            where = f"dataset_config subset {index}: "
            check_values(
                {"image_dir": subset.image_dir, "metadata_file": subset.metadata_file},
                {"image_dir": PathKind.READ_FOLDER, "metadata_file": PathKind.READ_FILE},
                where,
            )
    _check_dataset_files(config)


def _check_dataset_files(config: Any) -> None:
    from lib_sdtrain import host

    if host.current().file_access_allowed():
        return  # collecting a large dataset's items twice is only worth it where files are restricted
    from lib_sdtrain.train.data import collect_items

    field = "dataset_config" if config.dataset_config else "train_data_dir"
    items = collect_items(config)
    check_files(field, (item.image_path for item in items), "training image")
    check_files(field, (item.latents_path for item in items), "cached latents file")
