"""What kind of value a text option holds, so that one check can run on every path wherever it came from.

Every text option says its kind where it is declared: a training option in its `opt(..., kind=...)`, a command-line
option through `add_argument(..., kind=...)` below. lib_sdtrain.jobs.access checks each value of a path kind
against the host's folders (only SD-Train's own when the server listens on the network), and the shape of names and
extensions everywhere, before any work starts.

    check_shape("caption_extension", "../x", PathKind.SUFFIX)   -> ValueError naming the option
    is_hub_id("stabilityai/stable-diffusion-xl-base-1.0")        -> True
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from lib_sdtrain.utils.files import check_safe_name

MAX_TEXT_LENGTH = 4096
"""Longest text any option takes (a path, a prompt, a caption prefix): longer values are refused, not processed."""
MAX_PATH_PART = 255
"""Longest file or folder name most file systems allow; longer ones are refused with a message, not an OSError."""


class PathKind(Enum):
    TEXT = "text"
    NAME = "file name"  # joined to a folder of ours: output_name, log_prefix
    SUFFIX = "file extension"  # appended to an image's stem: caption_extension
    READ_FILE = "file"
    READ_FOLDER = "folder"
    WRITE_FILE = "file to write"
    WRITE_FOLDER = "folder to write"
    MODEL = "model file, folder or Hugging Face hub id"

    @property
    def is_path(self) -> bool:
        return self not in (PathKind.TEXT, PathKind.NAME, PathKind.SUFFIX)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
_SUFFIX = re.compile(r"^\.?[A-Za-z0-9_][A-Za-z0-9_.\-]{0,31}$")


def is_hub_id(value: str) -> bool:
    """A Hugging Face hub id ("namespace/name") that is not also a local file or folder: it is downloaded, not read
    from the disk, so the folder rules do not apply to it."""
    return bool(_HUB_ID.match(value)) and ".." not in value and not Path(value).exists()


def check_shape(name: str, value: Any, kind: PathKind) -> None:
    """ValueError naming `name` when a text value cannot be what its kind says: too long, a name that would leave
    its folder, an extension holding a path, a path with a NUL byte or an over-long part."""
    if not isinstance(value, str):
        return
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"{name} is {len(value)} characters long; at most {MAX_TEXT_LENGTH} are allowed.")
    if kind is PathKind.NAME and value:
        check_safe_name(value, name)
    elif kind is PathKind.SUFFIX and value and (not _SUFFIX.match(value) or ".." in value):
        raise ValueError(
            f"{name} = {value[:40]!r} is not a file extension: use a dot and letters or digits such as .txt or "
            ".caption (no folders, at most 32 characters)."
        )
    elif kind.is_path and value:
        if "\x00" in value:
            raise ValueError(f"{name} contains a NUL character, which no path can hold.")
        longest = max((len(part) for part in re.split(r"[/\\]", value)), default=0)
        if longest > MAX_PATH_PART:
            raise ValueError(f"{name} has a file or folder name of {longest} characters; at most {MAX_PATH_PART}.")


def add_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, kind: PathKind,
                 **kwargs: Any) -> argparse.Action:  # fmt: skip
    """parser.add_argument for a text option, recording what it holds (see kind_of); its value's shape is checked
    as it is parsed (check_shape), so the CLI says what is wrong instead of failing later."""
    name = flags[0].lstrip("-")
    kwargs["type"] = ShapeChecked(kind, name, kwargs.get("type") or str)
    action = parser.add_argument(*flags, **kwargs)
    action.path_kind = kind  # type: ignore[attr-defined]
    return action


@dataclass(frozen=True)
class ShapeChecked:
    """An argparse `type` that runs check_shape, then converts (str or Path)."""

    kind: PathKind
    name: str
    convert: Callable[[str], Any] = str

    def __call__(self, value: str) -> Any:
        try:
            check_shape(self.name, value, self.kind)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return self.convert(value)


def kind_of(action: argparse.Action) -> PathKind | None:
    """The kind recorded by add_argument; None for flags and numbers (which hold no text)."""
    return getattr(action, "path_kind", None)


def takes_text(action: argparse.Action) -> bool:
    """Whether an argparse option takes free text (so it needs a kind): not a flag, a count or a number."""
    if (
        action.nargs == 0
        or action.choices is not None
        or isinstance(action, argparse._HelpAction | argparse._VersionAction)
    ):
        return False  # a flag, or a value from a fixed list (which is no path)
    return action.type in (None, str, Path) or isinstance(action.type, ShapeChecked)


def argument_kinds(parser: argparse.ArgumentParser) -> dict[str, PathKind]:
    """{dest: kind} of a command's text options (an old spelling shares its dest, and so its kind)."""
    return {a.dest: kind for a in parser._actions if (kind := kind_of(a)) is not None}


def check_kinds_declared(parser: argparse.ArgumentParser, command: str) -> None:
    """TypeError at start-up for a text option declared without a kind, so no path can be added unchecked."""
    kinds = argument_kinds(parser)
    missing = sorted({a.dest for a in parser._actions if takes_text(a) and a.dest not in kinds})
    if missing:
        raise TypeError(f"sdtrain {command}: declare what {', '.join(missing)} holds with path_kinds.add_argument")
