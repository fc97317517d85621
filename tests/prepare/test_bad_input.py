"""The bad-input corpus through merge, latent caching and the report: every odd file gets a clear line, nothing
crashes, nothing already written is lost."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.dataset.metadata import MergeOptions, merge_to_file
from lib_sdtrain.errors import DatasetError
from lib_sdtrain.main import main
from lib_sdtrain.prepare.buckets import BucketSettings
from lib_sdtrain.prepare.latents import LatentCacheOptions, cache_latents
from lib_sdtrain.prepare.report import TokenCounter, build_report, draw_bucket_histogram, scan_dataset
from lib_sdtrain.utils.progress import CallbackProgress

SETTINGS = BucketSettings((128, 128), 64, 256, 64)  # buckets 64x192, 64x256, 128x128, 192x64, 256x64
MAX_PIXELS = 250 * 250  # "huge" means over this here; a real bomb is refused the same way at 179 Mpx
BROKEN = {"truncated", "empty", "notimage", "huge"}


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(folder / "good.png")
    shutil.copy(folder / "good.png", folder / "good_copy.png")  # an exact duplicate
    (folder / "truncated.png").write_bytes((folder / "good.png").read_bytes()[:200])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notimage.png").write_text("<html>not an image</html>")
    Image.new("CMYK", (128, 128), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    palette = Image.new("P", (128, 128), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(folder / "palette.png")
    Image.new("LA", (128, 128), (0, 0)).save(folder / "la.png")  # fully transparent -> white
    Image.new("RGBA", (128, 128), (0, 0, 255, 255)).save(folder / "rgba.png")
    Image.fromarray(np.full((128, 128), 40000, dtype=np.uint16)).save(folder / "sixteen.png")
    rotated = Image.new("RGB", (240, 100), (0, 200, 0))  # stored landscape, shown portrait (EXIF 6)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (300, 300), (9, 9, 9)).save(folder / "huge.png")  # 90000 px > MAX_PIXELS
    Image.new("RGB", (40, 40), (50, 60, 70)).save(folder / "small.png")  # upscaled to 128x128

    for name in ("good", "cmyk", "palette", "la", "rgba", "sixteen", "rotated", "truncated", "small"):
        (folder / f"{name}.caption").write_text(f"a picture of {name}", encoding="utf-8")
    (folder / "good.txt").write_text("1girl, " + ", ".join(f"tag_{i}" for i in range(80)), encoding="utf-8")
    (folder / "cmyk.caption").write_bytes(b"na\xefve caf\xe9")  # cp1252
    # good_copy, empty, notimage, huge: no caption files
    return folder


def _run(corpus, tmp_path):
    meta_clean = tmp_path / "meta_clean.json"
    merge = merge_to_file(corpus, meta_clean, MergeOptions())
    meta_lat = tmp_path / "meta_lat.json"
    options = LatentCacheOptions(buckets=SETTINGS, max_pixels=MAX_PIXELS, batch_size=4)
    return merge, meta_clean, meta_lat, options


def test_corpus_through_merge_latents_and_report(corpus, tmp_path, tiny_vae_loaded):
    merge, meta_clean, meta_lat, options = _run(corpus, tmp_path)
    assert merge.images == 13
    assert {p.stem for p in merge.missing_captions} == {"good_copy", "empty", "notimage", "huge"}
    assert any("cmyk.caption" in w and "cp1252" in w for w in merge.warnings)
    assert json.loads(meta_clean.read_text(encoding="utf-8"))["cmyk"]["caption"] == "naïve café"

    result = cache_latents(corpus, meta_clean, meta_lat, tiny_vae_loaded, options)
    errors = {r.path.stem: r.error for r in result.records if r.error}
    assert set(errors) == BROKEN
    assert errors["empty"] == "empty file (0 bytes)"
    assert errors["notimage"] == "not an image Pillow can read"
    assert errors["truncated"].startswith("unreadable image")
    assert errors["huge"].startswith("too large (300x300 pixels")
    assert result.encoded == 9

    meta = json.loads(meta_lat.read_text(encoding="utf-8"))
    assert not BROKEN & set(meta)  # left out, so a trainer never meets them
    assert meta["rotated"]["train_resolution"] == [64, 192]  # upright: 100x240 (ar 0.42) -> 64x192
    assert meta["cmyk"]["train_resolution"] == [128, 128]
    for name in ("cmyk", "palette", "la", "rgba", "sixteen", "rotated", "small", "good_copy"):
        with np.load(corpus / f"{name}.npz") as npz:
            assert np.isfinite(npz["latents"]).all()
    assert not list(corpus.glob("huge.npz")) and not list(corpus.glob("*.tmp"))

    report = build_report(corpus, result.records, SETTINGS, metadata=meta)
    assert {r.path.stem: r.error for r in report.unreadable} == errors
    assert [r.path.name for r in report.upscaled] == ["small.png"]  # 40x40 -> 128x128 (rotated: 100x240 shrinks)
    assert [[r.path.name for r in group] for group in report.duplicates] == [["good.png", "good_copy.png"]]
    # "a picture of good, 1girl, tag_0, ..., tag_79": 4 + 2 + 2 * 80 words and commas > 75 (an estimate)
    assert [key for key, _count in report.long_texts] == ["good"]
    assert "estimated tokens" in report.token_label
    assert set(report.without_caption) == {"good_copy"}
    text_path, png_path = report.write(tmp_path, "meta_lat")
    summary = text_path.read_text(encoding="utf-8")
    assert "images: 13 found, 9 usable, 4 unreadable" in summary
    assert "empty.jpg: empty file (0 bytes)" in summary
    assert "small.png: 40x40 -> bucket 128x128" in summary
    assert "exact duplicates (identical file bytes): 1" in summary
    with Image.open(png_path) as chart:
        assert chart.format == "PNG" and chart.height > 100


def test_existing_meta_lat_survives_a_failing_run(corpus, tmp_path, tiny_vae_loaded):
    _merge, meta_clean, meta_lat, options = _run(corpus, tmp_path)
    meta_lat.write_text('{"from an earlier run": {}}')
    (corpus / "zzz.png").write_bytes(b"")  # sorted last: broken files never stop the run
    cache_latents(corpus, meta_clean, meta_lat, tiny_vae_loaded, options)
    assert "good" in json.loads(meta_lat.read_text())

    meta_lat.write_text('{"from an earlier run": {}}')
    meta_clean.write_text("{broken")
    with pytest.raises(DatasetError, match="not valid JSON"):
        cache_latents(corpus, meta_clean, meta_lat, tiny_vae_loaded, options)
    assert meta_lat.read_text() == '{"from an earlier run": {}}'


def test_report_cli_reads_sidecars_and_counts_tokens(corpus, tmp_path, tiny_tokenizer_dir, capsys):
    args = ["report", str(corpus), "--max_resolution", "128,128", "--min_bucket_reso", "64"]
    args += ["--max_bucket_reso", "256", "--max_image_pixels", str(MAX_PIXELS), "--tokenizer", str(tiny_tokenizer_dir)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 unreadable" in printed and "counted in CLIP tokens" in printed
    assert "cmyk.caption: not UTF-8, read as cp1252" in printed
    assert (corpus / "dataset.report.txt").is_file() and (corpus / ".sdtrain" / "dataset.buckets.png").is_file()

    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "Image folder not found" in capsys.readouterr().err


def test_token_counts(tiny_tokenizer_dir):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    text = "a red cat, sitting"
    assert TokenCounter(tokenizer).count(text) == len(tokenizer(text).input_ids) - 2  # without BOS/EOS
    assert TokenCounter().count(text) == 5  # a, red, cat, ",", sitting


def test_scan_and_histogram_without_images(tmp_path):
    assert scan_dataset(tmp_path, SETTINGS) == []
    chart = draw_bucket_histogram({}, "nothing")
    assert chart.size[0] > 300
    with pytest.raises(DatasetError, match="not found"):
        scan_dataset(tmp_path / "missing", SETTINGS)


def test_same_stem_twice_keeps_the_first(tmp_path, tiny_vae_loaded):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (128, 128), (200, 0, 0)).save(folder / "cat.jpg")
    Image.new("RGB", (64, 192), (0, 0, 200)).save(folder / "cat.png")  # same key "cat", same cat.npz
    (tmp_path / "meta.json").write_text('{"cat": {"caption": "a cat"}}')
    options = LatentCacheOptions(buckets=SETTINGS)
    result = cache_latents(folder, tmp_path / "meta.json", tmp_path / "lat.json", tiny_vae_loaded, options)
    assert [(r.path.name, r.error is None) for r in result.records] == [("cat.jpg", True), ("cat.png", False)]
    assert "same name as cat.jpg" in result.records[1].error and "rename it" in result.records[1].error
    entry = json.loads((tmp_path / "lat.json").read_text())["cat"]
    assert entry == {"caption": "a cat", "train_resolution": [128, 128]}
    assert np.load(folder / "cat.npz")["latents"].shape == (4, 16, 16)


# --- issue 10: bad numbers, empty and read-only folders, skipped files, warnings -----------------------------------


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--batch_size", "0", "--batch_size: must be at least 1, got 0"),
        ("--max_data_loader_n_workers", "-1", "--max_data_loader_n_workers: must be at least 0, got -1"),
        ("--bucket_reso_steps", "0", "--bucket_reso_steps: must be at least 1, got 0"),
        ("--max_image_pixels", "-5", "--max_image_pixels: must be at least 1, got -5"),
    ],
)
def test_buckets_refuses_bad_numbers(tmp_path, capsys, option, value, expected):
    with pytest.raises(SystemExit) as exited:
        main(["buckets", str(tmp_path), "in.json", "out.json", "model", option, value])
    assert exited.value.code == 2 and expected in capsys.readouterr().err


def test_buckets_on_a_folder_without_images_fails_before_the_vae(tmp_path, capsys):
    (tmp_path / "meta_clean.json").write_text("{}")
    argv = ["buckets", str(tmp_path), str(tmp_path / "meta_clean.json"), str(tmp_path / "meta_lat.json")]
    assert main([*argv, str(tmp_path / "no-such-model")]) == 1
    assert f"No images found in {tmp_path}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_clean.json"]  # no empty meta_lat.json


def test_skipped_files_and_name_clashes_are_counted_and_named(corpus, tmp_path, tiny_vae_loaded):
    (corpus / "anim.gif").write_bytes(b"GIF89a")
    (corpus / "gone.png").symlink_to(corpus / "deleted.png")
    Image.new("RGB", (64, 64)).save(corpus / "good.jpg")  # good.png is there: same stem
    _merge, meta_clean, meta_lat, options = _run(corpus, tmp_path)
    progress = CallbackProgress()
    result = cache_latents(corpus, meta_clean, meta_lat, tiny_vae_loaded, options, progress)
    assert any(m.startswith(f"skipped {corpus / 'anim.gif'}: .gif is not") for m in progress.messages)
    clash = {r.path.name: r.error for r in result.records}["good.png"]  # good.jpg sorts first and is used
    assert clash.startswith("same name as good.jpg") and "rename it, e.g. to good_png.png" in clash

    report = build_report(corpus, result.records, SETTINGS, metadata=result.metadata)
    assert {p.name for p in report.skipped} == {"anim.gif", "gone.png"}
    assert "other file(s) skipped" in report.summary() and "2 other file(s) skipped" in report.summary()
    assert report.problem_images()[str(corpus / "gone.png")].startswith("skipped: broken link")


def test_report_warns_about_blank_captions_long_texts_and_extreme_crops(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (128, 128)).save(folder / "fine.png")
    Image.new("RGB", (128, 128)).save(folder / "blank.png")
    Image.new("RGB", (128, 128)).save(folder / "wordy.png")
    Image.new("RGB", (1280, 64)).save(folder / "pano.png")  # aspect 20 in a 256x64 bucket: 80% cut off
    for name, text in (("fine", "a cat"), ("blank", "  \n"), ("wordy", "word " * 80), ("pano", "a street")):
        (folder / f"{name}.caption").write_text(text)
    (folder / "blank.txt").write_text("1girl")  # tags but no caption: a warning of its own
    records = scan_dataset(folder, SETTINGS)
    report = build_report(folder, records, SETTINGS)
    assert report.without_caption == ["blank"] and [k for k, _ in report.long_texts] == ["wordy"]
    assert [r.path.name for r in report.extreme_crops] == ["pano.png"]
    assert report.warning_count() == 3
    summary = report.summary()
    assert "no caption, or an empty one: 1\n  blank.png" in summary
    assert "pano.png: 1280x64 -> bucket 256x64, 80% cut off" in summary
    assert "warnings: 3 (" in summary
    problems = report.problem_images()
    assert problems[str(folder / "blank.png")] == "no caption, or an empty one"
    assert problems[str(folder / "pano.png")].endswith("80% cut off")

    args = ["report", str(folder), "--max_resolution", "128,128", "--min_bucket_reso", "64", "--max_bucket_reso", "256"]
    assert main(args) == 0
    assert "warnings: 3 (" in capsys.readouterr().out


def test_read_only_folders_fail_buckets_and_report_up_front(corpus, tmpfs, tmp_path, capsys):
    from tests.mounts import remount_read_only

    for name in ("good.png", "small.png", "good.caption"):
        shutil.copy(corpus / name, tmpfs / name)
    (tmp_path / "meta_clean.json").write_text('{"good": {"caption": "a picture of good"}}')
    before = sorted(p.name for p in tmpfs.iterdir())
    remount_read_only(tmpfs)
    missing_model = str(tmp_path / "no-such-model")  # loaded first, the error would be about the model
    for argv in (
        ["buckets", str(tmpfs), str(tmp_path / "meta_clean.json"), str(tmp_path / "meta_lat.json"), missing_model],
        ["report", str(tmpfs)],
    ):
        assert main(argv) == 1, argv
        assert f"Cannot write in {tmpfs} (Read-only file system)" in capsys.readouterr().err
    assert sorted(p.name for p in tmpfs.iterdir()) == before and not (tmp_path / "meta_lat.json").exists()

    # the report goes beside the metadata: with that elsewhere it reads the read-only folder fine
    assert main(["report", str(tmpfs), str(tmp_path / "meta_clean.json"), "--max_resolution", "128,128"]) == 0
    assert (tmp_path / "meta_clean.report.txt").is_file()


def test_mixed_key_styles_are_refused_before_the_vae(tmp_path, capsys):
    """merge --full_path then buckets without it (or the reverse) would train one image twice, once uncaptioned."""
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (128, 128)).save(folder / "cat.png")
    (folder / "cat.caption").write_text("a cat")
    meta, missing_model = tmp_path / "meta_clean.json", str(tmp_path / "no-such-model")
    assert main(["merge", str(folder), str(meta), "--full_path"]) == 0
    buckets = ["buckets", str(folder), str(meta), str(tmp_path / "meta_lat.json"), missing_model]
    assert main(buckets) == 1
    assert f"{meta} keys images by path (e.g. '{folder / 'cat.png'}')" in capsys.readouterr().err
    assert main(["merge", str(folder), str(meta)]) == 1  # merging into it without --full_path
    assert "written with --full_path" in capsys.readouterr().err
    assert json.loads(meta.read_text()) == {str(folder / "cat.png"): {"caption": "a cat"}}  # unchanged

    meta.write_text(json.dumps({"cat": {"caption": "a cat"}, str(folder / "cat.png"): {}}))
    for argv in (buckets, [*buckets, "--full_path"], ["report", str(folder), str(meta)]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert f"{meta} mixes image keys by path (1, e.g." in err and "by file name (1, e.g. 'cat'" in err
    assert main(["merge", str(folder), str(tmp_path / "by_name.json")]) == 0
    assert main([*buckets[:2], str(tmp_path / "by_name.json"), *buckets[3:], "--full_path"]) == 1
    assert "keys images by file name (e.g. 'cat'): it was written without --full_path" in capsys.readouterr().err
    assert not (tmp_path / "meta_lat.json").exists()


def test_the_bucket_chart_stays_out_of_image_listings(tmp_path, tiny_vae_loaded):
    """The chart goes into the metadata folder's .sdtrain/ (kohya lists *.png of the image folder only); a chart an
    older version left beside the metadata is ignored too, also with --recursive."""
    from lib_sdtrain.dataset.images import scan_images

    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (128, 128)).save(folder / "cat.png")
    Image.new("RGB", (64, 64)).save(folder / "meta_lat.buckets.png")  # an old version's chart
    (folder / "meta_clean.json").write_text('{"cat": {"caption": "a cat"}}')
    options = LatentCacheOptions(buckets=SETTINGS)
    cache_latents(folder, folder / "meta_clean.json", folder / "meta_lat.json", tiny_vae_loaded, options)
    assert main(["report", str(folder), str(folder / "meta_lat.json"), "--max_resolution", "128,128"]) == 0
    assert (folder / ".sdtrain" / "meta_lat.buckets.png").is_file()
    assert sorted(p.name for p in folder.glob("*.png")) == ["cat.png", "meta_lat.buckets.png"]  # nothing new
    for recursive in (False, True):
        assert [p.name for p in scan_images(folder, recursive).images] == ["cat.png"]
