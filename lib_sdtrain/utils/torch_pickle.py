"""The one way SD-Train reads a pickled torch file (.pt, .pth, .bin, .ckpt): torch's weights-only unpickler, which
builds tensors, numbers and containers and refuses anything else, so no code in a file can run.

It is always called as `torch.serialization.load`, never `torch.load`: inside the WebUI, `modules/safe.py` replaces
`torch.load` with its own checker, which rejects every file current torch writes (they hold a `.format_version`
entry it does not know) and returns None instead of raising."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.errors import ModelLoadError

PICKLED_WEIGHTS = ("pytorch_model.bin", "diffusion_pytorch_model.bin")
"""The file names transformers and diffusers give a model's pickled weights (unsharded)."""
SHARD_INDEX = ".index.json"
"""`pytorch_model.bin.index.json`: the map of a model whose pickled weights are split into several files."""


def load_pickle(path: str | Path) -> Any:
    """The object in a pickled torch file, on the CPU; ModelLoadError naming the file and why it cannot be read
    (never None, never torch's own traceback)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    try:
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"Refusing to load {path.name}: it is not plain tensors and numbers ({_refusal_reason(e)}). Unpickling "
            "anything else can run code hidden in the file, or the file is damaged. Use a .safetensors version "
            "of it, or convert it to safetensors with a tool you trust."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... for files it cannot parse
        raise ModelLoadError(
            f"{path.name} is not a readable checkpoint (truncated or corrupt?): {type(e).__name__}: {_first_line(e)}"
        ) from None


def _refusal_reason(error: Exception) -> str:
    """The weights-only unpickler's own reason ("Unsupported class posix.system", "unsupported GLOBAL posix.system
    ..."), without torch's advice around it, which is to turn the check off."""
    text = str(error)
    marker = "WeightsUnpickler error:"  # torch 2.1 (the WebUI's): the reason follows this on the same line
    if marker in text:
        return _first_line(text[text.index(marker) + len(marker) :]).rstrip(".")
    advice = ("Weights only load failed", "Check the documentation", "Re-running")
    reasons = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(advice)]
    return reasons[0][:200].rstrip(".") if reasons else "refused by torch's weights-only reader"


def _first_line(error: Exception | str) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def load_tensor_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict (name -> tensor) from a pickled file, unwrapped from PyTorch Lightning's {"state_dict": ...};
    from a shard index (`*.bin.index.json`), all its shards merged."""
    path = Path(path)
    if path.name.endswith(SHARD_INDEX):
        return _load_shards(path)
    obj = load_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name} does not hold a state dict (found {type(obj).__name__}).")
    return obj


def _load_shards(index: Path) -> dict[str, torch.Tensor]:
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{index} is not a readable shard index ({type(e).__name__}: {e}).") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_tensor_dict(index.parent / Path(shard).name))  # a name, never a path out of the folder
    return state


def pickled_weights(folder: str | Path) -> Path | None:
    """A model folder's pickled weights file (or shard index) when it has no safetensors weights (which transformers
    and diffusers prefer), else None. Such a folder must be loaded with its weights read here (load_tensor_dict):
    their own loaders call torch.load."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return None
    candidates = [name + suffix for name in PICKLED_WEIGHTS for suffix in ("", SHARD_INDEX)]
    return next((folder / name for name in candidates if (folder / name).is_file()), None)
