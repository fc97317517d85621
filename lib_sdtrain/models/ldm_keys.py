"""Where each diffusers/transformers weight lives in an original (ldm, "single-file") Stable Diffusion checkpoint.

One rule per component maps a diffusers state-dict key to its ldm key. Loading walks the keys the diffusers
module expects and fetches each from the checkpoint; saving walks the module's state dict and writes each under
its ldm key. Because both directions use the same rule, load -> save -> load is exact by construction, and a key
the rule does not know is an error rather than a silent drop.

Layouts (SD1, SD2 and SDXL share the UNet and VAE layouts; SDXL's UNet adds `label_emb`):
- UNet  `model.diffusion_model.*`: input_blocks / middle_block / output_blocks, numbered per layer.
- VAE   `first_stage_model.*`: encoder.down.N.block.M ...; the decoder's `up` levels run in reverse order.
- Text  SD1 `cond_stage_model.transformer.*`: a transformers CLIPTextModel, same names.
        SD2 `cond_stage_model.model.*`: OpenCLIP, with q/k/v fused into one `in_proj` tensor.
        SDXL `conditioner.embedders.0.transformer.*` (CLIP-L, transformers names) and
        `conditioner.embedders.1.model.*` (OpenCLIP bigG, with its text_projection stored transposed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."


@dataclass(frozen=True)
class LdmRef:
    """The place of one diffusers tensor in an ldm checkpoint."""

    key: str
    chunk: int | None = None  # this tensor is part `chunk` of `chunks` equal slices (dim 0) of a fused ldm tensor
    chunks: int = 1
    conv1x1: bool = False  # a Linear weight that ldm stores as a 1x1 convolution ([out, in, 1, 1])
    transpose: bool = False  # a Linear weight that ldm stores transposed (OpenCLIP's text_projection: x @ P)


@dataclass(frozen=True)
class UNetLayout:
    """What the UNet key rule needs to know about the block structure."""

    layers_per_block: int
    up_block_has_attention: tuple[bool, ...]


# --- UNet ------------------------------------------------------------------------------------------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL: the pooled text and size/crop ids
    "add_embedding.linear_2": "label_emb.0.2",
}
_BLOCK_PART = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_PART = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_param(rest: str) -> str:
    layer, _, param = rest.partition(".")
    return f"{_RESNET_TO_LDM[layer]}.{param}"


def unet_ldm_ref(diffusers_key: str, layout: UNetLayout) -> LdmRef:
    """ldm key of a diffusers UNet key: down_blocks.0.resnets.1.conv1.weight -> input_blocks.2.0.in_layers.2.weight."""
    for name, ldm in _UNET_TOP_LEVEL.items():
        if diffusers_key.startswith(name + "."):
            return LdmRef(UNET_PREFIX + ldm + diffusers_key[len(name) :])

    per_block = layout.layers_per_block + 1  # ldm numbers every resnet and every down/upsampler as one layer
    if m := _BLOCK_PART.match(diffusers_key):
        blocks, block, part, index, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if blocks == "down_blocks":
            layer = 1 + block * per_block + (layout.layers_per_block if part == "downsamplers" else index)
            if part == "resnets":
                return LdmRef(f"{UNET_PREFIX}input_blocks.{layer}.0.{_resnet_param(rest)}")
            if part == "attentions":
                return LdmRef(f"{UNET_PREFIX}input_blocks.{layer}.1.{rest}")
            return LdmRef(f"{UNET_PREFIX}input_blocks.{layer}.0.op.{rest.removeprefix('conv.')}")
        layer = block * per_block + (layout.layers_per_block if part == "upsamplers" else index)
        if part == "resnets":
            return LdmRef(f"{UNET_PREFIX}output_blocks.{layer}.0.{_resnet_param(rest)}")
        if part == "attentions":
            return LdmRef(f"{UNET_PREFIX}output_blocks.{layer}.1.{rest}")
        slot = 2 if layout.up_block_has_attention[block] else 1
        return LdmRef(f"{UNET_PREFIX}output_blocks.{layer}.{slot}.{rest}")

    if m := _MID_PART.match(diffusers_key):
        part, index, rest = m[1], int(m[2]), m[3]
        if part == "attentions":
            return LdmRef(f"{UNET_PREFIX}middle_block.1.{rest}")
        return LdmRef(f"{UNET_PREFIX}middle_block.{0 if index == 0 else 2}.{_resnet_param(rest)}")

    raise KeyError(f"No ldm location known for UNet key {diffusers_key!r}")


# --- VAE -------------------------------------------------------------------------------------------------------

_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_SIMPLE = {"conv_norm_out": "norm_out"}


def vae_ldm_ref(diffusers_key: str, num_levels: int) -> LdmRef:
    """ldm key of a VAE key: decoder.up_blocks.0.resnets.0.conv1.weight -> decoder.up.3.block.0.conv1.weight."""
    coder, _, rest = diffusers_key.partition(".")
    if coder not in ("encoder", "decoder"):  # quant_conv, post_quant_conv
        return LdmRef(VAE_PREFIX + diffusers_key)

    if m := re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$", rest):
        direction, level, part, index, tail = m[1], int(m[2]), m[3], m[4], m[5]
        # The decoder's first up block is ldm's last `up` level.
        ldm_level = level if direction == "down" else num_levels - 1 - level
        if part == "resnets":
            tail = tail.replace("conv_shortcut.", "nin_shortcut.")
            return LdmRef(f"{VAE_PREFIX}{coder}.{direction}.{ldm_level}.block.{index}.{tail}")
        sampler = "downsample" if part == "downsamplers" else "upsample"
        return LdmRef(f"{VAE_PREFIX}{coder}.{direction}.{ldm_level}.{sampler}.{tail}")

    if m := re.match(r"^mid_block\.resnets\.(\d+)\.(.+)$", rest):
        return LdmRef(
            f"{VAE_PREFIX}{coder}.mid.block_{int(m[1]) + 1}.{m[2].replace('conv_shortcut.', 'nin_shortcut.')}"
        )
    if m := re.match(r"^mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", rest):
        layer, param = m[1], m[2]
        conv = param == "weight" and layer != "group_norm"
        return LdmRef(f"{VAE_PREFIX}{coder}.mid.attn_1.{_VAE_ATTENTION_TO_LDM[layer]}.{param}", conv1x1=conv)

    layer, _, param = rest.partition(".")
    return LdmRef(f"{VAE_PREFIX}{coder}.{_VAE_SIMPLE.get(layer, layer)}.{param}")


# --- Text encoder ----------------------------------------------------------------------------------------------

_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
POSITION_IDS_KEY = "text_model.embeddings.position_ids"


def sd1_text_ldm_ref(diffusers_key: str) -> LdmRef:
    """SD1 keeps the transformers CLIPTextModel names under one prefix."""
    return LdmRef(SD1_TEXT_PREFIX + diffusers_key)


def sd2_text_ldm_ref(diffusers_key: str) -> LdmRef | None:
    """OpenCLIP key of a transformers CLIPTextModel key (SD2). None for position_ids, which OpenCLIP does not store."""
    return openclip_text_ldm_ref(diffusers_key, SD2_TEXT_PREFIX)


def sdxl_text1_ldm_ref(diffusers_key: str) -> LdmRef:
    """SDXL's first text encoder (CLIP-L) keeps the transformers names under its embedder's prefix."""
    return LdmRef(SDXL_TEXT1_PREFIX + diffusers_key)


def sdxl_text2_ldm_ref(diffusers_key: str) -> LdmRef | None:
    """SDXL's second text encoder (OpenCLIP bigG, a transformers CLIPTextModelWithProjection here)."""
    return openclip_text_ldm_ref(diffusers_key, SDXL_TEXT2_PREFIX)


def openclip_text_ldm_ref(diffusers_key: str, prefix: str) -> LdmRef | None:
    """OpenCLIP key under `prefix` of a transformers CLIP text-model key; None for position_ids, which OpenCLIP
    does not store."""
    if diffusers_key == POSITION_IDS_KEY:
        return None
    if diffusers_key == "text_projection.weight":
        return LdmRef(prefix + "text_projection", transpose=True)
    if diffusers_key in _OPENCLIP_TOP:
        return LdmRef(prefix + _OPENCLIP_TOP[diffusers_key])
    m = re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", diffusers_key)
    if not m:
        raise KeyError(f"No OpenCLIP location known for text-encoder key {diffusers_key!r}")
    layer, module, param = m[1], m[2], m[3]
    block = f"{prefix}transformer.resblocks.{layer}"
    if qkv := re.match(r"^self_attn\.([qkv])_proj$", module):
        return LdmRef(f"{block}.attn.in_proj_{param}", chunk="qkv".index(qkv[1]), chunks=3)
    return LdmRef(f"{block}.{_OPENCLIP_LAYER[module]}.{param}")


TEXT_LDM_REFS: dict[str, Callable[[str], LdmRef | None]] = {
    "sd1": sd1_text_ldm_ref,
    "sd2": sd2_text_ldm_ref,
    "sdxl": sdxl_text1_ldm_ref,
}
"""The key rule of each version's (first) text encoder."""


def openclip_block_prefix(index: int) -> str:
    return f"{SD2_TEXT_PREFIX}transformer.resblocks.{index}."


def unet_sgm_module_path(diffusers_path: str, layout: UNetLayout) -> str:
    """Where a diffusers UNet module sits in the SGM layout, which kohya's SDXL UNet keeps and names its LoRA
    modules by: down_blocks.1.attentions.0.proj_in -> input_blocks.4.1.proj_in."""
    return unet_ldm_ref(diffusers_path + ".weight", layout).key.removeprefix(UNET_PREFIX).removesuffix(".weight")
