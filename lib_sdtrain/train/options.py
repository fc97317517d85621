"""The schema of the training options: one Option per TrainConfig field, built from the help, category and choices
that config.py attaches to each field. It drives `sdtrain train --help`, the type checks of TOML files and command
lines, the TOML writer (toml_writer.py), presets, the README's key table (key_table.py) and the UI's forms, so a new
setting is described once, where it is declared.

    option_by_name("network_dim").help            # what the UI shows beside the field
    coerce_value(option_by_name("learning_rate"), "1e-4")  -> 0.0001
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib_sdtrain.errors import ConfigError, shorten
from lib_sdtrain.train.config import INTERNAL_FIELDS, TrainConfig, unknown_key_error
from lib_sdtrain.utils.path_kinds import PathKind, check_shape

# key -> (title for the UI and the CLI help, TOML table). The tables are kohya's, as its tutorials lay configs out;
# loading flattens them, so they only group the keys for the reader.
CATEGORIES: dict[str, tuple[str, str]] = {
    "model": ("Base model", "model_arguments"),
    "dataset": ("Dataset and captions", "dataset_arguments"),
    "network": ("LoRA network", "additional_network_arguments"),
    "optimizer": ("Optimizer and learning rate", "optimizer_arguments"),
    "training": ("Training", "training_arguments"),
    "saving": ("Saving and resuming", "saving_arguments"),
    "sampling": ("Sample images", "sample_prompt_arguments"),
    "sdtrain": ("SD-Train", "sdtrain"),
}

VALUE_TYPES = (bool, int, float, str, list)
TRAINING_KINDS = ("lora", "locon", "full")  # a LoRA, a LoRA with 3x3 convolutions (LoCon), a full fine-tune
LORA_KINDS = ("lora", "locon")


@dataclass(frozen=True)
class Option:
    name: str  # the kohya key: TOML key, --flag and TrainConfig field
    type: type  # one of VALUE_TYPES
    default: Any
    help: str
    category: str  # a key of CATEGORIES
    choices: tuple | None = None
    optional: bool = False  # None (empty) is allowed
    common: bool = False  # shown in the simple form, not only under "Advanced"
    kind: PathKind | None = None  # what a text or list option holds (None for numbers and switches)
    minimum: float | None = None  # numbers: the smallest allowed value
    maximum: float | None = None  # the largest allowed value
    below: float | None = None  # values must be smaller than this
    per_subset: bool = False  # a dataset_config subset may set it (kohya's per-subset caption and image settings)
    trains: frozenset[str] = frozenset()  # the TRAINING_KINDS it means something for

    @property
    def range_text(self) -> str:
        """The allowed numbers in words ("1 or more", "from 0 to below 1"), empty when any number goes."""
        low = None if self.minimum is None else display_value(self.minimum)
        high = display_value(self.maximum if self.below is None else self.below)
        if self.maximum is None and self.below is None:
            return f"{low} or more" if low is not None else ""
        upper = f"{'below ' if self.below is not None else ''}{high}"
        return f"from {low} to {upper}" if low is not None else f"up to {upper}"

    @property
    def title(self) -> str:
        return CATEGORIES[self.category][0]

    @property
    def table(self) -> str:
        return CATEGORIES[self.category][1]


def _value_type(annotation: Any) -> tuple[type, bool]:
    """(value type, optional) of a field annotation: `int | None` -> (int, True), `list[str]` -> (list, False)."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if rest == [int, float]:  # kohya's int_or_float (lr_warmup_steps: steps, or a ratio below 1)
            rest = [float]
        if len(rest) != 1:
            raise TypeError(f"Unsupported option annotation {annotation!r}: one type, optionally | None")
        annotation = rest[0]
    base = typing.get_origin(annotation) or annotation
    if base not in VALUE_TYPES:
        raise TypeError(f"Unsupported option type {annotation!r}: use one of {VALUE_TYPES}")
    return base, optional


def _option_from_field(f: dataclasses.Field, annotation: Any) -> Option:
    meta = f.metadata
    if not meta.get("help") or meta.get("category") not in CATEGORIES:
        raise TypeError(f"TrainConfig.{f.name} needs opt(...) with a help text and one of {list(CATEGORIES)}")
    value_type, optional = _value_type(annotation)
    kind = meta["kind"] or (PathKind.TEXT if meta["choices"] else None)  # a value from a fixed list is no path
    if value_type in (str, list) and kind is None:
        raise TypeError(f"TrainConfig.{f.name} holds text: say what with opt(..., kind=PathKind.<kind>)")
    default = f.default_factory() if callable(f.default_factory) else f.default
    minimum, maximum, below = meta["range"]
    trains = frozenset(meta["trains"] or (LORA_KINDS if meta["category"] == "network" else TRAINING_KINDS))
    if not trains <= set(TRAINING_KINDS):
        raise TypeError(f"TrainConfig.{f.name}: trains= takes some of {TRAINING_KINDS}")
    return Option(
        f.name, value_type, default, meta["help"], meta["category"], meta["choices"], optional, meta["common"],
        kind, minimum, maximum, below, meta["per_subset"], trains,
    )  # fmt: skip


def _build_options() -> tuple[Option, ...]:
    hints = typing.get_type_hints(TrainConfig)
    fields = (f for f in dataclasses.fields(TrainConfig) if f.name not in INTERNAL_FIELDS)
    return tuple(_option_from_field(f, hints[f.name]) for f in fields)


OPTIONS: tuple[Option, ...] = _build_options()
_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def option_by_name(name: str) -> Option:
    """The option called `name`; ConfigError (naming the closest key) when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise unknown_key_error(name) from None


def path_kinds() -> dict[str, PathKind]:
    """{option: what it holds} for the text options: what lib_sdtrain.jobs.access checks."""
    return {o.name: o.kind for o in OPTIONS if o.kind is not None}


def options_in(category: str) -> list[Option]:
    return [o for o in OPTIONS if o.category == category]


# --- type checks ----------------------------------------------------------------------------------------------------

_EXPECTED = {
    bool: "true or false (bool)",
    int: "a whole number (int)",
    float: "a number such as 1e-4 (float)",
    str: "text (str)",
    list: 'a list such as ["a", "b"] (list)',
}


def _type_error(option: Option, value: Any) -> ConfigError:
    return ConfigError(f"{option.name} = {shorten(value)}: expected {_EXPECTED[option.type]}.")


def _to_bool(option: Option, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _type_error(option, value)


def _to_int(option: Option, value: Any) -> int:
    number = value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            number = _parse_float(option, value, value.strip())  # "4.0" is 4, "4.7" is refused below
    if isinstance(number, bool):  # True is an int to Python, not to a user
        raise _type_error(option, value)
    if isinstance(number, int):
        return number
    if isinstance(number, float) and number.is_integer():  # 4.0 from a UI number box, never 4.7
        return int(number)
    raise _type_error(option, value)


def _parse_float(option: Option, value: Any, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _type_error(option, value) from None


def _to_float(option: Option, value: Any) -> float:
    if isinstance(value, str):  # kohya reads "1e-4" as a number
        number = _parse_float(option, value, value.strip())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise _type_error(option, value)
    if not math.isfinite(number):
        raise ConfigError(f"{option.name} = {shorten(value)}: expected a finite number.")
    return number


def _to_str(option: Option, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _type_error(option, value)


def _to_list(option: Option, value: Any) -> list:
    if isinstance(value, list | tuple):
        return list(value)
    raise _type_error(option, value)


def _to_resolution(option: Option, value: Any) -> str:
    """'512,512', '512', 512 and [512, 512] all name a size; kept as kohya's 'W,H' text."""
    from lib_sdtrain.prepare.buckets import parse_resolution

    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        text = ""
    try:
        parse_resolution(text)
    except ConfigError:
        raise ConfigError(
            f"{option.name} = {shorten(value)}: expected 'width,height' in pixels such as \"512,512\", or one number."
        ) from None
    return text


_COERCERS: dict[type, Callable[[Option, Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    list: _to_list,
}


def _to_steps_or_ratio(option: Option, value: Any) -> int | float:
    """kohya's int_or_float: a number below 1 is a fraction of the run's steps, 1 or more a whole number of
    steps ("10%" is 0.1)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return _to_float(option, value.strip()[:-1]) / 100
    number = _to_float(option, value)
    return number if number < 1 else _to_int(option, value)


_SPECIAL_COERCERS: dict[str, Callable[[Option, Any], Any]] = {
    "resolution": _to_resolution,
    "lr_warmup_steps": _to_steps_or_ratio,
    "lr_decay_steps": _to_steps_or_ratio,
}


def _check_choice(option: Option, value: Any) -> Any:
    """The allowed spelling of `value` (names match case-insensitively, as kohya's optimizer names do)."""
    for choice in option.choices or ():
        if value == choice or (isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower()):
            return choice
    allowed = ", ".join(str(c) for c in option.choices or ())
    raise ConfigError(f"{option.name} = {shorten(value)}: expected one of {allowed}.")


def coerce_value(option: Option, value: Any) -> Any:
    """`value` as the option's type, or ConfigError naming the key, the value and what was expected.

    Text forms are accepted for every type (a command line and a UI text box give text); None only where the
    option is optional; an empty text in an optional number or choice means None (an empty box or dropdown)."""
    if value is None or (value == "" and option.optional and (option.type in (int, float) or option.choices)):
        if option.optional:
            return None
        raise ConfigError(f"{option.name} needs a value: expected {_EXPECTED[option.type]}.")
    coerced = _SPECIAL_COERCERS.get(option.name, _COERCERS[option.type])(option, value)
    if option.choices:
        return _check_choice(option, coerced)
    _check_range(option, coerced)
    _check_text(option, coerced)
    return coerced


def _check_range(option: Option, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    too_low = option.minimum is not None and value < option.minimum
    too_high = (option.maximum is not None and value > option.maximum) or (
        option.below is not None and value >= option.below
    )
    if too_low or too_high:
        raise ConfigError(f"{option.name} = {display_value(value)}: expected a number {option.range_text}.")


MAX_LIST_ITEMS = 256


def _check_text(option: Option, value: Any) -> None:
    """Names, extensions and path texts of the right shape; lists of bounded size holding text."""
    entries = value if isinstance(value, list) else [value]
    if len(entries) > MAX_LIST_ITEMS:
        raise ConfigError(f"{option.name} has {len(entries)} entries; at most {MAX_LIST_ITEMS} are allowed.")
    for entry in entries:
        if isinstance(value, list) and not isinstance(entry, str | int | float | bool):
            raise ConfigError(f"{option.name}: expected a list of texts, not an entry {shorten(entry)}.")
        try:
            check_shape(option.name, entry, option.kind or PathKind.TEXT)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def check_schema_values(config: TrainConfig) -> None:
    """ConfigError for the first value of `config` that its option does not allow (a TrainConfig made in code gets
    the checks a config file gets)."""
    for option in OPTIONS:
        coerce_value(option, getattr(config, option.name))


def display_value(value: Any) -> str:
    """A value as a person reads it in a form or a table (1e-4 rather than 0.0001, empty rather than None)."""
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
