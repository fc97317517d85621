"""The full SD 1.5 architecture with random weights, for benchmarks (no weights can be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def sd15_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**SD15_UNET)


def sd15_vae() -> AutoencoderKL:
    return AutoencoderKL(**SD15_VAE)


def sd15_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**SD15_TEXT))


def write_config_folder(folder: Path, tokenizer) -> Path:
    """A diffusers model folder with configs only (what diffusers' from_single_file needs offline)."""
    for name, model_cls, config in (("unet", UNet2DConditionModel, SD15_UNET), ("vae", AutoencoderKL, SD15_VAE)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps({"_class_name": model_cls.__name__, **config}))
    CLIPTextConfig(**SD15_TEXT).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_config(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def random_sd15_model(tokenizer, seed: int = 0):
    from lib_sdtrain.models.sd_model import SDModel

    torch.manual_seed(seed)
    return SDModel(
        unet=sd15_unet(),
        vae=sd15_vae(),
        text_encoder=sd15_text_encoder(),
        tokenizer=tokenizer,
        version="sd1",
        prediction_type="epsilon",
        source="random SD1.5 architecture",
    )
