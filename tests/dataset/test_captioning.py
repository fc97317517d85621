"""BLIP captioning through transformers' real pipeline on a tiny BLIP built from a config."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    BlipTextConfig,
    BlipVisionConfig,
)

from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip
from lib_sdtrain.errors import DatasetError, ModelLoadError

WORDS = ["a", "picture", "of", "red", "blue", "cat", "dog", "sitting", "on", "the", "table", "with", "green"]


def write_tiny_blip(folder):
    """BLIP with 32-wide layers and a 19-word vocabulary, saved as a transformers folder (model + processor)."""
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]", model_max_length=64)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    text = BlipTextConfig(
        vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=vocab.index("[DEC]"),
        pad_token_id=0, sep_token_id=vocab.index("[SEP]"),
    )  # fmt: skip
    vision = BlipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig.from_text_vision_configs(text, vision, projection_dim=32))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return write_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGBA", (32, 48), (10, 10, 200, 128)).save(folder / "b.png")
    (folder / "c.jpg").write_bytes(b"")
    return folder


def test_captions_are_written_through_the_real_pipeline(blip_dir, images):
    blip = load_blip(str(blip_dir), device="cpu")
    options = CaptionOptions(beam_search=True, num_beams=2, min_length=3, max_length=12, batch_size=2)
    summary = caption_images(images, blip, options)
    assert summary.written == 2 and summary.failed == {str(images / "c.jpg"): "empty file (0 bytes)"}
    captions = {p.name: p.read_text().strip() for p in images.glob("*.caption")}
    assert set(captions) == {"a.caption", "b.caption"}
    for caption in captions.values():
        words = caption.split()
        assert words and set(words) <= set(WORDS)  # decoded from the model's own vocabulary
        assert not caption.startswith("a picture of")  # the conditioning prompt is stripped
    again = {p.name: p.read_text() for p in images.glob("*.caption")}
    caption_images(
        images, blip, CaptionOptions(beam_search=True, num_beams=2, min_length=3, max_length=12, overwrite=True)
    )
    assert {p.name: p.read_text() for p in images.glob("*.caption")} == again  # beam search is deterministic


def test_existing_captions_are_kept_unless_overwrite(blip_dir, images):
    (images / "a.caption").write_text("my hand-written caption\n")
    blip = load_blip(str(blip_dir), device="cpu")
    summary = caption_images(images, blip, CaptionOptions(max_length=8, min_length=2))
    assert summary.skipped_existing == 1
    assert (images / "a.caption").read_text() == "my hand-written caption\n"
    caption_images(images, blip, CaptionOptions(max_length=8, min_length=2, overwrite=True))
    assert (images / "a.caption").read_text() != "my hand-written caption\n"


def test_sampling_is_reproducible_with_a_seed(blip_dir, images):
    blip = load_blip(str(blip_dir), device="cpu")
    options = CaptionOptions(max_length=10, min_length=2, seed=3, overwrite=True)
    caption_images(images, blip, options)
    first = (images / "a.caption").read_text()
    caption_images(images, blip, options)
    assert (images / "a.caption").read_text() == first


def test_missing_model_and_folder(blip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Could not load the BLIP model sdtrain-tests/none"):
        load_blip("sdtrain-tests/none")
    with pytest.raises(ModelLoadError, match="not supported yet"):
        load_blip(str(tmp_path / "model_large_caption.pth"))
    with pytest.raises(DatasetError, match="not found"):
        caption_images(tmp_path / "nope", load_blip(str(blip_dir), device="cpu"), CaptionOptions())


def test_caption_cli(blip_dir, images, capsys):
    from lib_sdtrain.cli import main

    assert main(["caption", str(images), "--caption_weights", str(blip_dir), "--beam_search", "--num_beams", "2",
                 "--max_length", "10", "--min_length", "2", "--debug"]) == 0  # fmt: skip
    assert "captioned 2 images; kept 0 existing files; 1 unreadable" in capsys.readouterr().out
