"""Errors that reach the user. Each carries a message that says what went wrong and what to do about it."""

from __future__ import annotations


class SDTrainError(Exception):
    """An expected failure with a message meant for the user (shown as is by the CLI and the UI)."""


class ModelLoadError(SDTrainError):
    """A model file or folder could not be read as a Stable Diffusion model."""


class UnsupportedModelError(ModelLoadError):
    """A valid model of a kind SD-Train cannot handle yet (SDXL, SD3, ...)."""


class DatasetError(SDTrainError):
    """The dataset folder or its metadata cannot be used."""


class ConfigError(SDTrainError):
    """A training or dataset setting is missing, unknown or out of range."""


class InputError(ConfigError):
    """A bad option, with the name of the field at fault so a form can show the message next to it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class OutputError(SDTrainError):
    """A folder SD-Train has to write to cannot be written (read-only, missing permissions)."""


class Cancelled(SDTrainError):
    """The user cancelled a job. Whatever was finished so far has been kept."""


def shorten(value: object, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters, for messages that name a bad value: a message may point at a value,
    but must never carry a file's contents (a config or metadata file read from the disk) whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 4] + ("...'" if isinstance(value, str) else " ...")
