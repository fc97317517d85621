"""kohya-keyed TOML from option values, grouped in kohya's tables, which load_config reads back:

config_to_toml({"network_dim": 32, ...})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lib_sdtrain.train.config import KNOWN_KEYS, unknown_key_error
from lib_sdtrain.train.kohya_keys import ACCEPTED_OUTSIDE_SCHEMA
from lib_sdtrain.train.options import CATEGORIES, Option, coerce_value, options_in

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _needs_escape(ch: str) -> bool:
    return ord(ch) < 0x20 or ord(ch) == 0x7F


def _toml_string(text: str) -> str:
    # A literal string keeps Windows paths readable ('C:\models' rather than "C:\\models").
    if "\\" in text and "'" not in text and not any(_needs_escape(ch) for ch in text):
        return f"'{text}'"
    body = "".join(_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if _needs_escape(ch) else ch) for ch in text)
    return f'"{body}"'


def toml_value(value: Any) -> str:
    """One TOML value (bool, int, float, str or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"Cannot write {value!r} ({type(value).__name__}) to TOML")


DEFAULT_TOML_HEADER = (
    "SD-Train training config with kohya sd-scripts' keys (tables only group them).\n"
    "Run it with: sdtrain train --config_file <this file>"
)


def config_to_toml(values: Mapping[str, Any], only_changed: bool = True, header: str | None = None) -> str:
    """kohya-keyed TOML for flat `values`, grouped in CATEGORIES' tables; with `only_changed`, the values that
    differ from the defaults. Every value is type-checked; empty (None) values are left out, as TOML has no null.
    kohya keys SD-Train accepts but does not use are kept, at the top. `header` becomes the leading comment."""
    unknown = [key for key in values if key not in KNOWN_KEYS and key not in ACCEPTED_OUTSIDE_SCHEMA]
    if unknown:
        raise unknown_key_error(unknown[0])
    lines = [f"# {line}".rstrip() for line in (DEFAULT_TOML_HEADER if header is None else header).splitlines()]
    unused = [f"{key} = {toml_value(value)}" for key, value in values.items() if key in ACCEPTED_OUTSIDE_SCHEMA]
    if unused:
        lines += ["", "# kohya settings that SD-Train accepts but does not use", *unused]
    for category, (_, table) in CATEGORIES.items():
        entries = _table_entries(options_in(category), values, only_changed)
        if entries:
            lines += ["", f"[{table}]", *entries]
    return "\n".join(lines) + "\n"


def _table_entries(options: list[Option], values: Mapping[str, Any], only_changed: bool) -> list[str]:
    entries = []
    for option in options:
        if option.name not in values:
            continue
        value = coerce_value(option, values[option.name])
        if value is None or (only_changed and value == option.default):
            continue
        entries.append(f"{option.name} = {toml_value(value)}")
    return entries
