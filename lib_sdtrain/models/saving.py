"""Saving an SDModel as one ldm-layout `.safetensors` file, the format the WebUI's checkpoint list loads."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_sdtrain.models import ldm_keys
from lib_sdtrain.models.configs import unet_layout
from lib_sdtrain.models.ldm_keys import LdmRef
from lib_sdtrain.models.sd_model import SDModel
from lib_sdtrain.utils.files import atomic_path

StateDict = dict[str, torch.Tensor]


def sd_model_to_ldm(model: SDModel) -> StateDict:
    """The model's weights under their ldm keys, plus the extra tensors it was loaded with (schedule buffers, SD2's
    unused last text block, ...). Weights of the modules always win over extras of the same name."""
    layout = unet_layout(model.unet.config)
    levels = len(model.vae.config.block_out_channels)
    out: StateDict = {}
    _put_component(out, model.unet.state_dict(), lambda k: ldm_keys.unet_ldm_ref(k, layout))
    _put_component(out, model.vae.state_dict(), lambda k: ldm_keys.vae_ldm_ref(k, levels))
    text_state = {k: v for k, v in model.text_encoder.state_dict().items() if k != ldm_keys.POSITION_IDS_KEY}
    _put_component(out, text_state, ldm_keys.TEXT_LDM_REFS[model.version])
    if model.text_encoder_2 is not None:
        _put_component(out, model.text_encoder_2.state_dict(), ldm_keys.sdxl_text2_ldm_ref)

    for key, tensor in model.extra_ldm_state.items():
        out.setdefault(key, tensor)
    if model.version in ("sd1", "sdxl"):  # CLIP-L files carry its position ids
        prefix = ldm_keys.SD1_TEXT_PREFIX if model.version == "sd1" else ldm_keys.SDXL_TEXT1_PREFIX
        positions = model.text_encoder.config.max_position_embeddings
        out.setdefault(prefix + ldm_keys.POSITION_IDS_KEY, torch.arange(positions, dtype=torch.int64)[None])
    else:
        _add_unused_openclip_block(out, model.text_encoder.config.num_hidden_layers)
    return out


def _put_component(out: StateDict, state: StateDict, ref_of: Callable[[str], LdmRef | None]) -> None:
    fused: dict[str, list[torch.Tensor | None]] = {}
    for key, tensor in state.items():
        ref = ref_of(key)
        if ref is None:
            continue
        if ref.chunks > 1:
            assert ref.chunk is not None  # a fused key names its chunk
            fused.setdefault(ref.key, [None] * ref.chunks)[ref.chunk] = tensor
            continue
        out[ref.key] = tensor[:, :, None, None] if ref.conv1x1 else (tensor.T if ref.transpose else tensor)
    for key, parts in fused.items():
        present = [p for p in parts if p is not None]
        if len(present) < len(parts):
            raise ValueError(f"Cannot write {key}: some of its fused parts are missing")
        out[key] = torch.cat(present, dim=0)


def _add_unused_openclip_block(out: StateDict, used_layers: int) -> None:
    """SD2 files hold one more OpenCLIP block than SD2 uses (it conditions on the penultimate layer). A model that
    came from a diffusers folder lacks that block; write an all-zero one, which is an identity block (its attention
    and MLP outputs are zero), so the file has the layout every SD2 loader expects."""
    last = ldm_keys.openclip_block_prefix(used_layers)
    if any(k.startswith(last) for k in out):
        return
    template = ldm_keys.openclip_block_prefix(used_layers - 1)
    for key in [k for k in out if k.startswith(template)]:
        out[last + key[len(template) :]] = torch.zeros_like(out[key])


def save_sd_checkpoint(
    model: SDModel,
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `model` to `path` atomically. `dtype` converts floating-point weights (e.g. torch.float16 to halve the
    file); `metadata` is added to the safetensors header next to the model-spec entries written here."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"Checkpoints are saved as .safetensors, not {path.suffix or 'no extension'}: {path}")
    tensors = {}
    for key, tensor in sd_model_to_ldm(model).items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    header = {**model_spec_metadata(model, title=path.stem), **(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(_unshare(tensors), str(tmp), metadata=header)
    return path


def model_spec_metadata(model: SDModel, title: str) -> dict[str, str]:
    """Stability AI's model-spec header (what kohya and the WebUI read to tell model kinds apart)."""
    if model.version == "sd1":
        architecture = "stable-diffusion-v1"
    elif model.version == "sdxl":
        architecture = "stable-diffusion-xl-v1-base"
    else:
        architecture = "stable-diffusion-v2-768-v" if model.v_prediction else "stable-diffusion-v2-512"
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/"
        + ("generative-models" if model.version == "sdxl" else "stablediffusion"),
        "modelspec.title": title,
        "modelspec.prediction_type": "v" if model.v_prediction else "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _unshare(tensors: StateDict) -> StateDict:
    """safetensors refuses tensors that share memory; copy the second and later users of a storage."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return out
