"""Unusual names and texts, in every stage that lists or reads a dataset: two extensions (cat.jpg.png), hidden
files, images in sub-folders, a link loop, an image over the pixel limit, CRLF/BOM captions and captions of
nothing but commas. Each is used as kohya uses it or named as skipped, and the rest of the dataset goes on."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images
from lib_sdtrain.dataset.images import MAX_IMAGE_PIXELS, scan_images
from lib_sdtrain.dataset.tagging import TagOptions, tag_images
from lib_sdtrain.main import main
from tests.dataset.test_bad_input import blip, tagger  # noqa: F401 (fixtures)

HUGE = 20_000  # a PNG whose header claims 20000 x 20000 pixels: over the limit, refused before it is decoded


def write_huge_png(path: Path) -> None:
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", HUGE, HUGE)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.fixture
def unusual(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    for name in ("cat.jpg.png", "crlf.png", "commas.png", ".hidden.png", "sub/inside.png"):
        Image.new("RGB", (64, 48), (180, 60, 20)).save(folder / name)
    write_huge_png(folder / "huge.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "cat.jpg.caption").write_text("a cat")  # kohya: splitext -> cat.jpg + .caption
    (folder / "crlf.caption").write_bytes("\ufeffa red square\r\nsecond line\r\n".encode())
    (folder / "commas.caption").write_text(" , ,, ")
    return folder


SKIPPED = {
    ".hidden.png": "hidden file",
    "sub": "a sub-folder with 1 image(s), not read",
    "loop.png": "a link that points back to itself (a link loop)",
}


def skipped_names(skipped) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in skipped.items()}


def assert_skipped_named(skipped) -> None:
    names = skipped_names(skipped)
    for name, reason in SKIPPED.items():
        assert reason in names.get(name, ""), (name, names)


def test_the_listing_uses_kohyas_names_and_says_what_it_leaves_out(unusual):
    listing = scan_images(unusual)
    assert [p.name for p in listing.images] == ["cat.jpg.png", "commas.png", "crlf.png", "huge.png"]
    assert_skipped_named(listing.skipped)
    assert [p.name for p in scan_images(unusual, recursive=True).images] == [
        "cat.jpg.png", "commas.png", "crlf.png", "huge.png", "inside.png",
    ]  # fmt: skip


def test_a_link_back_up_is_read_once_with_recursive(tmp_path):
    folder = tmp_path / "data"
    (folder / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a" / "x.png")
    (folder / "a" / "up").symlink_to("..")
    listing = scan_images(folder, recursive=True)
    assert [p.relative_to(folder).as_posix() for p in listing.images] == ["a/x.png"]
    assert "a link loop" in skipped_names(listing.skipped)["up"]


def test_merge_reads_first_lines_counts_commas_as_no_caption(unusual, tmp_path, capsys):
    out = tmp_path / "meta_clean.json"
    assert main(["merge", str(unusual), str(out)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == {
        "cat.jpg": {"caption": "a cat"}, "commas": {}, "crlf": {"caption": "a red square"}, "huge": {},
    }  # fmt: skip
    assert "crlf.caption: only the first line is used, as kohya uses it (1 more line(s) left out)" in printed
    assert "commas.caption is empty (or only whitespace and commas): counted as no caption" in printed
    for name in SKIPPED:
        assert f"skipped {name}: " in printed


def test_caption_and_tag_go_on_past_the_odd_entries(unusual, blip, tagger):  # noqa: F811
    captioned = caption_images(unusual, blip, CaptionOptions(max_length=8, min_length=2, batch_size=2))
    assert captioned.written == 0 and captioned.skipped_existing == 3  # user captions kept, cat.jpg.caption too
    assert f"too large ({HUGE * HUGE} pixels, limit {MAX_IMAGE_PIXELS} pixels)" in captioned.failed[
        str(unusual / "huge.png")]  # fmt: skip
    assert_skipped_named(captioned.skipped)
    tagged = tag_images(unusual, tagger, TagOptions())
    assert tagged.written == 3 and (unusual / "cat.jpg.txt").is_file()
    assert_skipped_named(tagged.skipped)


def test_buckets_and_report_use_the_rest_and_list_every_problem(unusual, tmp_path, tiny_sd_dir, capsys):
    meta = tmp_path / "meta_clean.json"
    assert main(["merge", str(unusual), str(meta)]) == 0
    latents = tmp_path / "meta_lat.json"
    argv = ["buckets", str(unusual), str(meta), str(latents), str(tiny_sd_dir), "--max_resolution", "64,64",
            "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "16"]  # fmt: skip
    assert main(argv) == 0
    written = json.loads(latents.read_text())
    assert sorted(written) == ["cat.jpg", "commas", "crlf"]
    assert np.load(unusual / "cat.jpg.npz")["latents"].ndim == 3  # kohya's name: splitext(image) + .npz
    report = (tmp_path / "meta_lat.report.txt").read_text()  # beside the metadata it describes
    assert f"huge.png: too large ({HUGE * HUGE} pixels, limit {MAX_IMAGE_PIXELS} pixels)" in report
    assert "no caption, or an empty one: 1\n  commas.png" in report  # only commas: no caption
    for name, reason in SKIPPED.items():
        assert f"{name}: {reason}" in report
