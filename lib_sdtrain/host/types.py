"""What the hosts (the WebUI, the standalone app) report about the model they have loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lib_sdtrain.errors import SDTrainError

# The base-model choice "the checkpoint the WebUI has loaded right now" (its clean weights; see host.webui).
LOADED_CHECKPOINT = "loaded checkpoint"

ModelVersion = Literal["sd1", "sd2", "sdxl", "sd3", "unknown"]


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    name: str
    """Relative to the checkpoint folder, e.g. "sub/model.safetensors"."""
    title: str
    """As the WebUI's checkpoint dropdown shows it, e.g. "model.safetensors [6ce0161689]"."""
    hash: str | None
    """The short sha256 (10 hex digits) when the WebUI has computed it, else its old 8-digit hash."""
    sha256: str | None
    version: ModelVersion
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    legacy_hash: str | None = None
    """The WebUI's old 8-digit hash (CheckpointInfo.hash), what kohya's ss_sd_model_hash holds."""

    @property
    def is_sd1(self) -> bool:
        return self.version == "sd1"

    @property
    def is_sd2(self) -> bool:
        return self.version == "sd2"

    @property
    def is_sdxl(self) -> bool:
        return self.version == "sdxl"


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    """ldm layout (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*), CPU tensors of their own."""
    tokenizer: Any
    """A transformers CLIPTokenizer when the host has one (SD1 in the WebUI), else None."""
    checkpoint: LoadedCheckpoint
    from_file: bool
    """True when the weights were read from the checkpoint file instead of the host's memory."""


class GpuBusyError(SDTrainError):
    """The GPU is in use (the WebUI is generating, or another job runs) and the caller chose not to wait."""
