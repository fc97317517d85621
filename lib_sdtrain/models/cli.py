"""`sdtrain inspect MODEL` and `sdtrain convert SRC DST`: look at a model, or turn it into a WebUI checkpoint."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lib_sdtrain.utils.path_kinds import PathKind, add_argument

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect",
        help="show what a model or LoRA file contains",
        description="Describe a Stable Diffusion model (single file, diffusers folder or hub id; loaded), or a "
        "kohya-format LoRA/LoCon file (type, dim/alpha, modules, base model, training summary from its metadata).",
    )
    _add_model_arguments(inspect)
    inspect.set_defaults(handler=run_inspect)

    convert = subparsers.add_parser(
        "convert",
        help="save a model as a single-file .safetensors checkpoint the WebUI loads",
        description="Convert a diffusers folder, hub id or .ckpt into a single-file ldm-layout .safetensors.",
    )
    _add_model_arguments(convert)
    add_argument(convert, "output", kind=PathKind.WRITE_FILE, type=Path, help="the .safetensors file to write")
    convert.add_argument("--save_precision", choices=sorted(DTYPES), default="fp16", help="weight precision (fp16)")
    convert.set_defaults(handler=run_convert)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_argument(
        parser, "model", kind=PathKind.MODEL, help="a .safetensors/.ckpt file, a diffusers model folder, or a hub id"
    )
    add_argument(
        parser,
        "--tokenizer",
        kind=PathKind.MODEL,
        help="CLIP tokenizer folder or hub id (single files carry none; default: the local Hugging Face cache)",
    )
    parser.add_argument("--v_parameterization", action="store_true", help="the model predicts v (SD2 768-v models)")


def _load(args: argparse.Namespace):
    from lib_sdtrain.models.loading import load_sd_model
    from lib_sdtrain.models.sd_model import PredictionType

    prediction: PredictionType | None = "v_prediction" if args.v_parameterization else None
    return load_sd_model(args.model, tokenizer=args.tokenizer, prediction_type=prediction)


def run_inspect(args: argparse.Namespace) -> int:
    from lib_sdtrain.network.describe import describe_lora, is_lora_file

    if is_lora_file(args.model):
        print(describe_lora(args.model))
        return 0
    started = time.perf_counter()
    model = _load(args)
    seconds = time.perf_counter() - started
    print(f"model:        {model.source}")
    print(f"version:      {model.version} ({model.prediction_type})")
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(model, name)
        count = sum(p.numel() for p in module.parameters())
        print(f"{name + ':':<13} {type(module).__name__}, {count / 1e6:.1f}M parameters")
    unet = model.unet.config
    blocks = f"{list(unet.block_out_channels)} x {unet.layers_per_block}"
    print(f"unet blocks:  {blocks}, cross-attention {unet.cross_attention_dim}")
    print(f"tokenizer:    {len(model.tokenizer)} tokens, max length {model.tokenizer.model_max_length}")
    if model.extra_ldm_state:
        print(f"other tensors kept for saving: {len(model.extra_ldm_state)}")
    print(f"loaded in {seconds:.1f} s")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from lib_sdtrain.errors import OutputError
    from lib_sdtrain.models.saving import save_sd_checkpoint
    from lib_sdtrain.utils.files import check_writable

    output = Path(args.output)
    check_writable(output.parent, f"{output.name} is written there")  # before the model loads, not after
    model = _load(args)
    try:
        path = save_sd_checkpoint(model, output, dtype=getattr(torch, DTYPES[args.save_precision]))
    except OSError as e:  # a disk that filled up meanwhile; the atomic write leaves no partial file
        raise OutputError(f"Could not write {output.name} in {output.parent}: {e.strerror or e}.") from None
    print(f"saved {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
