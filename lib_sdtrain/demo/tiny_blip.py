"""A tiny BLIP captioner (transformers' BlipForConditionalGeneration, one 64-wide layer per tower) for the tests
and the demo.

Random weights would caption with word salad, so the text decoder is set up as a small word-to-word grammar:
token embeddings are one-hot, every attention and MLP sub-layer adds nothing, so the hidden state at a position
depends only on that position's token, and the LM head maps it to the log-probabilities of the next word
(GRAMMAR). Sampling then writes short plausible captions ("a cute red blob with two big eyes on soft grass");
beam search writes the likeliest one. The captions do not depend on the image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
END = "[SEP]"  # BLIP's end of caption
# Every word and the words that may follow it, with weights. "a picture of" is the prompt BLIP continues.
GRAMMAR: dict[str, dict[str, float]] = {
    "of": {"a": 1},
    "a": {"small": 2, "cute": 2, "round": 1, "red": 3},
    "small": {"red": 1},
    "cute": {"red": 3, "round": 1},
    "round": {"red": 1},
    "red": {"creature": 2, "blob": 2, "monster": 1},
    "creature": {"with": 3, "sitting": 1, "on": 2, "in": 2, END: 1},
    "blob": {"with": 3, "sitting": 1, "on": 2, "in": 2, END: 1},
    "monster": {"with": 3, "sitting": 1, "on": 2, "in": 2, END: 1},
    "with": {"two": 1, "big": 2},
    "two": {"big": 1},
    "big": {"eyes": 1},
    "eyes": {"on": 2, "in": 2, END: 1},
    "sitting": {"on": 1, "in": 1},
    "on": {"soft": 2, "white": 1},
    "soft": {"grass": 2, "sand": 1, "snow": 1},
    "white": {"background": 1},
    "in": {"the": 1},
    "the": {"sky": 2, "park": 2, "snow": 1, "dark": 1, "sunset": 1},
}
WORDS = ["a", "picture", "of", *sorted({w for nexts in GRAMMAR.values() for w in nexts if w != END} - {"a", "of"})]
WORDS += sorted(set(GRAMMAR) - set(WORDS))
HIDDEN = 64
NEVER = -30.0  # log-probability of a word the grammar does not allow


def write_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A BLIP captioning model saved as a transformers folder (weights and processor), deterministic for a seed."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [*SPECIAL, *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]", model_max_length=64)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    text = BlipTextConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, encoder_hidden_size=HIDDEN, intermediate_size=128,
        num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=64, bos_token_id=vocab.index("[DEC]"),
        pad_token_id=0, sep_token_id=vocab.index(END),
    )  # fmt: skip
    vision = BlipVisionConfig(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1, image_size=32,
        patch_size=8,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(BlipConfig.from_text_vision_configs(text, vision, projection_dim=HIDDEN))
    _make_grammar_decoder(model.text_decoder, vocab)
    model.save_pretrained(folder, safe_serialization=True)  # no pickle: the WebUI's torch.load refuses them
    processor.save_pretrained(folder)
    return folder


@torch.no_grad()
def _make_grammar_decoder(decoder: Any, vocab: list[str]) -> None:  # transformers BlipTextLMHeadModel
    """Set the text decoder's weights so that its next-token log-probabilities are GRAMMAR's (see the docstring)."""
    if len(vocab) > HIDDEN:
        raise ValueError(f"one-hot embeddings need at most {HIDDEN} tokens, not {len(vocab)}")
    bert, head = decoder.bert, decoder.cls.predictions
    bert.embeddings.word_embeddings.weight.copy_(torch.eye(len(vocab), HIDDEN))
    bert.embeddings.position_embeddings.weight.zero_()
    for layer in bert.encoder.layer:
        for dense in (layer.attention.output.dense, layer.crossattention.output.dense, layer.output.dense):
            dense.weight.zero_()  # each sub-layer adds nothing: LayerNorm(x + 0)
            dense.bias.zero_()
    head.transform.dense.weight.copy_(torch.eye(HIDDEN))
    head.transform.dense.bias.zero_()
    head.bias.zero_()
    # The hidden state each token leads to after the LayerNorms and the head's GELU, then solve for the last layer.
    # The rows are independent (one-hot through LayerNorms), so the least-norm solution H^T (H H^T)^-1 T is exact.
    hidden = _head_input(decoder, torch.arange(len(vocab))).double()
    target = torch.tensor([_log_probs(word, vocab) for word in vocab], dtype=torch.float64)
    weight = hidden.T @ torch.linalg.solve(hidden @ hidden.T, target)
    head.decoder.weight.copy_(weight.T)


def _head_input(decoder: Any, token_ids: torch.Tensor) -> torch.Tensor:
    """What the LM head's last Linear sees for each token alone (the sub-layers add nothing, so context is moot)."""
    hidden = decoder.bert.embeddings(token_ids[:, None])
    for layer in decoder.bert.encoder.layer:
        hidden = layer.attention.output.LayerNorm(hidden)
        hidden = layer.crossattention.output.LayerNorm(hidden)
        hidden = layer.output.LayerNorm(hidden)
    return decoder.cls.predictions.transform(hidden)[:, 0]


def _log_probs(word: str, vocab: list[str]) -> list[float]:
    nexts = GRAMMAR.get(word, {END: 1})  # special tokens and "picture" end the caption
    # Equal weights are nudged apart in listed order: with exact ties beam search would pick by rounding noise,
    # which differs with the batch size.
    weights = {w: weight * (1 - 0.03 * i) for i, (w, weight) in enumerate(nexts.items())}
    total = sum(weights.values())
    return [math.log(weights[w] / total) if w in weights else NEVER for w in vocab]
