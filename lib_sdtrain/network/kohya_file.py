"""LoRA files as kohya sd-scripts writes them: safetensors with `ss_*` training metadata, model-spec entries and the
`sshs_*` hashes the WebUI and other tools show."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.utils.files import atomic_path

SAVE_DTYPES = {"float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya computes them: serialise the tensors with only the `ss_*`
    metadata in memory; the model hash is the sha256 of everything after the header (the tensor data), the legacy
    hash the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB."""
    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length :]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(
    state: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str],
    save_precision: str = "fp16",
) -> Path:
    """Write a LoRA state dict atomically, in `save_precision`, with `metadata` (all values strings) and hashes."""
    if save_precision not in SAVE_DTYPES:
        raise SDTrainError(f"save_precision must be one of {', '.join(SAVE_DTYPES)}, not {save_precision!r}")
    dtype = SAVE_DTYPES[save_precision]
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    header = {k: str(v) for k, v in metadata.items()}
    header["sshs_model_hash"], header["sshs_legacy_hash"] = model_hashes(tensors, header)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def lora_model_spec(version: str, v_prediction: bool, title: str, resolution: tuple[int, int]) -> dict[str, str]:
    """Stability AI model-spec entries for a LoRA (as kohya's sai_model_spec writes them)."""
    if version == "sd1":
        architecture = "stable-diffusion-v1/lora"
    elif version == "sdxl":
        architecture = "stable-diffusion-xl-v1-base/lora"
    else:
        architecture = ("stable-diffusion-v2-768-v" if v_prediction else "stable-diffusion-v2-512") + "/lora"
    repository = "generative-models" if version == "sdxl" else "stablediffusion"
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": f"https://github.com/Stability-AI/{repository}",
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def load_lora(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a kohya-format LoRA file; a clear error for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError) as e:
        raise SDTrainError(f"Could not read the LoRA {path}: {e}") from e
    if not any(k.endswith(".lora_down.weight") for k in state):
        raise SDTrainError(f"{path.name} is not a LoRA in kohya's format (no *.lora_down.weight tensors).")
    return state, metadata
