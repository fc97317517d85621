"""Bad input met by caption, tag and merge: bad numbers, empty and read-only folders, odd files, clashing names,
blank captions and tiny or extreme images. Each gives a clear message before any model loads, or is skipped with
its reason while the rest is done; nothing already written is lost."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip
from lib_sdtrain.dataset.metadata import MergeOptions, merge_to_file
from lib_sdtrain.dataset.tagging import TagOptions, find_tagger, prepare_image, tag_images
from lib_sdtrain.demo.onnx_writer import write_tiny_tagger
from lib_sdtrain.demo.tiny_blip import write_tiny_blip
from lib_sdtrain.main import main
from lib_sdtrain.utils.progress import CallbackProgress
from tests.dataset.test_tagging import TAGS
from tests.mounts import remount_read_only


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return load_blip(str(write_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")), device="cpu")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return find_tagger(str(write_tiny_tagger(tmp_path_factory.mktemp("tagger") / "tiny-tagger", TAGS)))


@pytest.fixture
def odd_folder(tmp_path):
    """ok.png, dup.jpg + dup.png (same stem), unsupported formats, a broken link and a folder named like an image."""
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "ok.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(folder / "dup.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(folder / "dup.png")
    Image.new("RGB", (16, 16)).save(folder / "anim.gif")
    Image.new("RGB", (16, 16)).save(folder / "scan.tif")
    (folder / "gone.png").symlink_to(folder / "deleted.png")
    (folder / "folder.png").mkdir()
    return folder


SKIPPED = {"anim.gif", "scan.tif", "gone.png", "folder.png", "dup.png"}


def _names(paths) -> set[str]:
    return {str(p).rsplit("/", 1)[-1] for p in paths}


# --- item 12: bad numbers and nothing to do ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["caption", "--batch_size", "0"], "--batch_size: must be at least 1, got 0"),
        (["caption", "--batch_size", "-1"], "--batch_size: must be at least 1, got -1"),
        (["caption", "--top_p", "1.5"], "--top_p: must be between 0 and 1, got 1.5"),
        (["caption", "--num_beams", "two"], "--num_beams: expected a whole number, got 'two'"),
        (["tag", "--batch_size", "0"], "--batch_size: must be at least 1, got 0"),
        (["tag", "--thresh", "-0.1"], "--thresh: must be between 0 and 1, got -0.1"),
        (["tag", "--general_threshold", "nan"], "--general_threshold: must be between 0 and 1, got nan"),
        (["tag", "--max_data_loader_n_workers", "-2"], "--max_data_loader_n_workers: must be at least 0, got -2"),
    ],
)
def test_bad_numbers_are_refused_before_anything_runs(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exited:
        main([argv[0], str(tmp_path), *argv[1:]])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_bad_numbers_name_their_field_in_a_job(tmp_path):
    from lib_sdtrain.jobs.stages import InputError, parse_cli_options

    with pytest.raises(InputError, match="must be at least 1") as info:
        parse_cli_options("caption", {"train_data_dir": str(tmp_path), "batch_size": 0})
    assert info.value.field == "batch_size"


def test_min_length_over_max_length_is_refused(tmp_path, capsys):
    assert main(["caption", str(tmp_path), "--min_length", "20", "--max_length", "10"]) == 1
    assert "--min_length 20 is more than --max_length 10" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["caption", "tag", "merge"])
def test_a_folder_without_images_is_an_error_before_any_model(tmp_path, capsys, command):
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    extra = {"caption": ["--caption_weights", str(tmp_path / "no-blip")], "tag": ["--model_dir", "/no/tagger"]}
    argv = [command, str(tmp_path), *extra.get(command, [str(tmp_path / "meta.json")])]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"No images found in {tmp_path} (1 file(s) skipped, see above): nothing to do" in captured.err
    assert "BLIP" not in captured.err and "tagger" not in captured.err  # no model was looked for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]  # no empty metadata file


# --- items 4 and 6: clashing names and skipped files ----------------------------------------------------------------


def test_caption_skips_and_names_odd_files_and_name_clashes(odd_folder, blip, capsys):
    (odd_folder / "dup.caption").write_text("written by hand for dup.png\n")
    summary = caption_images(odd_folder, blip, CaptionOptions(max_length=8, min_length=2, batch_size=2))
    assert summary.written == 1 and summary.skipped_existing == 1  # ok.png captioned; dup.caption kept
    assert (odd_folder / "dup.caption").read_text() == "written by hand for dup.png\n"
    assert _names(summary.skipped) == SKIPPED
    assert "rename it, e.g. to dup_png.png" in summary.skipped[str(odd_folder / "dup.png")]

    assert main(["caption", str(odd_folder), "--caption_weights", str(blip_folder(blip)), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "captioned 2 images; kept 0 existing files; 0 unreadable; 5 skipped" in out
    assert f"skipped {odd_folder / 'anim.gif'}: .gif is not a training image format" in out
    assert f"{odd_folder / 'gone.png'}: broken link" in out


def blip_folder(blip) -> str:
    return blip.model.name_or_path


def test_tag_skips_and_names_odd_files_and_name_clashes(odd_folder, tagger):
    progress = CallbackProgress()
    summary = tag_images(odd_folder, tagger, TagOptions(), progress)
    assert summary.written == 2 and _names(summary.skipped) == SKIPPED
    assert (odd_folder / "dup.txt").read_text().strip() == "blue_sky, ^_^"  # dup.jpg's (blue) tags, written once
    assert sum("same name as dup.jpg" in m for m in progress.messages) == 1


def test_merge_skips_name_clashes_and_counts_skipped(odd_folder, tmp_path, capsys):
    (odd_folder / "dup.caption").write_text("a blue picture")
    out = tmp_path / "meta_clean.json"
    result = merge_to_file(odd_folder, out, MergeOptions())
    assert result.images == 2 and _names(result.skipped) == SKIPPED
    assert json.loads(out.read_text()) == {"dup": {"caption": "a blue picture"}, "ok": {}}
    assert "skipped: 5" in result.summary() and "skipped dup.png: same name as dup.jpg" in result.summary()

    assert main(["merge", str(odd_folder), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images: 2, captions merged: 1, tags merged: 0, skipped: 5" in printed


# --- item 8: blank captions -----------------------------------------------------------------------------------------


def test_a_blank_caption_counts_as_missing_with_a_warning(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("blank", "tabs", "fine"):
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
    (folder / "blank.caption").write_text("   \n\n")
    (folder / "tabs.txt").write_text("\t \r\n")
    (folder / "fine.caption").write_text("a cat")
    out = tmp_path / "meta.json"
    out.write_text(json.dumps({"blank": {"caption": "kept from before"}}))
    result = merge_to_file(folder, out, MergeOptions())
    assert result.captions == 1 and [p.name for p in result.missing_captions] == ["blank.png", "tabs.png"]
    assert [p.name for p in result.missing_tags] == ["blank.png", "fine.png", "tabs.png"]
    assert any("blank.caption is empty (or only whitespace and commas): counted as no caption" in w
               for w in result.warnings)  # fmt: skip
    assert any("tabs.txt is empty" in w for w in result.warnings)
    assert json.loads(out.read_text()) == {"blank": {"caption": "kept from before"}, "fine": {"caption": "a cat"},
                                           "tabs": {}}  # fmt: skip


# --- items 10 and 11: tiny images and panoramas ---------------------------------------------------------------------


def test_tiny_images_are_skipped_and_the_rest_of_their_batch_captioned(tmp_path, blip):
    Image.new("RGB", (1, 1)).save(tmp_path / "a_dot.png")
    Image.new("RGB", (300, 1)).save(tmp_path / "b_line.png")
    Image.new("RGB", (48, 32), (200, 10, 10)).save(tmp_path / "c_fine.png")
    summary = caption_images(tmp_path, blip, CaptionOptions(batch_size=3, max_length=8, min_length=2))
    assert summary.written == 1 and (tmp_path / "c_fine.caption").is_file()
    assert summary.failed == {
        str(tmp_path / "a_dot.png"): "too small to caption (1x1 pixels; at least 8 on each side)",
        str(tmp_path / "b_line.png"): "too small to caption (300x1 pixels; at least 8 on each side)",
    }


def test_a_panorama_is_resized_before_padding(tmp_path, tagger):
    panorama = Image.new("RGB", (20000, 32), (255, 0, 0))
    tracemalloc.start()
    try:
        array = prepare_image(panorama, 448)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert array.shape == (448, 448, 3)
    assert peak < 10 * 2**20  # padding first built a 20000x20000 canvas: 1.2 GB of pixels, 4.8 GB as float32
    red_rows = np.flatnonzero((array[:, :, 2] > 200) & (array[:, :, 0] < 50)).size
    assert red_rows == 448  # one red row across the middle (32 * 448 / 20000 rounds to 1), white elsewhere
    assert tuple(array[0, 0]) == (255, 255, 255)

    panorama.save(tmp_path / "pano.png")
    assert tag_images(tmp_path, tagger, TagOptions()).written == 1


# --- item 2: read-only dataset folder -------------------------------------------------------------------------------


def test_a_read_only_dataset_fails_up_front_with_the_folder_named(tmpfs, tmp_path, capsys):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmpfs / "a.png")
    (tmpfs / "a.caption").write_text("a red square")
    before = {p.name: p.read_bytes() for p in tmpfs.iterdir()}
    remount_read_only(tmpfs)
    missing_model = str(tmp_path / "no-such-model")  # were it loaded first, the error would be about the model
    for argv in (
        ["caption", str(tmpfs), "--caption_weights", missing_model],
        ["tag", str(tmpfs), "--model_dir", missing_model],
        ["merge", str(tmpfs), str(tmpfs / "meta_clean.json")],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert f"Cannot write in {tmpfs} (Read-only file system)" in err, argv
    assert {p.name: p.read_bytes() for p in tmpfs.iterdir()} == before

    # merge only reads the folder: with its output elsewhere it works
    assert main(["merge", str(tmpfs), str(tmp_path / "meta_clean.json")]) == 0
    assert json.loads((tmp_path / "meta_clean.json").read_text()) == {"a": {"caption": "a red square"}}
