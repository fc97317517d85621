"""Salesforce's original BLIP captioning checkpoint (`model_large_caption.pth`, the file kohya's make_captions.py
and the tutorial use) turned into transformers' BlipForConditionalGeneration.

Only the vision tower is named differently (a timm-style ViT); the text decoder already uses BERT's names. The
config is read off the tensor shapes, so the large and base checkpoints (and the tests' tiny one) load alike.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lib_sdtrain.errors import ModelLoadError
from lib_sdtrain.utils.torch_pickle import load_pickle

_VISION_LAYER = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_TOP = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "visual_encoder.norm.weight": "vision_model.post_layernorm.weight",
    "visual_encoder.norm.bias": "vision_model.post_layernorm.bias",
}
_BLOCK = re.compile(
    r"^visual_encoder\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"
)


def transformers_key(original: str) -> str | None:
    """transformers' name for an original BLIP key; None for keys the captioning model does not use."""
    if original in _VISION_TOP:
        return _VISION_TOP[original]
    if m := _BLOCK.match(original):
        return f"vision_model.encoder.layers.{m[1]}.{_VISION_LAYER[m[2]]}.{m[3]}"
    if original.startswith("text_decoder."):
        return original
    return None


def read_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"BLIP checkpoint not found: {path}")
    obj = load_pickle(path)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "visual_encoder.cls_token" not in state:
        raise ModelLoadError(f"{path.name} is not an original BLIP captioning checkpoint (no visual_encoder.*).")
    return state


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    return len({m[1] for k in state if (m := re.match(pattern, k))})


def config_from_shapes(state: dict[str, torch.Tensor]):
    from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

    hidden = state["visual_encoder.cls_token"].shape[-1]
    patch = state["visual_encoder.patch_embed.proj.weight"].shape[-1]
    grid = round((state["visual_encoder.pos_embed"].shape[1] - 1) ** 0.5)
    vision = BlipVisionConfig(
        hidden_size=hidden,
        intermediate_size=state["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(state, r"^visual_encoder\.blocks\.(\d+)\."),
        num_attention_heads=max(1, hidden // 64),  # BLIP's heads are 64 wide (ViT-B/L, BERT-base)
        image_size=grid * patch,
        patch_size=patch,
    )
    p = "text_decoder.bert."
    vocab, text_hidden = state[p + "embeddings.word_embeddings.weight"].shape
    text = BlipTextConfig(
        vocab_size=vocab,
        hidden_size=text_hidden,
        encoder_hidden_size=state[p + "encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=state[p + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count(state, r"^text_decoder\.bert\.encoder\.layer\.(\d+)\."),
        num_attention_heads=max(1, text_hidden // 64),
        max_position_embeddings=state[p + "embeddings.position_embeddings.weight"].shape[0],
    )
    return BlipConfig.from_text_vision_configs(text, vision)


def load_original_blip(path: str | Path, token_ids: dict[str, int]):
    """BlipForConditionalGeneration from an original checkpoint. `token_ids` (bos_token_id, sep_token_id,
    pad_token_id) come from the tokenizer used with it."""
    from transformers import BlipForConditionalGeneration

    original = read_original_checkpoint(path)
    config = config_from_shapes(original)
    for key, value in token_ids.items():
        setattr(config.text_config, key, value)
    model = BlipForConditionalGeneration(config)
    converted = {new: v for k, v in original.items() if (new := transformers_key(k))}
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted and not k.endswith("position_ids")]
    if missing:
        raise ModelLoadError(f"{Path(path).name} lacks {len(missing)} BLIP tensors, e.g. {missing[:3]}")
    model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=False)
    return model
