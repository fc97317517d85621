"""Training data layouts, caption handling and prompt encoding."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lib_sdtrain.errors import DatasetError
from lib_sdtrain.models.loading import load_sd_model
from lib_sdtrain.train import data, text
from lib_sdtrain.train.config import TrainConfig


def test_dreambooth_folders_with_repeats_and_captions(tmp_path):
    root = tmp_path / "train"
    (root / "5_sks girl").mkdir(parents=True)
    (root / "2_style").mkdir()
    (root / "notes").mkdir()  # not an N_name folder: ignored
    Image.new("RGB", (128, 64)).save(root / "5_sks girl" / "a.png")
    Image.new("RGB", (64, 64)).save(root / "5_sks girl" / "b.png")
    (root / "5_sks girl" / "a.caption").write_bytes("sks girl, caf\xe9".encode("cp1252"))  # not UTF-8
    Image.new("RGB", (64, 128)).save(root / "2_style" / "c.png")
    config = TrainConfig(train_data_dir=str(root), resolution="96,96", min_bucket_reso=64, bucket_reso_steps=32)
    items = data.collect_items(config)
    by_key = {}
    for item in items:
        by_key.setdefault(item.key, []).append(item)
    assert {k: len(v) for k, v in by_key.items()} == {"5_sks girl/a.png": 5, "5_sks girl/b.png": 5, "2_style/c.png": 2}
    assert by_key["5_sks girl/a.png"][0].caption == "sks girl, café"
    assert by_key["5_sks girl/b.png"][0].caption == "sks girl"  # the folder's class words
    assert by_key["5_sks girl/a.png"][0].bucket[0] > by_key["5_sks girl/a.png"][0].bucket[1]  # landscape bucket
    assert by_key["2_style/c.png"][0].bucket[0] < by_key["2_style/c.png"][0].bucket[1]

    batches = data.epoch_batches(items, 2, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(items)))
    assert all(len({items[i].bucket for i in b}) == 1 for b in batches)  # one resolution per batch
    assert batches == data.epoch_batches(items, 2, seed=1, epoch=0) != data.epoch_batches(items, 2, seed=1, epoch=1)

    pixels = data.load_pixels(by_key["5_sks girl/a.png"][0])
    assert pixels.shape == (3, *reversed(by_key["5_sks girl/a.png"][0].bucket)) and pixels.min() >= -1


def test_empty_or_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="No training images"):
        data.collect_items(TrainConfig(train_data_dir=str(tmp_path)))
    with pytest.raises(DatasetError, match="in_json not found"):
        data.collect_items(TrainConfig(train_data_dir=str(tmp_path), in_json=str(tmp_path / "meta_lat.json")))


def test_caption_shuffle_keep_tokens_and_dropout():
    config = TrainConfig(shuffle_caption=True, keep_tokens=1)
    seen = {data.process_caption("sks, red, hat, smile", config, torch.Generator().manual_seed(s)) for s in range(20)}
    assert len(seen) > 1 and all(
        c.startswith("sks, ") and sorted(c.split(", ")) == ["hat", "red", "sks", "smile"] for c in seen
    )
    dropped = TrainConfig(caption_dropout_rate=1.0)
    assert data.process_caption("sks", dropped, torch.Generator()) == ""


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


def kohya_v2_chunks(ids: list[int], eos: int, pad: int, max_length: int) -> list[list[int]]:
    """kohya's get_input_ids for SD 2 (pad != eos), step by step, for one caption."""
    chunks = []
    for i in range(1, max_length - 77 + 4, 75):
        chunk = [ids[0], *ids[i : i + 75], ids[-1]]
        if chunk[-2] not in (eos, pad):
            chunk[-1] = eos
        if chunk[1] == pad:
            chunk[1] = eos
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("words", [3, 74, 75, 90, 200])
def test_sd2_long_captions_get_kohyas_eos_fixups(tiny_sd2_dir, words):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd2_dir / "tokenizer", pad_token="!")  # SD 2's, as the WebUI's
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    caption = " ".join(["sks"] * words)
    for max_length in (150, 225):
        ids = tokenizer(caption, padding="max_length", truncation=True, max_length=max_length + 2).input_ids
        expected = kohya_v2_chunks(ids, tokenizer.eos_token_id, tokenizer.pad_token_id, max_length + 2)
        assert text.tokenize(tokenizer, [caption], max_length)[0].tolist() == expected
