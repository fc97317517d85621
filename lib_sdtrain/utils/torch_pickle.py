"""The one way SD-Train reads a pickled torch file (.pt, .pth, .bin, .ckpt): torch's weights-only unpickler, which
builds tensors, numbers and containers and refuses anything else, so no code in a file can run.

It is always called as `torch.serialization.load`, never `torch.load`: inside the WebUI, `modules/safe.py` replaces
`torch.load` with its own checker, which rejects every file current torch writes (they hold a `.format_version`
entry it does not know) and returns None instead of raising."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.errors import ModelLoadError

PICKLED_WEIGHTS = ("pytorch_model.bin", "diffusion_pytorch_model.bin")
"""The file names transformers and diffusers give a model's pickled weights (unsharded)."""


def load_pickle(path: str | Path) -> Any:
    """The object in a pickled torch file, on the CPU; ModelLoadError naming the file and why it cannot be read."""
    path = Path(path)
    try:
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"Refusing to load {path.name}: it holds Python objects other than tensors and numbers, and unpickling "
            "those can run any code. Use a .safetensors version of it, or convert it with a tool you trust."
        ) from e
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path.name} is not a readable checkpoint (truncated or corrupt?): {e}") from e


def load_tensor_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict (name -> tensor) from a pickled file, unwrapped from PyTorch Lightning's {"state_dict": ...}."""
    obj = load_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{Path(path).name} does not hold a state dict (found {type(obj).__name__}).")
    return obj


def pickled_weights(folder: str | Path) -> Path | None:
    """A model folder's pickled weights file when it has no safetensors weights (which transformers and diffusers
    prefer), else None. Such a folder must be loaded with its weights read here: their own loaders call torch.load."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return None
    return next((folder / name for name in PICKLED_WEIGHTS if (folder / name).is_file()), None)
