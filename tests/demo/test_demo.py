"""The demo set: models that load and work in the real stages, images of the promised sizes, idempotent writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from lib_sdtrain.demo import make as demo_make
from lib_sdtrain.demo import make_demo
from lib_sdtrain.demo.dataset import SIZES, draw_demo_dataset
from lib_sdtrain.demo.onnx_writer import DEMO_ALWAYS_TAGS
from lib_sdtrain.demo.tiny_blip import WORDS as CAPTION_WORDS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-home")
    return make_demo(root / "models", root / "datasets")


@pytest.fixture
def images(demo, tmp_path) -> Path:
    """A copy of the demo images, so that caption and tag files do not leak between tests."""
    return Path(shutil.copytree(demo.dataset, tmp_path / "demo"))


def test_layout_and_readme(demo):
    assert demo.made == ["sd_model", "sdxl_model", "blip", "tagger", "dataset"]
    assert demo.sd_model.parent == demo.blip.parent == demo.tagger.parent and demo.dataset.name == "demo"
    readme = (demo.sd_model.parent / "README.txt").read_text()
    assert "RANDOM weights" in readme and "not pictures" in readme and "checkpoints folder" in readme
    assert not [p for p in demo.sd_model.parent.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_the_sdxl_model_loads_as_sdxl_and_knows_the_demo_words(demo):
    from lib_sdtrain.models.loading import load_sd_model

    model = load_sd_model(demo.sdxl_model)
    assert model.version == "sdxl" and model.text_encoder_2 is not None
    assert "creature" in model.tokenizer.get_vocab() or "creature</w>" in model.tokenizer.get_vocab()


def test_sd_model_loads_and_knows_the_demo_words(demo):
    from lib_sdtrain.models.loading import load_sd_model

    model = load_sd_model(demo.sd_model)
    assert model.version == "sd1" and model.prediction_type == "epsilon"
    assert len(model.vae.config.block_out_channels) == 4  # latents are 1/8 of the image side
    ids = model.tokenizer("a red creature on soft grass, no humans").input_ids
    assert len(ids) == 2 + 9  # BOS, one token per word and the comma, EOS


def test_captions_come_from_the_demo_blip(demo, images):
    from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip

    summary = caption_images(images, load_blip(str(demo.blip), device="cpu"), CaptionOptions())
    assert summary.written == len(SIZES) * 4
    captions = [p.read_text().strip() for p in sorted(images.glob("*.caption"))]
    assert all(c.startswith("a ") and set(c.split()) <= set(CAPTION_WORDS) for c in captions)
    assert len(set(captions)) > 3  # sampling varies them from image to image


def test_tags_come_from_the_demo_tagger(demo, images):
    from lib_sdtrain.dataset.tagging import TagOptions, find_tagger, tag_images

    assert tag_images(images, find_tagger(str(demo.tagger)), TagOptions()).written == 12
    tags = {p.stem: p.read_text().strip().split(", ") for p in images.glob("*.txt")}
    assert all(t[: len(DEMO_ALWAYS_TAGS)] == DEMO_ALWAYS_TAGS for t in tags.values())
    scene_tags = {tag for t in tags.values() for tag in t[len(DEMO_ALWAYS_TAGS) :]}
    assert scene_tags == {"grass", "night", "sunset"}  # they follow the scenes' colours


def test_dataset_sizes_and_no_text_files(demo):
    files = sorted(demo.dataset.iterdir())
    assert [p.suffix for p in files] == [".png"] * 12
    sizes = [Image.open(p).size for p in files]
    assert set(sizes) == set(SIZES) and all(sizes.count(s) == 4 for s in SIZES)


def test_second_call_is_a_no_op(demo):
    stamps = {p: p.stat().st_mtime_ns for p in demo.sd_model.parent.parent.rglob("*")}
    again = make_demo(demo.sd_model.parent.parent, demo.dataset.parent)
    assert again.made == [] and again.sd_model == demo.sd_model
    assert {p: p.stat().st_mtime_ns for p in demo.sd_model.parent.parent.rglob("*")} == stamps


def test_drawing_is_deterministic(tmp_path):
    first = [p.read_bytes() for p in draw_demo_dataset(tmp_path / "a", count=4, seed=1)]
    assert first == [p.read_bytes() for p in draw_demo_dataset(tmp_path / "b", count=4, seed=1)]
    assert first != [p.read_bytes() for p in draw_demo_dataset(tmp_path / "c", count=4, seed=2)]


def test_an_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def broken(folder: Path, count: int, seed: int) -> None:
        (folder / "demo_00.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("lib_sdtrain.demo.dataset.draw_demo_dataset", broken)
    monkeypatch.setattr(demo_make, "_write_sd_model", lambda folder: (folder / "model_index.json").write_text("{}"))
    with pytest.raises(KeyboardInterrupt):
        make_demo(tmp_path / "models", tmp_path / "datasets")
    assert not (tmp_path / "datasets" / "demo").exists()
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == []
    monkeypatch.undo()
    paths = make_demo(tmp_path / "models", tmp_path / "datasets")
    assert paths.made == ["dataset"]  # the models were complete; only the dataset is made again
    (paths.dataset / "demo_00.caption").write_text("old")
    assert make_demo(tmp_path / "models", tmp_path / "datasets", force=True).made == [
        "sd_model", "sdxl_model", "blip", "tagger", "dataset"
    ]  # fmt: skip
    assert not (paths.dataset / "demo_00.caption").exists()


def test_cli_uses_the_standalone_folders(tmp_path, monkeypatch, capsys):
    from lib_sdtrain.host import standalone
    from lib_sdtrain.main import main

    monkeypatch.setattr(standalone, "_config", standalone._config)  # restored after the test
    monkeypatch.setattr(demo_make, "_write_sd_model", lambda folder: (folder / "model_index.json").write_text("{}"))
    assert main(["demo", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    models = standalone.models_dir() / "demo"
    assert str(models / "sd-tiny") in out and str(standalone.dataset_dir() / "demo") in out
    assert "sdtrain caption" in out and "sdtrain train" in out and "random weights" in out
    assert (models / "wd14-tiny" / "model.onnx").is_file() and str(tmp_path) in str(models)
