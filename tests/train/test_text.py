"""train/text.py: captions tokenized and encoded: long prompts in chunks of 75, clip_skip, SD 2's EOS fix-ups."""

from __future__ import annotations

import pytest
import torch

from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.train import text
from tests.train import kohya_reference as kohya


def test_long_prompts_and_clip_skip(tiny_sd_dir):
    model = load_sd_model(tiny_sd_dir)
    short = text.tokenize(model.tokenizer, ["a photo of sks"], 75)
    long = text.tokenize(model.tokenizer, ["a photo of sks " * 40], 150)
    assert short.shape == (1, 1, 77) and long.shape == (1, 2, 77)
    with torch.no_grad():
        assert text.encode(model.text_encoder, short).shape == (1, 77, 64)
        states = text.encode(model.text_encoder, long)
        assert states.shape == (1, 152, 64)
        # The first chunk is encoded exactly as a 75-token prompt of its own.
        first = long[:, 0]
        torch.testing.assert_close(states[:, 1:76], text.encode(model.text_encoder, first)[:, 1:76], atol=1e-5, rtol=0)
        # clip_skip 2: the penultimate layer through the final layer norm.
        out = model.text_encoder(short[:, 0], output_hidden_states=True)
        expected = model.text_encoder.text_model.final_layer_norm(out.hidden_states[-2])
        torch.testing.assert_close(text.encode(model.text_encoder, short, clip_skip=2), expected)
        assert not torch.allclose(expected, out.last_hidden_state)


@pytest.mark.parametrize("words", [3, 74, 75, 90, 200])
def test_sd2_long_captions_get_kohyas_eos_fixups(tiny_sd2_dir, words):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd2_dir / "tokenizer", pad_token="!")  # SD 2's, as the WebUI's
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    caption = " ".join(["sks"] * words)
    for max_length in (150, 225):
        expected = kohya.get_input_ids(caption, tokenizer, max_length + 2)  # kohya's tokenizer_max_length
        assert text.tokenize(tokenizer, [caption], max_length)[0].tolist() == expected.tolist()
