"""Prompts to text-encoder states, as kohya does it: up to 75/150/225 tokens in chunks of BOS + 75 + EOS (with
kohya's fix-ups for SD 2's padding), and `clip_skip` taking an earlier layer's output through the final layer
norm."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer

CHUNK = 75


def tokenize(tokenizer: CLIPTokenizer, captions: list[str], max_token_length: int = 75) -> torch.Tensor:
    """[B, chunks, 77] token ids, as kohya's get_input_ids makes them: the caption (cut at max_token_length tokens)
    in chunks of 75, each BOS + 75 tokens + the sequence's last token (EOS, or padding when the caption is short).
    SD 2's tokenizer pads with "!" rather than EOS, so, as in kohya, a chunk whose text runs to its end gets an EOS
    as its last token, and a chunk with no text at all starts with one."""
    ids = tokenizer(
        captions, padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids
    bos, last = ids[:, :1], ids[:, -1:]
    chunks = torch.stack(
        [torch.cat([bos, ids[:, start : start + CHUNK], last], dim=1) for start in range(1, max_token_length, CHUNK)],
        dim=1,
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if max_token_length > CHUNK and pad != eos:
        before_last = chunks[..., -2]
        text_to_the_end = (before_last != eos) & (before_last != pad)
        chunks[..., -1] = torch.where(text_to_the_end, eos, chunks[..., -1])
        chunks[..., 1] = torch.where(chunks[..., 1] == pad, eos, chunks[..., 1])
    return chunks


def encode(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """Hidden states for tokenize()'s [B, chunks, 77] ids ([B, 77] is one chunk each). The chunks go through the
    encoder as one batch and are put back together as kohya does: the first BOS, every chunk's 75 inner states, the
    last chunk's final state; B x (chunks x 75 + 2) states."""
    if input_ids.dim() == 2:
        input_ids = input_ids[:, None]
    batch, count, length = input_ids.shape
    states = _encode_chunk(text_encoder, input_ids.reshape(batch * count, length), clip_skip)
    if count == 1:
        return states
    states = states.reshape(batch, count, length, -1)
    inner = states[:, :, 1:-1].reshape(batch, count * (length - 2), -1)
    return torch.cat([states[:, 0, :1], inner, states[:, -1, -1:]], dim=1)


def _encode_chunk(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    input_ids = input_ids.to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    return text_encoder.text_model.final_layer_norm(out.hidden_states[-clip_skip])
