"""Optimizers and learning-rate schedules under kohya's names, with kohya's optimizer_args and schedule settings."""

from __future__ import annotations

import ast
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from lib_sdtrain.errors import ConfigError, shorten

if TYPE_CHECKING:
    from lib_sdtrain.train.config import TrainConfig

# Schedules that take no warm-up: kohya raises "does not require num_warmup_steps" for a warm-up above 0.
NO_WARMUP_SCHEDULES = ("constant", "adafactor")


@dataclass
class BuiltOptimizer:
    optimizer: torch.optim.Optimizer
    description: str
    """kohya's ss_optimizer: the class path, then the optimizer_args used, e.g.
    "torch.optim.adamw.AdamW(weight_decay=0.01)"."""
    adafactor_schedule: bool = False
    """Adafactor with relative_step: it sets its own step size, and kohya's adafactor schedule replaces lr_scheduler."""


def parse_optimizer_args(entries: list[str]) -> dict[str, Any]:
    """kohya's optimizer_args: "key=value" texts whose values are Python literals ("betas=0.9,0.99" is a tuple)."""
    kwargs: dict[str, Any] = {}
    for entry in entries:
        key, sep, text = str(entry).partition("=")
        if not sep or "=" in text or not key.strip():
            raise ConfigError(f'optimizer_args entry {shorten(entry)}: expected key=value, e.g. "weight_decay=0.01".')
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"optimizer_args {shorten(entry)}: the value must be a Python literal as kohya reads it (a number, "
                "True, False, None, 'text' in quotes, or numbers separated by commas)."
            ) from None
    return kwargs


def adafactor_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """kohya's Adafactor defaults: relative_step unless turned off, and on again when warmup_init asks for it."""
    kwargs = {**kwargs}
    kwargs.setdefault("relative_step", True)
    if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
        kwargs["relative_step"] = True
    return kwargs


def uses_adafactor_schedule(config: TrainConfig) -> bool:
    if config.optimizer_type.lower() != "adafactor":
        return False
    return bool(adafactor_kwargs(parse_optimizer_args(config.optimizer_args))["relative_step"])


def check_optimizer_settings(config: TrainConfig) -> None:
    """ConfigError, before anything loads, for optimizer_args and schedule settings kohya would refuse or crash on."""
    parse_optimizer_args(config.optimizer_args)
    name, relative = config.lr_scheduler, uses_adafactor_schedule(config)
    if name == "piecewise_constant":
        raise ConfigError(
            "lr_scheduler piecewise_constant takes its step rules from lr_scheduler_args, which SD-Train does not "
            "implement; use another schedule."
        )
    if name == "adafactor" and not relative:
        raise ConfigError(
            "lr_scheduler adafactor needs optimizer_type Adafactor with relative_step (its default), as in kohya."
        )
    if config.lr_warmup_steps and (name in NO_WARMUP_SCHEDULES or relative):
        what = "Adafactor's relative_step schedule" if relative else f"lr_scheduler {name}"
        raise ConfigError(
            f"{what} takes no warm-up, but lr_warmup_steps = {config.lr_warmup_steps} (kohya refuses this too); "
            "set it to 0, or use constant_with_warmup."
        )
    if name == "cosine_with_min_lr" and config.lr_scheduler_min_lr_ratio is None:
        raise ConfigError("lr_scheduler cosine_with_min_lr needs lr_scheduler_min_lr_ratio (e.g. 0.1).")
    if name == "inverse_sqrt" and not (config.lr_warmup_steps or config.lr_scheduler_timescale):
        raise ConfigError("lr_scheduler inverse_sqrt needs lr_warmup_steps or lr_scheduler_timescale above 0.")


def _require(module: str, package: str, optimizer: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"optimizer_type {optimizer} needs the package {package!r}: pip install {package}") from None


def _optimizer_class(optimizer_type: str) -> type[torch.optim.Optimizer]:
    name = optimizer_type.lower()
    if name == "adamw":
        return torch.optim.AdamW
    if name == "adamw8bit":
        if not torch.cuda.is_available():
            raise ConfigError("AdamW8bit needs a CUDA GPU (bitsandbytes); use AdamW on this machine.")
        return _require("bitsandbytes.optim", "bitsandbytes", optimizer_type).AdamW8bit
    if name == "lion":
        return _require("lion_pytorch", "lion-pytorch", optimizer_type).Lion
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    if name == "prodigy":
        return _require("prodigyopt", "prodigyopt", optimizer_type).Prodigy
    raise ConfigError(f"Unknown optimizer_type {optimizer_type!r}: use AdamW, AdamW8bit, Lion, Adafactor or Prodigy.")


def make_optimizer(
    optimizer_type: str, groups: list[dict], learning_rate: float, optimizer_args: list[str] | None = None
) -> BuiltOptimizer:
    """The optimizer kohya's get_optimizer builds for these settings; optimizer_args go to its constructor."""
    cls = _optimizer_class(optimizer_type)
    kwargs = parse_optimizer_args(optimizer_args or [])
    lr: float | None = learning_rate
    relative = False
    if cls.__name__ == "Adafactor":
        kwargs = adafactor_kwargs(kwargs)
        relative = bool(kwargs["relative_step"])
        if relative:  # Adafactor finds its own step size: kohya drops every learning rate (unet_lr too)
            lr, groups = None, [{k: v for k, v in g.items() if k != "lr"} for g in groups]
    extra = {}
    if cls is torch.optim.AdamW and not {"fused", "foreach"} & kwargs.keys():  # the user's choice wins
        extra = adamw_implementation(groups)
    try:
        construct: Callable[..., torch.optim.Optimizer] = cls  # the concrete ones take lr and their own args
        optimizer = construct(groups, lr=lr, **kwargs, **extra)
    except TypeError as e:  # an argument this optimizer does not take
        raise ConfigError(f"optimizer_args for {optimizer_type}: {e}") from None
    args = ",".join(f"{k}={v}" for k, v in kwargs.items())
    description = f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")
    return BuiltOptimizer(optimizer, description, relative)


def adamw_implementation(groups: list[dict]) -> dict[str, bool]:
    """The fastest AdamW torch offers for these parameters: fused (one kernel for all parameters) when they are all
    fp32/fp16/bf16 CUDA tensors, as diffusers' and kohya's scripts allow; else foreach (a few batched ops instead of
    a Python loop per parameter), which torch's own default picks only for CUDA tensors. The same update either way,
    up to floating-point rounding order."""
    params = [p for group in groups for p in group["params"]]
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def steps_of(value: int | float, total_steps: int) -> int:
    """kohya's int_or_float: a float is a fraction of the run, an int a number of steps."""
    return int(value * total_steps) if isinstance(value, float) else value


def make_lr_scheduler(
    config: TrainConfig, built: BuiltOptimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """kohya's get_scheduler_fix for lr_scheduler and its settings, over `total_steps` optimizer steps."""
    optimizer, name = built.optimizer, config.lr_scheduler
    warmup = steps_of(config.lr_warmup_steps, total_steps)
    if built.adafactor_schedule:
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, config.learning_rate)
    cycles, min_ratio = config.lr_scheduler_num_cycles, config.lr_scheduler_min_lr_ratio
    if name == "cosine_with_min_lr":
        assert min_ratio is not None  # check_optimizer_settings refuses cosine_with_min_lr without it
        lam = partial(_cosine_min_lr, warmup=warmup, total=total_steps, cycles=cycles / 2, min_ratio=min_ratio)
        return LambdaLR(optimizer, lam)
    if name == "warmup_stable_decay":
        decay = steps_of(config.lr_decay_steps, total_steps)
        lam = partial(
            _warmup_stable_decay, warmup=warmup, stable=total_steps - warmup - decay, decay=decay,
            cycles=cycles / 2, min_ratio=min_ratio or 0.0,
        )  # fmt: skip
        return LambdaLR(optimizer, lam)
    if name == "inverse_sqrt":
        from transformers.optimization import get_inverse_sqrt_schedule

        return get_inverse_sqrt_schedule(optimizer, warmup, timescale=config.lr_scheduler_timescale)
    from diffusers.optimization import get_scheduler

    try:
        return get_scheduler(
            name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, num_cycles=cycles,
            power=config.lr_scheduler_power,
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"lr_scheduler {name!r}: {e}") from e


def _cosine_min_lr(step: int, *, warmup: int, total: int, cycles: float, min_ratio: float) -> float:
    """transformers' cosine_with_min_lr (which kohya v0.9 uses; the installed transformers predates it)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress))
    return max(0.0, factor * (1 - min_ratio) + min_ratio)


def _warmup_stable_decay(step: int, *, warmup: int, stable: int, decay: int, cycles: float, min_ratio: float) -> float:
    """transformers' warmup_stable_decay: ramp up, hold, then a cosine decay down to min_ratio."""
    if step < warmup:
        return step / max(1, warmup)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / max(1, decay)
        value = max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))
        return (1.0 - min_ratio) * value + min_ratio
    return min_ratio
