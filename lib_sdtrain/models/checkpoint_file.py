"""Reading single-file checkpoints safely, and telling what kind of model a state dict holds."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib_sdtrain.errors import ModelLoadError, UnsupportedModelError
from lib_sdtrain.models.ldm_keys import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT1_PREFIX,
    SDXL_TEXT2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from lib_sdtrain.utils.torch_pickle import load_tensor_dict

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
EMA_PREFIX = "model_ema."


# safetensors' dtype names -> torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of a safetensors file, each read when it is asked for.

    Converting a model while loading it (fp16 file -> fp32 weights) then never holds the whole file in memory next
    to the converted model, and shapes come from the header without reading any data. Each tensor is read with a
    plain file read into memory of its own rather than through safetensors' memory map: a mapped file's pages count
    in the process's memory as they are touched, which would add the whole file (2 GB for SD 1.5) to the peak and,
    while any tensor from it lived, keep it there.
    """

    def __init__(self, path: Path, keys: list[str] | None = None) -> None:
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as checked:  # validates the header against the file's size
            self.metadata: dict[str, str] = dict(checked.metadata() or {})
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        self._path = path
        self._data_start = 8 + header_size
        self._entries: dict[str, dict] = header
        self._keys = list(header) if keys is None else keys
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        entry = self._entries[key]
        start, end = entry["data_offsets"]
        data = torch.empty(end - start, dtype=torch.uint8)
        with open(self._path, "rb") as f:
            f.seek(self._data_start + start)
            if end > start and f.readinto(data.numpy().data) != end - start:
                raise ModelLoadError(f"{self._path.name}: the file ended inside tensor {key} (truncated?)")
        return data.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def shape(self, key: str) -> torch.Size:
        if key not in self._key_set:
            raise KeyError(key)
        return torch.Size(self._entries[key]["shape"])

    def without(self, prefix: str) -> LazyTensors:
        subset = LazyTensors.__new__(LazyTensors)
        subset.__dict__.update(self.__dict__)
        subset._keys = [k for k in self._keys if not k.startswith(prefix)]
        subset._key_set = set(subset._keys)
        return subset


StateDict = Mapping[str, torch.Tensor]


@dataclass
class CheckpointFile:
    path: Path
    state_dict: StateDict
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike[str], keep_ema: bool = False) -> CheckpointFile:
    """Read a `.safetensors` file, or a pickled `.ckpt` through torch's weights-only unpickler.

    EMA weights (`model_ema.*`) are dropped unless `keep_ema`: training and the WebUI use the live weights, and the
    EMA copy of a full SD1.x checkpoint would double its memory.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"Model file is empty (0 bytes): {path}")
    state_dict: Mapping[str, torch.Tensor]
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        state_dict, metadata = _read_safetensors(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        state_dict, metadata = _read_pickle(path), {}
    else:
        raise ModelLoadError(f"Unknown model file type {path.suffix!r}: expected .safetensors or .ckpt ({path})")
    if not keep_ema:
        if isinstance(state_dict, LazyTensors):
            state_dict = state_dict.without(EMA_PREFIX)
        else:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(EMA_PREFIX)}
    return CheckpointFile(path, state_dict, metadata)


def _read_safetensors(path: Path) -> tuple[LazyTensors, dict[str, str]]:
    from safetensors import SafetensorError

    try:
        tensors = LazyTensors(path)
        return tensors, tensors.metadata
    except SafetensorError as e:
        raise ModelLoadError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    except (OSError, RuntimeError) as e:
        raise ModelLoadError(f"Could not read {path}: {e}") from e


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_tensor_dict(path).items() if isinstance(v, torch.Tensor)}


def normalize_ldm_keys(state_dict: StateDict) -> StateDict:
    """Bring old SD1 text-encoder keys (before transformers added `text_model.`) to today's names."""
    old = SD1_TEXT_PREFIX + "embeddings."
    if not any(k.startswith(old) for k in state_dict):
        return state_dict
    fixed = {}
    for key, value in state_dict.items():
        if key.startswith(SD1_TEXT_PREFIX) and not key.startswith(SD1_TEXT_PREFIX + "text_model."):
            key = SD1_TEXT_PREFIX + "text_model." + key[len(SD1_TEXT_PREFIX) :]
        fixed[key] = value
    return fixed


def detect_sd_version(state_dict: StateDict, name: str = "checkpoint") -> str:
    """ "sd1", "sd2" or "sdxl" from the key layout; a clear error for everything else (SD3, Flux, LoRA files, ...)."""
    keys = state_dict.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    sdxl = has("conditioner.embedders.") or has(UNET_PREFIX + "label_emb.")
    if has(UNET_PREFIX + "joint_blocks.") or has("text_encoders."):
        raise UnsupportedModelError(f"{name} is an SD3 model, which SD-Train does not support.")
    if has("double_blocks.") or has(UNET_PREFIX + "double_blocks."):
        raise UnsupportedModelError(f"{name} is a Flux model, which SD-Train does not support.")
    if any(".lora_down." in k or ".lora_up." in k or k.startswith(("lora_unet_", "lora_te")) for k in keys):
        raise ModelLoadError(
            f"{name} is a LoRA, not a full model. Choose a Stable Diffusion checkpoint as the base model."
        )
    if not has(UNET_PREFIX):
        if any(re.match(r"^(down_blocks|up_blocks|mid_block)\.", k) for k in keys):
            raise ModelLoadError(
                f"{name} holds the weights of a single diffusers module, not a whole model. "
                "Point at the model folder (the one with model_index.json) instead."
            )
        example = ", ".join(sorted(keys)[:3]) or "none"
        raise ModelLoadError(
            f"{name} is not a Stable Diffusion checkpoint: it has no UNet weights ({UNET_PREFIX}*). "
            f"First keys found: {example}"
        )
    if not has(VAE_PREFIX):
        raise ModelLoadError(f"{name} has no VAE weights ({VAE_PREFIX}*); it is not a complete SD checkpoint.")
    if sdxl:
        missing = [p for p in (SDXL_TEXT1_PREFIX, SDXL_TEXT2_PREFIX, UNET_PREFIX + "label_emb.") if not has(p)]
        if missing:
            raise ModelLoadError(f"{name} is an incomplete SDXL checkpoint: it has no {missing[0]}* weights.")
        return "sdxl"
    if has(SD2_TEXT_PREFIX):
        return "sd2"
    if has(SD1_TEXT_PREFIX):
        return "sd1"
    raise ModelLoadError(
        f"{name} has no text-encoder weights (cond_stage_model.*); it is not a complete SD checkpoint."
    )
