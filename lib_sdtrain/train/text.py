"""Prompts to text-encoder states, as kohya does it: up to 75/150/225 tokens in chunks of BOS + 75 + EOS, and
`clip_skip` taking an earlier layer's output through the final layer norm."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer

CHUNK = 75


def tokenize(tokenizer: CLIPTokenizer, captions: list[str], max_token_length: int = 75) -> torch.Tensor:
    """[B, max_token_length + 2] token ids: BOS, the caption (truncated), EOS, padding."""
    return tokenizer(
        captions, padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids


def encode(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """Hidden states for `input_ids` of 77, 152 or 227 tokens. Longer prompts go through the encoder in chunks of
    77 (each with its own BOS/EOS) and are put back together as kohya does: the first BOS, every chunk's 75 inner
    states, the last EOS."""
    length = input_ids.shape[1] - 2
    if length == CHUNK:
        return _encode_chunk(text_encoder, input_ids, clip_skip)
    bos, eos = input_ids[:, :1], input_ids[:, -1:]
    parts = []
    for start in range(1, length + 1, CHUNK):
        chunk = torch.cat([bos, input_ids[:, start : start + CHUNK], eos], dim=1)
        parts.append(_encode_chunk(text_encoder, chunk, clip_skip))
    inner = [p[:, 1:-1] for p in parts]
    return torch.cat([parts[0][:, :1], *inner, parts[-1][:, -1:]], dim=1)


def _encode_chunk(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    input_ids = input_ids.to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    return text_encoder.text_model.final_layer_norm(out.hidden_states[-clip_skip])
