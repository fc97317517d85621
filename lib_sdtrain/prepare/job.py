"""The whole `buckets` step as one call, for the CLI and the UI alike: load the VAE, cache the latents, write the
report next to the metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib_sdtrain.prepare.latents import LatentCacheOptions, LatentCacheResult, cache_latents, check_latent_inputs
from lib_sdtrain.prepare.report import DatasetReport, build_report
from lib_sdtrain.utils.progress import Progress

VAE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class PreparedDataset:
    result: LatentCacheResult
    report: DatasetReport
    report_path: Path
    histogram_path: Path


def vae_device_and_dtype(mixed_precision: str, device: str | torch.device | None = None) -> tuple[torch.device, Any]:
    """The GPU when there is one; fp16 only on a GPU (CPU half-precision convolutions are missing or slow)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = VAE_DTYPES[mixed_precision]
    if dtype == torch.float16 and device.type == "cpu":
        dtype = torch.float32
    return device, dtype


def prepare_buckets_latents(
    train_dir: str | os.PathLike[str],
    in_json: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    model: str | os.PathLike[str] | Any,
    options: LatentCacheOptions,
    *,
    mixed_precision: str = "no",
    device: str | torch.device | None = None,
    tokenizer: Any = None,
    progress: Progress | None = None,
) -> PreparedDataset:
    """`model` is anything `load_vae` reads (checkpoint, VAE file, diffusers folder, hub id) or a loaded VAE."""
    from lib_sdtrain.models.loading import load_vae

    options.buckets.validate()  # before loading anything
    train_dir, in_json, out_json = Path(train_dir), Path(in_json), Path(out_json)
    check_latent_inputs(train_dir, in_json, out_json, options)
    progress = progress or Progress()
    device, dtype = vae_device_and_dtype(mixed_precision, device)
    if mixed_precision == "fp16" and dtype != torch.float16:
        progress.message("fp16 is for GPUs: encoding in float32 on the CPU")
    if isinstance(model, (str, os.PathLike)):
        vae = load_vae(model, dtype=dtype)
        progress.message(f"VAE from {model} on {device} ({str(dtype).removeprefix('torch.')})")
    else:
        vae = model
    vae = vae.to(device=device, dtype=dtype).eval()

    result = cache_latents(train_dir, in_json, out_json, vae, options, progress)
    report = build_report(
        Path(train_dir),
        result.records,
        options.buckets,
        metadata=result.metadata,
        tokenizer=tokenizer,
        recursive=options.recursive,
    )
    report_path, histogram_path = report.write(out_json.parent, out_json.stem)
    return PreparedDataset(result, report, report_path, histogram_path)
