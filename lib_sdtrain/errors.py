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


class OutputError(SDTrainError):
    """A folder SD-Train has to write to cannot be written (read-only, missing permissions)."""


class Cancelled(SDTrainError):
    """The user cancelled a job. Whatever was finished so far has been kept."""
