"""Applying a kohya-format LoRA/LoCon file to a loaded model for generation, without touching its weights.

Each update is a forward hook on its layer: y = W x + weight * (alpha / rank) * up(down(x)), the formula of
lib_sdtrain.network.lora, with the layers found and named exactly as that module names them. Leaving the
context removes the hooks, so the model is the base model again, bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lib_sdtrain.errors import SDTrainError
from lib_sdtrain.models.sd_model import SDModel
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.network.lora import model_target_layers

LORA_PARTS = {"lora_down.weight", "lora_up.weight", "alpha"}


@dataclass(frozen=True)
class AppliedLora:
    path: Path
    weight: float
    modules: int
    metadata: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def apply_lora(model: SDModel, lora_path: str | os.PathLike[str], weight: float = 1.0) -> Iterator[AppliedLora]:
    """Apply a LoRA file to `model`'s UNet and text encoder for the duration of the `with` block. Raises
    SDTrainError before changing anything when the file does not fit the model. Contexts can be nested."""
    path = Path(lora_path)
    state, metadata = load_lora(path)
    updates = _match_layers(_group_modules(state, path), model, path, metadata)
    handles = []
    try:
        if weight != 0:  # weight 0 is the base model exactly: nothing to add
            for layer, (down, up, alpha) in updates.items():
                hook = _LoraHook(layer, down, up, weight * alpha / down.shape[0])
                handles.append(layer.register_forward_hook(hook))
        yield AppliedLora(path, weight, len(updates), metadata)
    finally:
        for handle in handles:
            handle.remove()


class _LoraHook:
    """Adds the low-rank update to a Linear/Conv2d output (computed as LoRAModule.forward computes it)."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
        weight = layer.weight
        self.down = down.to(weight.device, weight.dtype)
        self.up = up.to(weight.device, weight.dtype)
        self.scale = scale

    def __call__(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].to(self.down.dtype)
        if isinstance(layer, nn.Conv2d):
            hidden = F.conv2d(x, self.down, None, layer.stride, layer.padding, layer.dilation)
            update = F.conv2d(hidden, self.up)
        else:
            update = F.linear(F.linear(x, self.down), self.up)
        return output + (update * self.scale).to(output.dtype)


def _group_modules(state: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"lora_down.weight": ..., "lora_up.weight": ..., "alpha": ...}}; other formats are refused."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part] = tensor
    for name, parts in modules.items():
        unknown = sorted(set(parts) - LORA_PARTS)
        if unknown or not {"lora_down.weight", "lora_up.weight"} <= set(parts):
            raise SDTrainError(
                f"{path.name}: module {name} has {sorted(parts)}; SD-Train applies LoRA and LoCon files "
                "(lora_down.weight, lora_up.weight, alpha), not LyCORIS LoHa/LoKr or DoRA."
            )
    return modules


def _match_layers(
    modules: dict[str, dict[str, torch.Tensor]], model: SDModel, path: Path, metadata: dict[str, str]
) -> dict[nn.Linear | nn.Conv2d, tuple[torch.Tensor, torch.Tensor, float]]:
    layers = model_target_layers(model.unet, model.text_encoder, model.text_encoder_2, model.lora_unet_names())
    unknown = sorted(name for name in modules if name not in layers)
    if unknown:
        made_for = metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture")
        hint = f" It was made for {made_for}." if made_for else ""
        raise SDTrainError(
            f"The LoRA {path.name} does not fit this {model.version.upper()} model: {len(unknown)} of its "
            f"{len(modules)} modules name layers the model does not have (e.g. {unknown[0]}).{hint} "
            "Use a LoRA trained for this kind of model (an SDXL LoRA has lora_te1_/lora_te2_ and "
            "lora_unet_input_blocks_ names, for instance)."
        )
    updates = {}
    for name, parts in modules.items():
        layer = layers[name]
        down, up = _fit_shapes(layer, parts["lora_down.weight"], parts["lora_up.weight"], name, path)
        alpha = float(parts["alpha"]) if "alpha" in parts else float(down.shape[0])  # kohya: no alpha = rank
        updates[layer] = (down, up, alpha)
    return updates


def _fit_shapes(
    layer: nn.Linear | nn.Conv2d, down: torch.Tensor, up: torch.Tensor, name: str, path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear and 1x1 Conv2d are the same update: reshape to the layer's kind, then check every dimension."""
    if isinstance(layer, nn.Conv2d):
        down = down[:, :, None, None] if down.ndim == 2 else down
        up = up[:, :, None, None] if up.ndim == 2 else up
        expected_down: tuple[int, ...] = (down.shape[0], layer.in_channels, *layer.kernel_size)
        expected_up: tuple[int, ...] = (layer.out_channels, down.shape[0], 1, 1)
    else:
        down = down.flatten(1) if down.ndim == 4 and down.shape[2:] == (1, 1) else down
        up = up.flatten(1) if up.ndim == 4 and up.shape[2:] == (1, 1) else up
        expected_down = (down.shape[0], layer.in_features)
        expected_up = (layer.out_features, down.shape[0])
    if tuple(down.shape) != expected_down or tuple(up.shape) != expected_up:
        raise SDTrainError(
            f"The LoRA {path.name} does not fit this model: {name} has down {tuple(down.shape)} and up "
            f"{tuple(up.shape)}, the layer needs {expected_down} and {expected_up}. It was trained for another "
            "model type (SD1 and SD2 LoRAs share names but not sizes)."
        )
    return down, up


def list_loras(folder: str | os.PathLike[str]) -> list[Path]:
    """The LoRA files under `folder` (sub-folders too), sorted: *.safetensors with lora_* tensors. Only the file
    headers are read, so a folder of checkpoints is cheap to scan."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [path for path in sorted(folder.rglob("*.safetensors")) if _is_lora(path)]


def _is_lora(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(key.startswith("lora_") for key in f.keys())  # noqa: SIM118 - safe_open is not a dict
    except Exception:  # unreadable or not safetensors: not a LoRA we can use
        return False
