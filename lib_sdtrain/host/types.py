"""What the hosts (the WebUI, the standalone app) report about the model they have loaded, and `Host`, the functions
both host modules (host.webui, host.standalone) provide."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.utils.progress import Progress

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
    state_dict: Mapping[str, torch.Tensor]
    """ldm/SGM layout (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* or conditioner.*), CPU
    tensors of their own."""
    tokenizer: Any
    """A transformers CLIPTokenizer when the host has one (SD1 in the WebUI), else None."""
    checkpoint: LoadedCheckpoint
    from_file: bool
    """True when the weights were read from the checkpoint file instead of the host's memory."""
    tokenizer_2: Any = None
    """SDXL's second tokenizer when the host has one (the WebUI's open_clip one, as a CLIPTokenizer), else None."""


class GpuBusyError(SDTrainError):
    """The GPU is in use (the WebUI is generating, or another job runs) and the caller chose not to wait."""


class Host(Protocol):
    """The host modules' contract: host.webui and host.standalone each provide every member, as module attributes and
    functions with these signatures (host.current() returns one of them). The context managers are declared with
    @contextlib.contextmanager, as the modules define them, so a type checker sees the same type."""

    NAME: str
    """"webui" or "standalone", what GET /sdtrain/v1/info reports."""

    def is_webui(self) -> bool:
        """Whether this process is a running WebUI."""
        ...

    def loaded_checkpoint(self) -> LoadedCheckpoint | None:
        """The checkpoint the host has loaded, or None (never starts a load)."""
        ...

    def loaded_model_problem(self) -> str | None:
        """Why the loaded checkpoint cannot be trained from, or None when it can."""
        ...

    def loaded_model_ldm_state_dict(self) -> LoadedWeights | None:
        """The loaded model's weights as an ldm-layout state dict on the CPU with its tokenizer, or None."""
        ...

    def load_webui_model(self, dtype: torch.dtype = torch.float32):
        """The loaded model as an SDModel for training (lib_sdtrain.models), or None when there is none."""
        ...

    def device(self) -> torch.device:
        """The device the host computes on."""
        ...

    def dtype(self) -> torch.dtype:
        """The host's inference dtype."""
        ...

    def option(self, key: str, default: Any = None) -> Any:
        """A setting: the host's value, else SD-Train's default (host/settings.py), else `default`."""
        ...

    @contextlib.contextmanager
    def free_vram_for_training(self, unload: bool | None = None) -> Iterator[None]:
        """Give the GPU to training for the block, and give it back afterwards, also when the block raises."""
        ...

    @contextlib.contextmanager
    def gpu_lock(self, wait: bool = True, task_id: str | None = None) -> Iterator[None]:
        """Hold the GPU lock for the block (GpuBusyError when taken and not `wait`)."""
        ...

    @contextlib.contextmanager
    def job(self, name: str, task_id: str | None = None) -> Iterator[None]:
        """The block as one host job (the WebUI's job state and task id; nothing standalone)."""
        ...

    def make_progress(self, callback: Callable[[str, dict[str, Any]], None] | None = None) -> Progress:
        """A Progress that calls `callback` and drives the host's own progress display."""
        ...

    def lora_dir(self) -> Path:
        """The folder new LoRAs go to."""
        ...

    def checkpoints_dir(self) -> Path:
        """The folder of checkpoint files."""
        ...

    def dataset_dir(self) -> Path:
        """The folder of SD-Train's datasets."""
        ...

    def output_dir(self) -> Path:
        """The folder of SD-Train's outputs."""
        ...

    def models_dir(self) -> Path:
        """SD-Train's models folder."""
        ...

    def base_model_choices(self) -> list[str]:
        """The base models to offer in the model dropdowns."""
        ...

    def refresh_loras(self) -> bool:
        """Rescan the host's LoRA list; whether there was one to rescan."""
        ...

    def refresh_checkpoints(self) -> bool:
        """Rescan the host's checkpoint list; whether there was one to rescan."""
        ...

    def file_access_allowed(self) -> bool:
        """Whether any folder the user types may be read and written."""
        ...

    def allowed_roots(self) -> list[Path]:
        """The folders SD-Train may always use."""
        ...

    def check_path_allowed(self, path: str | Path, purpose: str = "folder") -> Path:
        """`path` resolved if SD-Train may use it; SDTrainError otherwise."""
        ...

    def api_route_dependencies(self) -> list:
        """The FastAPI dependencies that protect a route as the host's API does."""
        ...

    def add_api_route(self, app: Any, path: str, endpoint: Callable, **kwargs: Any) -> None:
        """app.add_api_route with the host's API authentication."""
        ...
