"""Optimizers and learning-rate schedules under kohya's names."""

from __future__ import annotations

import importlib

import torch

from lib_sdtrain.errors import ConfigError


def _require(module: str, package: str, optimizer: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"optimizer_type {optimizer} needs the package {package!r}: pip install {package}") from None


def make_optimizer(optimizer_type: str, groups: list[dict], learning_rate: float) -> torch.optim.Optimizer:
    name = optimizer_type.lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, **adamw_implementation(groups))
    if name == "adamw8bit":
        if not torch.cuda.is_available():
            raise ConfigError("AdamW8bit needs a CUDA GPU (bitsandbytes); use AdamW on this machine.")
        bnb = _require("bitsandbytes.optim", "bitsandbytes", optimizer_type)
        return bnb.AdamW8bit(groups, lr=learning_rate)
    if name == "lion":
        lion = _require("lion_pytorch", "lion-pytorch", optimizer_type)
        return lion.Lion(groups, lr=learning_rate)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=learning_rate, relative_step=False, scale_parameter=False, warmup_init=False)
    if name == "prodigy":
        prodigy = _require("prodigyopt", "prodigyopt", optimizer_type)
        return prodigy.Prodigy(groups, lr=learning_rate)
    raise ConfigError(f"Unknown optimizer_type {optimizer_type!r}: use AdamW, AdamW8bit, Lion, Adafactor or Prodigy.")


def adamw_implementation(groups: list[dict]) -> dict[str, bool]:
    """The fastest AdamW torch offers for these parameters: fused (one kernel for all parameters) when they are all
    fp32/fp16/bf16 CUDA tensors, as diffusers' and kohya's scripts allow; else foreach (a few batched ops instead of
    a Python loop per parameter), which torch's own default picks only for CUDA tensors. The same update either way,
    up to floating-point rounding order."""
    params = [p for group in groups for p in group["params"]]
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def make_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    from diffusers.optimization import get_scheduler

    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    except ValueError as e:
        raise ConfigError(f"lr_scheduler {name!r}: {e}") from e
