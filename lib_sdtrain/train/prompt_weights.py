"""Prompt weighting for sample images, as kohya's sample pipeline (and the WebUI) read prompts:

    (word) x1.1   ((word)) x1.21   (word:1.5) x1.5   [word] /1.1   \\( \\) \\[ \\] literal brackets

and prompts longer than 75 tokens in up to three chunks of BOS + 75 tokens + EOS, each encoded on its own. Each
token's state is multiplied by its weight, then the whole is rescaled to keep its mean, as kohya's
get_weighted_text_embeddings does.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from lib_sdtrain.train import text

UP, DOWN = 1.1, 1 / 1.1
MAX_CHUNKS = 3  # kohya's max_embeddings_multiples for samples: 225 tokens

_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|]|[^\\()\[\]:]+|:")


def parse_attention(prompt: str) -> list[tuple[str, float]]:
    """[(text, weight)] for a prompt in the WebUI's attention syntax; unclosed brackets still apply to the end, and
    neighbours of equal weight are merged."""
    parts: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _TOKEN.finditer(prompt):
        piece, weight = match[0], match[1]
        if piece.startswith("\\") and len(piece) == 2:
            parts.append([piece[1], 1.0])
        elif piece == "(":
            round_open.append(len(parts))
        elif piece == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), UP)
        elif piece == "]" and square_open:
            scale(square_open.pop(), DOWN)
        else:
            parts.append([piece, 1.0])
    for start in round_open:
        scale(start, UP)
    for start in square_open:
        scale(start, DOWN)
    merged: list[list] = []
    for piece, weight in parts:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += piece
        else:
            merged.append([piece, weight])
    return [(p, w) for p, w in merged] or [("", 1.0)]


def tokens_with_weights(tokenizer: CLIPTokenizer, prompt: str, limit: int) -> tuple[list[int], list[float]]:
    """The prompt's token ids (no BOS/EOS) and each token's weight, cut at `limit` tokens as kohya does."""
    tokens: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_attention(prompt):
        ids = tokenizer(piece).input_ids[1:-1]
        tokens += ids
        weights += [weight] * len(ids)
    return tokens[:limit], weights[:limit]


def _chunks(
    tokens: list[int], weights: list[float], count: int, bos: int, eos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[count, 77] ids (each chunk BOS + 75 tokens padded with EOS + EOS) and their [count * 77] weights."""
    ids, all_weights = [], []
    for i in range(count):
        part = tokens[i * text.CHUNK : (i + 1) * text.CHUNK]
        part_weights = weights[i * text.CHUNK : (i + 1) * text.CHUNK]
        padding = text.CHUNK - len(part)
        ids.append([bos, *part, *[eos] * padding, eos])
        all_weights += [1.0, *part_weights, *[1.0] * padding, 1.0]
    return torch.tensor(ids), torch.tensor(all_weights)


@torch.no_grad()
def weighted_prompt_states(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str], clip_skip: int = 1
) -> torch.Tensor:
    """[len(prompts), chunks * 77, width] text-encoder states; all prompts get as many chunks as the longest needs
    (at most MAX_CHUNKS), so a prompt and its negative line up for classifier-free guidance."""
    parsed = [tokens_with_weights(tokenizer, p, MAX_CHUNKS * text.CHUNK) for p in prompts]
    count = _chunk_count(parsed)
    states = []
    for tokens, weights in parsed:
        ids, token_weights = _chunks(tokens, weights, count, tokenizer.bos_token_id, tokenizer.eos_token_id)
        states.append(_weighted(text.encode(text_encoder, ids, clip_skip), token_weights))
    return torch.cat(states)


def _chunk_count(parsed: list[tuple[list[int], list[float]]]) -> int:
    """Chunks of 75 tokens for the longest prompt (all prompts get as many), at most MAX_CHUNKS."""
    longest = max(len(tokens) for tokens, _ in parsed)
    return min(MAX_CHUNKS, max(1, (longest - 1) // text.CHUNK + 1))


def _weighted(hidden: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """[chunks, 77, width] states as one [1, chunks * 77, width] sequence, each token's state scaled by its weight
    and the whole rescaled to its unweighted mean (the WebUI's and kohya's rule)."""
    hidden = hidden.reshape(1, -1, hidden.shape[-1])
    token_weights = token_weights.to(hidden.device, hidden.dtype)
    before = hidden.float().mean()
    weighted = hidden * token_weights[None, :, None]
    return weighted * (before / weighted.float().mean()).to(hidden.dtype)


@torch.no_grad()
def weighted_prompt_states_sdxl(model: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's (states, pooled) for `prompts`, weighted as weighted_prompt_states weights them: each chunk through
    both encoders (text.encode_sdxl), the token weights applied to the joined states with the mean kept; the pooled
    text is the first chunk's, unweighted, as kohya's SDXL sample pipeline takes it."""
    tokenizer, tokenizer_2 = model.tokenizer, model.tokenizer_2
    parsed = [tokens_with_weights(tokenizer, p, MAX_CHUNKS * text.CHUNK) for p in prompts]
    count = _chunk_count(parsed)
    states, pooled = [], []
    for prompt, (tokens, weights) in zip(prompts, parsed, strict=True):
        ids, token_weights = _chunks(tokens, weights, count, tokenizer.bos_token_id, tokenizer.eos_token_id)
        tokens_2, weights_2 = tokens_with_weights(tokenizer_2, prompt, MAX_CHUNKS * text.CHUNK)
        ids_2, _ = _chunks(tokens_2, weights_2, count, tokenizer_2.bos_token_id, tokenizer_2.eos_token_id)
        hidden, pool = text.encode_sdxl(model.text_encoder, model.text_encoder_2, ids, ids_2, tokenizer_2.eos_token_id)
        states.append(_weighted(hidden, token_weights))
        pooled.append(pool[:1])
    return torch.cat(states), torch.cat(pooled)
