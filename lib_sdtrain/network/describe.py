"""`sdtrain inspect LORA.safetensors`: what a kohya-format LoRA holds, read from its tensor shapes (no weights are
loaded but the alphas) and its `ss_*` training metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from lib_sdtrain.errors import SDTrainError

DOWN = ".lora_down.weight"
BASE_KEYS = ("ss_base_model_version", "ss_v2", "modelspec.architecture", "ss_sd_model_name")


def is_lora_file(path: str | os.PathLike[str]) -> bool:
    """A .safetensors file with kohya LoRA tensors (cheap: reads the header only)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.endswith(DOWN) for k in f.keys())  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError):
        return False  # the model loader gives the clear message for a broken file


def describe_lora(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            modules = _modules(f)
    except (SafetensorError, OSError) as e:
        raise SDTrainError(f"Could not read the LoRA {path}: {e}") from e
    conv = {n: m for n, m in modules.items() if m["kernel"] not in ((1, 1), ())}
    linear = {n: m for n, m in modules.items() if n not in conv}
    unet = sum(n.startswith("lora_unet") for n in modules)
    rows = [
        ("file", f"{path} ({path.stat().st_size / 2**20:.2f} MiB, {_dtypes(modules)})"),
        ("type", "LoCon (LoRA with 3x3 convolutions)" if conv else "LoRA"),
        ("dim / alpha", _rank_alpha(linear) + (f"; convolutions {_rank_alpha(conv)}" if conv else "")),
        ("modules", f"{len(modules)} ({unet} UNet, {len(modules) - unet} text encoder)"),
        ("base model", _base(metadata)),
    ]
    return "\n".join(_row(name, value) for name, value in rows + _training(metadata) if value)


def _modules(f) -> dict[str, dict]:
    """{module name: rank, alpha, kernel size, dtype} from the lora_down shapes and the alpha tensors."""
    modules = {}
    keys = set(f.keys())
    for key in sorted(k for k in keys if k.endswith(DOWN)):
        name = key[: -len(DOWN)]
        shape = f.get_slice(key).get_shape()
        alpha_key = f"{name}.alpha"
        alpha = float(f.get_tensor(alpha_key)) if alpha_key in keys else float(shape[0])  # kohya: no alpha = rank
        modules[name] = {
            "rank": shape[0],
            "alpha": alpha,
            "kernel": tuple(shape[2:]),
            "dtype": f.get_slice(key).get_dtype(),
        }
    return modules


def _rank_alpha(modules: dict[str, dict]) -> str:
    if not modules:
        return "none"
    return f"{_span([m['rank'] for m in modules.values()])} / {_span([m['alpha'] for m in modules.values()])}"


def _span(values: list[float]) -> str:
    """`8` when every module has the same value, else `4-16 (varies per module)`."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g} (varies per module)"


def _dtypes(modules: dict[str, dict]) -> str:
    names = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
    return "/".join(sorted({names.get(m["dtype"], m["dtype"]) for m in modules.values()}))


def _base(metadata: dict[str, str]) -> str:
    version = metadata.get("ss_base_model_version") or (
        {"True": "sd_v2", "False": "sd_v1"}.get(metadata.get("ss_v2", ""), "unknown (no ss_v2 metadata)")
    )
    parts = [version]
    if "modelspec.architecture" in metadata:
        parts.append(metadata["modelspec.architecture"])
    if metadata.get("ss_sd_model_name"):
        parts.append(f"trained on {metadata['ss_sd_model_name']}")
    return ", ".join(parts)


def _row(name: str, value: str) -> str:
    return f"{name + ':':<15}{value}"


def _training(metadata: dict[str, str]) -> list[tuple[str, str | None]]:
    """The training summary from kohya's ss_* keys; the keys a file lacks are left out."""
    if not any(k.startswith("ss_") and k not in BASE_KEYS for k in metadata):
        return [("training", "no ss_* training metadata in the file")]
    get = metadata.get
    rows = [
        ("steps", _of(get("ss_steps"), get("ss_max_train_steps"))),
        ("epochs", _of(get("ss_epoch"), get("ss_num_epochs"))),
        ("images", get("ss_num_train_images") and f"{get('ss_num_train_images')} per epoch (with repeats)"),
        ("batch size", get("ss_total_batch_size") or get("ss_batch_size_per_device")),
        ("resolution", get("ss_resolution")),
        ("learning rate", _rates(metadata)),
        ("optimizer", get("ss_optimizer") and f"{get('ss_optimizer')}, {get('ss_lr_scheduler', '?')} schedule"),
        ("precision", get("ss_mixed_precision")),
        ("network", get("ss_network_module")),
        ("network args", _network_args(get("ss_network_args"))),
        ("comment", None if get("ss_training_comment") == "None" else get("ss_training_comment")),
    ]
    return rows


def _of(done: str | None, total: str | None) -> str | None:
    if done and total and done != total:
        return f"{done} of {total}"
    return done or total


def _rates(metadata: dict[str, str]) -> str | None:
    rate = metadata.get("ss_learning_rate")
    parts = [p for p in (("UNet", metadata.get("ss_unet_lr")), ("text encoder", metadata.get("ss_text_encoder_lr")))
             if p[1] not in (None, "None", "")]  # fmt: skip
    detail = ", ".join(f"{name} {value}" for name, value in parts)
    return f"{rate} ({detail})" if rate and detail else rate or detail or None


def _network_args(text: str | None) -> str | None:
    try:
        args = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return text
    return ", ".join(f"{k}={v}" for k, v in args.items()) if args else None
