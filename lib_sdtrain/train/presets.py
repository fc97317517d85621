"""Presets: kohya-keyed TOML files of training settings to start from.

Built-in presets ship in lib_sdtrain/train/presets/; user presets are `<name>.toml` files in a folder the caller
chooses (the UI's settings). A preset holds only the values it changes: apply it over the defaults (TrainConfig()),
not over another config, so a setting it leaves out is back at its default. Its first comment line describes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.config import flatten_toml, read_toml
from lib_sdtrain.train.kohya_keys import ACCEPTED_OUTSIDE_SCHEMA
from lib_sdtrain.train.options import OPTIONS, coerce_value, display_value, option_by_name
from lib_sdtrain.train.toml_writer import config_to_toml
from lib_sdtrain.utils.files import atomic_write_text, check_safe_name

BUILTIN_DIR = Path(__file__).with_name("presets")
PRESET_SUFFIX = ".toml"
UNUSED_KEY_HELP = "A kohya setting that SD-Train accepts but does not use."


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    builtin: bool
    values: dict[str, Any] = field(default_factory=dict)  # flat kohya keys, type-checked
    description: str = ""  # the file's first comment line
    error: str = ""  # why a user preset could not be read (then values is empty)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob(f"*{PRESET_SUFFIX}"))


def list_presets(user_dir: Path | None = None) -> list[Preset]:
    """The built-in presets, then the user's (sorted by name). A user file named like a built-in is not listed;
    a user file that fails to load is listed with its error, so one bad file does not hide the others."""
    presets = [read_preset(path, builtin=True) for path in _preset_files(BUILTIN_DIR)]
    taken = {p.name for p in presets}
    for path in _preset_files(user_dir):
        if path.stem in taken:
            continue
        try:
            presets.append(read_preset(path, builtin=False))
        except ConfigError as e:
            presets.append(Preset(path.stem, path, False, description=_description(path), error=str(e)))
    return presets


def load_preset(name: str, user_dir: Path | None = None) -> dict[str, Any]:
    """The flat kohya-keyed values of the preset called `name` (built-ins first), checked against the schema."""
    path = _find_preset(name, user_dir)
    return dict(read_preset(path, builtin=path.parent == BUILTIN_DIR).values)


def save_user_preset(
    name: str, values: dict[str, Any], user_dir: Path, description: str = "", only_changed: bool = True
) -> Path:
    """Write `values` as the user preset `name` (user_dir/<name>.toml, replacing an older one of that name);
    `preset = name` is recorded in it. Names that are not safe file names or that belong to a built-in are refused."""
    _check_name(name)
    if _is_builtin(name):
        raise ConfigError(f"{name!r} is a built-in preset; save yours under another name.")
    header = f"{description.strip() or f'User preset {name}'}\nSaved by SD-Train; apply it over the defaults."
    text = config_to_toml({**values, "preset": name}, only_changed=only_changed, header=header)
    path = Path(user_dir) / f"{name}{PRESET_SUFFIX}"
    atomic_write_text(path, text)
    return path


def describe_preset(values: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, value, help) for each setting in `values`, in the schema's order: what applying a preset changes."""
    rows = [
        (option.name, display_value(values[option.name]), option.help) for option in OPTIONS if option.name in values
    ]
    outside = [(key, value) for key, value in values.items() if key in ACCEPTED_OUTSIDE_SCHEMA]
    rows += [(key, display_value(value), UNUSED_KEY_HELP) for key, value in outside]
    return rows


def read_preset(path: Path, builtin: bool) -> Preset:
    """A preset file, its values checked against the schema; ConfigError names the file and the bad key."""
    raw = flatten_toml(read_toml(path, "Preset"))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = value if key in ACCEPTED_OUTSIDE_SCHEMA else coerce_value(option_by_name(key), value)
        except ConfigError as e:
            raise ConfigError(f"Preset {path.name}: {e}") from None
    return Preset(path.stem, path, builtin, values, _description(path))


def _preset_files(folder: Path | None) -> list[Path]:
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(Path(folder).glob(f"*{PRESET_SUFFIX}"))


def _is_builtin(name: str) -> bool:
    return name in builtin_names()


def _find_preset(name: str, user_dir: Path | None) -> Path:
    _check_name(name)
    for folder in (BUILTIN_DIR, user_dir):
        if folder is not None and (path := Path(folder) / f"{name}{PRESET_SUFFIX}").is_file():
            return path
    known = ", ".join(p.name for p in list_presets(user_dir)) or "none"
    raise ConfigError(f"No preset called {name!r}. Presets: {known}.")


def _check_name(name: str) -> None:
    try:
        check_safe_name(name, "preset name")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _description(path: Path) -> str:
    """The first comment line of a preset file: what the preset is for."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    for line in lines:
        if line.strip().startswith("#"):
            return line.strip().lstrip("#").strip()
    return ""
