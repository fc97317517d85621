"""BLIP captioning through transformers' real pipeline on a tiny BLIP built from a config (lib_sdtrain.demo)."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip
from lib_sdtrain.demo.tiny_blip import WORDS, write_tiny_blip
from lib_sdtrain.errors import DatasetError, ModelLoadError


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
    with pytest.raises(ModelLoadError, match="BLIP checkpoint not found"):
        load_blip(str(tmp_path / "model_large_caption.pth"), processor_source=str(blip_dir))
    with pytest.raises(DatasetError, match="not found"):
        caption_images(tmp_path / "nope", load_blip(str(blip_dir), device="cpu"), CaptionOptions())


def test_caption_cli(blip_dir, images, capsys):
    from lib_sdtrain.main import main

    assert main(["caption", str(images), "--caption_weights", str(blip_dir), "--beam_search", "--num_beams", "2",
                 "--max_length", "10", "--min_length", "2", "--debug"]) == 0  # fmt: skip
    assert "captioned 2 images; kept 0 existing files; 1 unreadable" in capsys.readouterr().out


def _to_original_layout(state):
    """Invert the key map: the tiny transformers BLIP written as Salesforce's original checkpoint would hold it."""
    from lib_sdtrain.dataset.blip_original import _BLOCK, _VISION_LAYER, _VISION_TOP

    inverse_top = {v: k for k, v in _VISION_TOP.items()}
    inverse_layer = {v: k for k, v in _VISION_LAYER.items()}
    original = {}
    for key, value in state.items():
        if key in inverse_top:
            original[inverse_top[key]] = value
        elif m := re.match(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key):
            original[f"visual_encoder.blocks.{m[1]}.{inverse_layer[m[2]]}.{m[3]}"] = value
        elif key.startswith("text_decoder."):
            original[key] = value
    assert all(_BLOCK.match(k) for k in original if k.startswith("visual_encoder.blocks."))
    return original


def test_original_salesforce_checkpoint_is_converted(blip_dir, images, tmp_path):
    reference = load_blip(str(blip_dir), device="cpu")
    pth = tmp_path / "model_large_caption.pth"
    torch.save({"model": _to_original_layout(reference.model.state_dict())}, pth)
    converted = load_blip(str(pth), device="cpu", processor_source=str(blip_dir))
    ours, theirs = converted.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    options = CaptionOptions(beam_search=True, num_beams=2, min_length=3, max_length=12, overwrite=True)
    caption_images(images, reference, options)
    expected = (images / "a.caption").read_text()
    caption_images(images, converted, options)
    assert (images / "a.caption").read_text() == expected

    torch.save({"model": {"foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="not an original BLIP captioning checkpoint"):
        load_blip(str(tmp_path / "other.pth"), processor_source=str(blip_dir))
