"""diffusers/transformers configs inferred from the tensor shapes of an ldm checkpoint.

Shapes give channels, depths, block layout and which levels have attention. What shapes cannot tell is fixed by
the SD version, as in the original model definitions: SD1 uses 8 attention heads in the UNet, SD2 heads of 64
channels with linear projections; the text encoders use heads of 64 channels, SD1 with quick-GELU (OpenAI CLIP)
and SD2 with GELU (OpenCLIP); all group norms have 32 groups. The very same code therefore reads a full SD1.5
checkpoint and the tiny ones the tests make.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import CLIPTextConfig

from lib_sdtrain.errors import ModelLoadError
from lib_sdtrain.models.checkpoint_file import LazyTensors, StateDict
from lib_sdtrain.models.ldm_keys import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT1_PREFIX,
    SDXL_TEXT2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    UNetLayout,
)

SD_VAE_SCALING_FACTOR = 0.18215
SDXL_VAE_SCALING_FACTOR = 0.13025
NORM_GROUPS = 32
TEXT_HEAD_WIDTH = 64


def _indices(state_dict: StateDict, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m[1]) for k in state_dict if (m := regex.match(k))})


def _shape(state_dict: StateDict, key: str) -> torch.Size:
    try:
        # A lazily read file answers shapes from its header, without reading the tensor.
        return state_dict.shape(key) if isinstance(state_dict, LazyTensors) else state_dict[key].shape
    except KeyError:
        raise ModelLoadError(f"Checkpoint is missing {key!r}; it is incomplete or not an SD 1.x/2.x model.") from None


def infer_unet_config(state_dict: StateDict, version: str, v_prediction: bool = False) -> dict[str, Any]:
    p = UNET_PREFIX
    model_channels, in_channels = _shape(state_dict, p + "input_blocks.0.0.weight")[:2]
    levels: list[dict[str, Any]] = [{"channels": model_channels, "attention": False, "layers": 0, "depth": 1}]
    for i in _indices(state_dict, re.escape(p) + r"input_blocks\.(\d+)\.")[1:]:
        if f"{p}input_blocks.{i}.0.op.weight" in state_dict:  # a downsampler closes a level
            levels.append({"channels": None, "attention": False, "layers": 0, "depth": 1})
            continue
        level = levels[-1]
        level["layers"] += 1
        level["channels"] = _shape(state_dict, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
        if f"{p}input_blocks.{i}.1.proj_in.weight" in state_dict:
            level["attention"] = True
            blocks = _indices(state_dict, re.escape(f"{p}input_blocks.{i}.1.") + r"transformer_blocks\.(\d+)\.")
            level["depth"] = len(blocks)

    layers_per_block = levels[0]["layers"]
    if any(level["layers"] != layers_per_block for level in levels):
        raise ModelLoadError("UNet levels have different numbers of layers; this layout is not SD 1.x/2.x.")
    channels = [int(level["channels"]) for level in levels]
    attention = [level["attention"] for level in levels]

    cross_key = next((k for k in state_dict if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    if cross_key is None:
        raise ModelLoadError("UNet has no cross-attention layers; this is not an SD 1.x/2.x text-to-image UNet.")
    blocks = _indices(state_dict, re.escape(p) + r"input_blocks\.(\d+)\.")
    first_attention = next(
        f"{p}input_blocks.{i}.1." for i in blocks if f"{p}input_blocks.{i}.1.proj_in.weight" in state_dict
    )
    depth = len(_indices(state_dict, re.escape(first_attention) + r"transformer_blocks\.(\d+)\."))
    linear_projection = len(_shape(state_dict, first_attention + "proj_in.weight")) == 2

    sdxl = version == "sdxl"
    config: dict[str, Any] = {
        "sample_size": 128 if sdxl else 96 if (version == "sd2" and v_prediction) else 64,
        "in_channels": int(in_channels),
        "out_channels": int(_shape(state_dict, p + "out.2.weight")[0]),
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "cross_attention_dim": int(_shape(state_dict, cross_key)[1]),
        # SDXL's depth differs per level (1, 2, 10 transformer blocks in the base model)
        "transformer_layers_per_block": [level["depth"] for level in levels] if sdxl else depth,
        # diffusers calls SD1's head *count* attention_head_dim; SD2 and SDXL have 64-channel heads.
        "attention_head_dim": [c // 64 for c in channels] if version in ("sd2", "sdxl") else 8,
        "use_linear_projection": linear_projection,
        "upcast_attention": version == "sd2",  # SD2.x overflows in fp16 attention without it
        "norm_num_groups": NORM_GROUPS,
    }
    if sdxl:  # the pooled text embedding and six size/crop ids, each as a sinusoidal embedding, added to time's
        added = int(_shape(state_dict, p + "label_emb.0.0.weight")[1])
        pooled = int(_shape(state_dict, SDXL_TEXT2_PREFIX + "text_projection")[1])
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(added - pooled) // 6,
            projection_class_embeddings_input_dim=added,
        )
    return config


def unet_layout(config: Any) -> UNetLayout:
    """The UNet key rule's view of a diffusers UNet config (a dict or a FrozenDict)."""
    return UNetLayout(
        layers_per_block=int(config["layers_per_block"]),
        up_block_has_attention=tuple(t.startswith("CrossAttn") for t in config["up_block_types"]),
    )


def infer_vae_config(state_dict: StateDict, scaling_factor: float = SD_VAE_SCALING_FACTOR) -> dict[str, Any]:
    p = VAE_PREFIX
    levels = _indices(state_dict, re.escape(p) + r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelLoadError("Checkpoint has no VAE encoder weights (first_stage_model.encoder.down.*).")
    channels = [int(_shape(state_dict, f"{p}encoder.down.{i}.block.0.conv2.weight")[0]) for i in levels]
    return {
        "in_channels": int(_shape(state_dict, p + "encoder.conv_in.weight")[1]),
        "out_channels": int(_shape(state_dict, p + "decoder.conv_out.weight")[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": len(_indices(state_dict, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": int(_shape(state_dict, p + "quant_conv.weight")[0]) // 2,
        "norm_num_groups": NORM_GROUPS,
        "sample_size": 512,
        "scaling_factor": scaling_factor,
    }


def infer_text_config(state_dict: StateDict, version: str, token_ids: dict[str, int] | None = None) -> CLIPTextConfig:
    """CLIPTextConfig for the (first) text encoder. SD2 keeps one block fewer than the file has: SD2 conditions on
    the penultimate layer, so the last block is never used (it stays in the file untouched)."""
    if version == "sd1":
        return _clip_text_config(state_dict, SD1_TEXT_PREFIX + "text_model.", token_ids)
    if version == "sdxl":
        return _clip_text_config(state_dict, SDXL_TEXT1_PREFIX + "text_model.", token_ids)
    return _openclip_text_config(state_dict, SD2_TEXT_PREFIX, token_ids, unused_last_block=True)


def infer_sdxl_text2_config(state_dict: StateDict, token_ids: dict[str, int] | None = None) -> CLIPTextConfig:
    """SDXL's second text encoder (OpenCLIP bigG): every block is used (SDXL reads the penultimate layer's output
    from the hidden states, and the pooled output after the last)."""
    return _openclip_text_config(state_dict, SDXL_TEXT2_PREFIX, token_ids, unused_last_block=False)


def _clip_text_config(state_dict: StateDict, p: str, token_ids: dict[str, int] | None) -> CLIPTextConfig:
    vocab, hidden = _shape(state_dict, p + "embeddings.token_embedding.weight")
    positions = _shape(state_dict, p + "embeddings.position_embedding.weight")[0]
    layers = len(_indices(state_dict, re.escape(p) + r"encoder\.layers\.(\d+)\."))
    intermediate = _shape(state_dict, p + "encoder.layers.0.mlp.fc1.weight")[0]
    return _text_config(vocab, hidden, positions, layers, intermediate, "quick_gelu", 768, token_ids)


def _openclip_text_config(
    state_dict: StateDict, p: str, token_ids: dict[str, int] | None, unused_last_block: bool
) -> CLIPTextConfig:
    vocab, hidden = _shape(state_dict, p + "token_embedding.weight")
    positions = _shape(state_dict, p + "positional_embedding")[0]
    layers = len(_indices(state_dict, re.escape(p) + r"transformer\.resblocks\.(\d+)\.")) - int(unused_last_block)
    intermediate = _shape(state_dict, p + "transformer.resblocks.0.mlp.c_fc.weight")[0]
    projection_key = p + "text_projection"
    projection = int(_shape(state_dict, projection_key)[1]) if projection_key in state_dict else 512
    return _text_config(vocab, hidden, positions, layers, intermediate, "gelu", projection, token_ids)


def _text_config(
    vocab: int, hidden: int, positions: int, layers: int, intermediate: int, act: str, projection: int,
    token_ids: dict[str, int] | None,
) -> CLIPTextConfig:  # fmt: skip
    if layers < 1:
        raise ModelLoadError("Text encoder has no transformer layers.")
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        intermediate_size=int(intermediate),
        num_hidden_layers=layers,
        num_attention_heads=max(1, int(hidden) // TEXT_HEAD_WIDTH),
        max_position_embeddings=int(positions),
        hidden_act=act,
        projection_dim=projection,
        **(token_ids or {}),
    )


def scheduler_config_from_state_dict(state_dict: StateDict) -> dict[str, Any]:
    """Training schedule from the `betas` buffer that ldm checkpoints carry; empty (SD's defaults) without it."""
    betas = state_dict.get("betas")
    if betas is None or betas.ndim != 1 or len(betas) < 2:
        return {}
    # scaled_linear interpolates sqrt(beta) linearly, so the end points are the betas themselves.
    return {
        "num_train_timesteps": len(betas),
        "beta_start": round(float(betas[0]), 8),
        "beta_end": round(float(betas[-1]), 8),
    }
