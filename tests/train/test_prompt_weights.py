"""train/prompt_weights.py: the WebUI's attention syntax and weighted, long prompts for sample images."""

from __future__ import annotations

import pytest
import torch

from lib_sdtrain.train import text
from lib_sdtrain.train.prompt_weights import parse_attention, weighted_prompt_states


def test_attention_syntax_reads_as_in_the_webui():
    parts = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [t for t, _ in parts] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."]
    assert [w for _, w in parts] == pytest.approx([1.0, 1.3 * 1.1 * 1.1, 1.1, 1.0, 1.1, 0.55, 1.1, 1.1**4, 1.1])
    assert parse_attention(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_attention("[faint") == [("faint", pytest.approx(1 / 1.1))]


def test_weighted_and_long_prompts_for_samples(tiny_sd_dir):
    from lib_sdtrain.models.loading import load_sd_model

    model = load_sd_model(tiny_sd_dir)
    tok, te = model.tokenizer, model.text_encoder
    plain = weighted_prompt_states(tok, te, ["sks dog"])
    assert torch.allclose(plain, text.encode(te, text.tokenize(tok, ["sks dog"])), atol=1e-5)  # weights 1: as trained
    weighted = weighted_prompt_states(tok, te, ["sks (dog:1.5)"])
    n = len(tok("sks").input_ids) - 2
    scaled = plain.clone()
    scaled[:, 1 + n : 1 + len(tok("sks dog").input_ids) - 2] *= 1.5
    assert torch.allclose(weighted, scaled * plain.mean() / scaled.mean(), atol=1e-5)  # kohya keeps the mean
    long = weighted_prompt_states(tok, te, [" ".join(["sks"] * 100), ""])
    assert long.shape[:2] == (2, 154)  # two chunks of 77, the negative padded to the same length
