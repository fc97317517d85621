"""Files that parse but hold the wrong shape: metadata JSON with wrong value types, a tagger's tag list that is not
UTF-8, lacks its columns or is cut short, an extension option holding a path. Each is named, with what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lib_sdtrain.dataset.metadata import load_metadata
from lib_sdtrain.dataset.tagging import TagOptions, find_tagger, tag_images
from lib_sdtrain.demo.onnx_writer import write_tiny_tagger
from lib_sdtrain.errors import DatasetError, ModelLoadError
from lib_sdtrain.jobs import InputError
from lib_sdtrain.jobs.stages import STAGES
from lib_sdtrain.main import main
from tests.dataset.test_tagging import TAGS


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([{"caption": "a"}], "its top level is a list, not an object"),
        ({"cat": ["a cat"]}, "entry 'cat': a list, not an object"),
        ({"cat": {"caption": 3}}, "entry 'cat': \"caption\" is a int, not text"),
        ({"cat": {"tags": ["a", "b"]}}, '"tags" is a list, not text'),
        ({"cat": {"train_resolution": "512,512"}}, "\"train_resolution\" is '512,512', not \\[width, height\\]"),
        ({"cat": {"train_resolution": [512]}}, '"train_resolution" is \\[512\\], not'),
        ({"cat": {"train_resolution": [0, 512]}}, '"train_resolution" is \\[0, 512\\], not'),
        ({"cat": {"train_resolution": [512.5, 512]}}, '"train_resolution" is \\[512.5, 512\\], not'),
    ],
)
def test_metadata_of_the_wrong_shape_is_named_with_the_entry(tmp_path, content, problem):
    path = tmp_path / "meta_lat.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=rf"Metadata file {path}.*{problem}"):
        load_metadata(path)


def test_training_on_such_metadata_is_refused_before_the_model_loads(tmp_path, tiny_sd_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "cat.png")
    meta = folder / "meta_lat.json"
    meta.write_text(json.dumps({"cat": {"caption": "a cat", "train_resolution": [64, -64]}}))
    options = {"pretrained_model_name_or_path": str(tiny_sd_dir), "train_data_dir": str(folder), "in_json": str(meta),
               "output_dir": str(tmp_path / "out"), "network_module": "networks.lora"}  # fmt: skip
    with pytest.raises(InputError, match=r"meta_lat\.json, entry 'cat': \"train_resolution\" is \[64, -64\]"):
        STAGES["train"].check(options)


@pytest.fixture
def tagger_dir(tmp_path: Path) -> Path:
    return write_tiny_tagger(tmp_path / "tagger", TAGS)


@pytest.mark.parametrize(
    ("csv_bytes", "problem"),
    [
        ("tag_id,name,category,count\n1,caf\u00e9,0,5\n".encode("cp1252"), "not a WD14 tag list .*UnicodeDecodeError"),
        (b"id,label\n1,cat\n", "is not a WD14 tag list .*found: id, label"),
        (b"", "found: no rows"),
        (b"tag_id,name,category,count\n1,cat,general,5\n", "line 2: category 'general' is not a number"),
    ],
)
def test_a_tag_list_of_the_wrong_shape_is_named(tagger_dir, csv_bytes, problem):
    (tagger_dir / "selected_tags.csv").write_bytes(csv_bytes)
    with pytest.raises(ModelLoadError, match=rf"selected_tags\.csv(, line \d+)?.*{problem}"):
        find_tagger(str(tagger_dir))


def test_a_tag_list_cut_short_is_refused_naming_both_counts(tagger_dir, tmp_path):
    csv = tagger_dir / "selected_tags.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-2]) + "\n")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    with pytest.raises(ModelLoadError, match=rf"lists {len(lines) - 3} tags, but model\.onnx gives {len(lines) - 1}"):
        tag_images(images, find_tagger(str(tagger_dir)), TagOptions())
    assert not (images / "a.txt").exists()


@pytest.mark.parametrize("extension", ["../x.txt", "a/b.txt", "/etc/x"])
def test_an_extension_holding_a_path_is_refused(tmp_path, capsys, extension):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "cat.png")
    with pytest.raises(SystemExit) as usage_error:  # argparse's usage error, before anything is read
        main(["merge", str(folder), str(tmp_path / "meta.json"), f"--caption_extension={extension}"])
    assert usage_error.value.code == 2 and "is not a file extension" in capsys.readouterr().err
    assert not (tmp_path / "meta.json").exists()
