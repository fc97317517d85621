"""WD14 tagging through a real (tiny, hand-written) ONNX tagger and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.dataset.tagging import TagOptions, find_tagger, prepare_image, tag_images
from lib_sdtrain.demo.onnx_writer import write_tiny_tagger
from lib_sdtrain.errors import DatasetError, ModelLoadError

# name, category, weights on mean (B, G, R) in 0-1, bias
TAGS = [
    ("general", 9, (0, 0, 0), 1.0),
    ("sensitive", 9, (0, 0, 0), -1.0),
    ("questionable", 9, (0, 0, 0), -2.0),
    ("explicit", 9, (0, 0, 0), -3.0),
    ("red_shirt", 0, (-4, -4, 8), -2.0),
    ("blue_sky", 0, (8, -4, -4), -2.0),
    ("^_^", 0, (0, 0, 0), 2.0),
    ("hatsune_miku", 4, (-4, 6, -4), -1.5),
]


@pytest.fixture
def tagger_dir(tmp_path):
    return write_tiny_tagger(tmp_path / "wd-v1-4-tiny-tagger", TAGS)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(folder / "blue.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(folder / "green.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    return folder


def read(path):
    return path.read_text(encoding="utf-8").strip()


def test_tags_follow_the_image_and_thresholds(tagger_dir, images):
    summary = tag_images(images, find_tagger(str(tagger_dir)), TagOptions(remove_underscore=True))
    assert summary.written == 3 and summary.provider == "CPUExecutionProvider"
    assert list(summary.failed) == [str(images / "broken.png")]
    assert summary.failed[str(images / "broken.png")] == "not an image Pillow can read"
    assert read(images / "red.txt") == "red shirt, ^_^"  # underscores go, except in short tags like ^_^
    assert read(images / "blue.txt") == "blue sky, ^_^"
    assert read(images / "green.txt") == "^_^, hatsune miku"  # CSV order: general, then character


def test_separate_thresholds_undesired_tags_and_ratings(tagger_dir, images):
    options = TagOptions(character_threshold=0.99, undesired_tags="^_^, blue_sky", use_rating_tags=True)
    tag_images(images, find_tagger(str(tagger_dir)), options)
    assert read(images / "green.txt") == "general"  # miku under 0.99, ^_^ undesired; the likeliest rating first
    assert read(images / "blue.txt") == "general"
    assert read(images / "red.txt") == "general, red_shirt"


def test_existing_files_are_kept_unless_asked(tagger_dir, images):
    (images / "red.txt").write_text("my own tags, 1girl")
    tagger = find_tagger(str(tagger_dir))
    summary = tag_images(images, tagger, TagOptions())
    assert summary.skipped_existing == 1 and read(images / "red.txt") == "my own tags, 1girl"
    tag_images(images, tagger, TagOptions(append_tags=True))
    assert read(images / "red.txt") == "my own tags, 1girl, red_shirt, ^_^"
    tag_images(images, tagger, TagOptions(overwrite=True))
    assert read(images / "red.txt") == "red_shirt, ^_^"


def test_preprocessing_pads_white_and_swaps_to_bgr():
    array = prepare_image(Image.new("RGB", (32, 16), (255, 0, 0)), 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    assert tuple(array[0, 0]) == (255, 255, 255)  # padding above the image is white
    assert tuple(array[16, 16]) == (0, 0, 255)  # red in BGR order, 0-255
    assert prepare_image(Image.new("RGB", (64, 64), (10, 20, 30)), 32)[5, 5].tolist() == [30, 20, 10]


def test_bad_tagger_and_folder(tagger_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"no model\.onnx"):
        find_tagger(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Could not get the tagger sdtrain-tests/none"):
        find_tagger(None, "sdtrain-tests/none")
    (tagger_dir / "model.onnx").write_bytes(b"not onnx")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ModelLoadError, match="not a usable ONNX model"):
        tag_images(tmp_path, find_tagger(str(tagger_dir)), TagOptions())
    with pytest.raises(DatasetError, match="not found"):
        tag_images(tmp_path / "missing", find_tagger(str(tagger_dir)), TagOptions())


def test_tag_cli(tagger_dir, images, capsys):
    from lib_sdtrain.main import main

    code = main(["tag", str(images), "--model_dir", str(tagger_dir), "--batch_size", "2", "--debug", "--thresh", "0.5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "tagged 3 images; kept 0 existing files; 1 unreadable" in out
    assert read(images / "red.txt") == "red_shirt, ^_^"
