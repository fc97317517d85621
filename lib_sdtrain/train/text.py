"""Prompts to text-encoder states, as kohya does it: up to 75/150/225 tokens in chunks of BOS + 75 + EOS (with
kohya's fix-ups for SD 2's padding), and `clip_skip` taking an earlier layer's output through the final layer
norm. SDXL conditions on both encoders' penultimate layers, side by side, and on the second one's pooled output."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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
    input_ids = input_ids if input_ids.dim() == 3 else input_ids[:, None]
    batch, count, length = input_ids.shape
    states = _encode_chunk(text_encoder, input_ids.reshape(batch * count, length), clip_skip)
    return _joined(states, batch, count)


def encode_sdxl(
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    ids: torch.Tensor,
    ids_2: torch.Tensor,
    eos_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(states, pooled) for SDXL, as kohya's get_hidden_states_sdxl: each encoder's penultimate layer (no final
    layer norm), chunks joined as encode() joins them, the two side by side (768 + 1280 wide in SDXL); and the
    second encoder's projected output at the first chunk's EOS (`eos_token_id`, the second tokenizer's: SDXL's
    text_encoder_2 config says 2, not CLIP's 49407). clip_skip does not apply."""
    ids, ids_2 = (i if i.dim() == 3 else i[:, None] for i in (ids, ids_2))
    batch, count, length = ids.shape
    flat = ids.reshape(batch * count, length).to(text_encoder.device)
    first = text_encoder(flat, output_hidden_states=True).hidden_states[-2]
    flat_2 = ids_2.reshape(batch * count, length).to(text_encoder_2.device)
    out = text_encoder_2(flat_2, output_hidden_states=True)
    states = torch.cat([_joined(first, batch, count), _joined(out.hidden_states[-2], batch, count)], dim=-1)
    # pooled at each chunk's first EOS (kohya's pool_workaround; transformers pools at the highest token id)
    eos = (flat_2 == eos_token_id).int().argmax(dim=1)
    last = out.last_hidden_state[torch.arange(len(flat_2), device=flat_2.device), eos]
    pooled = text_encoder_2.text_projection(last.to(text_encoder_2.text_projection.weight.dtype)).to(last.dtype)
    return states, pooled.reshape(batch, count, -1)[:, 0]


def _joined(states: torch.Tensor, batch: int, count: int) -> torch.Tensor:
    """[B x chunks, 77, C] states as one sequence per caption: the first BOS, each chunk's inner 75, the last EOS."""
    if count == 1:
        return states
    length = states.shape[1]
    states = states.reshape(batch, count, length, -1)
    inner = states[:, :, 1:-1].reshape(batch, count * (length - 2), -1)
    return torch.cat([states[:, 0, :1], inner, states[:, -1, -1:]], dim=1)


def _encode_chunk(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    input_ids = input_ids.to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    return text_encoder.text_model.final_layer_norm(out.hidden_states[-clip_skip])
