"""The host outside the WebUI (CLI, `accelerate launch`, the standalone app): the same functions as
lib_sdtrain/host/webui.py, with nothing loaded to share, no WebUI lists to refresh, and folders from configure()
or $SDTRAIN_HOME (laid out like a WebUI data folder, so pointing it at one puts new LoRAs in its Lora folder)."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.host import settings
from lib_sdtrain.host.auth import basic_auth_dependencies
from lib_sdtrain.host.types import GpuBusyError, LoadedCheckpoint, LoadedWeights
from lib_sdtrain.utils.files import resolve_allowed
from lib_sdtrain.utils.progress import CallbackProgress

NAME = "standalone"


@dataclass(frozen=True)
class StandaloneConfig:
    home: Path = field(default_factory=lambda: Path(os.environ.get("SDTRAIN_HOME") or Path.cwd() / "sd-train"))
    dataset_dir: Path | None = None
    output_dir: Path | None = None
    models_dir: Path | None = None
    lora_dir: Path | None = None
    checkpoints_dir: Path | None = None
    restrict_file_access: bool = False
    """Set by an app that listens beyond localhost: only the folders above may be used."""
    api_auth: str | None = None
    """"user:password[,...]" protecting API routes, as the WebUI's --api-auth."""
    options: dict[str, Any] = field(default_factory=dict)


_config = StandaloneConfig()
_gpu_lock = threading.Lock()


def configure(**changes: Any) -> StandaloneConfig:
    """Change the standalone host's folders and policies (fields of StandaloneConfig); returns the new config."""
    global _config
    values: dict[str, Any] = {k: Path(v) if k.endswith(("_dir", "home")) and v else v for k, v in changes.items()}
    _config = replace(_config, **values)
    return _config


def is_webui() -> bool:
    return False


def loaded_checkpoint() -> LoadedCheckpoint | None:
    return None


def loaded_model_ldm_state_dict() -> LoadedWeights | None:
    return None


def load_webui_model(dtype: torch.dtype = torch.float32):
    return None


def loaded_model_problem() -> str | None:
    return "There is no loaded checkpoint outside the WebUI: choose a model file or folder."


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")


def dtype() -> torch.dtype:
    return torch.float16 if device().type == "cuda" else torch.float32


def option(key: str, default: Any = None) -> Any:
    return _config.options.get(key, settings.default(key, default))


@contextlib.contextmanager
def free_vram_for_training(unload: bool | None = None) -> Iterator[None]:
    """Nothing of ours to move; release cached memory before and after, as the WebUI host does."""
    _release_memory()
    try:
        yield
    finally:
        _release_memory()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def gpu_lock(wait: bool = True, task_id: str | None = None) -> Iterator[None]:
    """One GPU job at a time in this process (not re-entrant)."""
    if not _gpu_lock.acquire(blocking=wait):
        raise GpuBusyError("Another SD-Train job is using the GPU. Try again when it has finished.")
    try:
        yield
    finally:
        _gpu_lock.release()


@contextlib.contextmanager
def job(name: str, task_id: str | None = None) -> Iterator[None]:
    yield


def make_progress(callback: Callable[[str, dict[str, Any]], None] | None = None) -> CallbackProgress:
    return CallbackProgress(callback)


def lora_dir() -> Path:
    return _config.lora_dir or _config.home / "models" / "Lora"


def checkpoints_dir() -> Path:
    return _config.checkpoints_dir or _config.home / "models" / "Stable-diffusion"


def dataset_dir() -> Path:
    return _config.dataset_dir or _config.home / "sd-train" / "datasets"


def output_dir() -> Path:
    return _config.output_dir or _config.home / "outputs" / "sd-train"


def models_dir() -> Path:
    return _config.models_dir or _config.home / "models" / "sd-train"


def base_model_choices() -> list[str]:
    """Checkpoints and diffusers folders in the checkpoints and models folders."""
    from lib_sdtrain.models.discovery import sd_models

    return [str(p) for p in sd_models([checkpoints_dir(), models_dir()])]


def refresh_loras() -> bool:
    return False


def refresh_checkpoints() -> bool:
    return False


def file_access_allowed() -> bool:
    return not _config.restrict_file_access


def allowed_roots() -> list[Path]:
    return [dataset_dir(), output_dir(), models_dir(), lora_dir(), checkpoints_dir()]


def check_path_allowed(path: str | Path, purpose: str = "folder") -> Path:
    resolved = resolve_allowed(path, allowed_roots(), file_access_allowed())
    if resolved is not None:
        return resolved
    roots = ", ".join(str(r) for r in allowed_roots())
    raise SDTrainError(f"The {purpose} {path} is outside SD-Train's folders ({roots}). Move the files there.")


def api_route_dependencies() -> list:
    return basic_auth_dependencies(_config.api_auth)


def add_api_route(app: Any, path: str, endpoint: Callable, **kwargs: Any) -> None:
    dependencies = list(kwargs.pop("dependencies", [])) + api_route_dependencies()
    app.add_api_route(path, endpoint, dependencies=dependencies, **kwargs)
