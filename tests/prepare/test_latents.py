"""The latent cache: each .npz holds the VAE encoding of the resized + centre-cropped image, computed here
independently (Pillow + the VAE's own `latent_dist.sample`), in kohya's key layout for v0.6 and v0.7-v0.9."""

from __future__ import annotations

import copy
import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lib_sdtrain.errors import Cancelled, ConfigError, DatasetError
from lib_sdtrain.main import main
from lib_sdtrain.prepare.buckets import BucketSettings
from lib_sdtrain.prepare.latents import LatentCacheOptions, cache_latents
from lib_sdtrain.utils.progress import CallbackProgress

# max area 128*128, sides 64..256, step 64 -> buckets 64x192, 64x256, 128x128, 192x64, 256x64
SETTINGS = BucketSettings((128, 128), 64, 256, 64)
SEED = 7

# name: (size, bucket, resized size, Pillow filter or None, crop box in the resized image)
IMAGES = {
    "sq1": ((128, 128), (128, 128), (128, 128), None, (0, 0, 128, 128)),  # exact bucket
    "sq2": ((160, 160), (128, 128), (128, 128), Image.Resampling.BOX, (0, 0, 128, 128)),  # scale 0.8, shrink
    # ar 2.4 -> 192x64 (ar 3, the closest); scale 192/240 = 0.8 -> 192x80 (shrink); crop rows 8..72
    "wide": ((240, 100), (192, 64), (192, 80), Image.Resampling.BOX, (0, 8, 192, 72)),
    # ar 0.4 -> 64x192 (ar 0.333); scale 192/150 = 1.28 -> 77x192 (enlarge: LANCZOS); crop columns 6..70
    "tall": ((60, 150), (64, 192), (77, 192), Image.Resampling.LANCZOS, (6, 0, 70, 192)),
}
IN_METADATA = {
    "sq1": {"caption": "one"},
    "sq2": {"caption": "two", "tags": "t"},
    "wide": {"caption": "w"},
    "other": {"caption": "an image of another folder"},
}


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, (size, *_rest) in IMAGES.items():
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    in_json = tmp_path / "meta_clean.json"
    in_json.write_text(json.dumps(IN_METADATA))
    return folder, in_json, tmp_path / "meta_lat.json"


def _seed(key: str) -> int:
    # the documented rule: the run's seed in the high 32 bits, crc32 of the metadata key in the low ones
    return ((SEED & 0xFFFFFFFF) << 32) | zlib.crc32(key.encode("utf-8"))


@torch.no_grad()
def _expected_latents(vae, folder, name):
    _size, _bucket, resized, resample, box = IMAGES[name]
    image = Image.open(folder / f"{name}.png").convert("RGB")
    if resample is not None:
        image = image.resize(resized, resample)
    image = image.crop(box)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    generator = torch.Generator().manual_seed(_seed(name))
    latents = vae.encode(x).latent_dist.sample(generator=generator)[0]
    flipped = vae.encode(torch.flip(x, dims=[3])).latent_dist.sample(generator=generator)[0]
    mode = vae.encode(x).latent_dist.mode()[0]
    return latents.numpy(), flipped.numpy(), mode.numpy()


def _options(**kw):
    return LatentCacheOptions(buckets=SETTINGS, seed=SEED, **kw)


def test_cached_latents_equal_vae_encoding(dataset, tiny_vae_loaded):
    folder, in_json, out_json = dataset
    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(batch_size=2, flip_aug=True))
    assert result.encoded == 4 and result.added_keys == ["tall"]

    for name, (size, bucket, _resized, _filter, _box) in IMAGES.items():
        latents, flipped, mode = _expected_latents(tiny_vae_loaded, folder, name)
        with np.load(folder / f"{name}.npz") as npz:
            assert npz["latents"].dtype == np.float32
            assert npz["latents"].shape == (4, bucket[1] // 8, bucket[0] // 8)
            np.testing.assert_allclose(npz["latents"], latents, atol=1e-4)
            np.testing.assert_allclose(npz["latents_flipped"], flipped, atol=1e-4)
            assert set(npz.files) == {"latents", "original_size", "crop_ltrb", "latents_flipped"}  # kohya v0.7+
            assert npz["original_size"].tolist() == list(size)
            assert not np.allclose(npz["latents"], mode, atol=1e-3)  # a posterior sample, as kohya caches
        assert not (folder / f"{name}_flip.npz").exists()  # kohya v0.6's file: only with legacy_arr0

    with np.load(folder / "wide.npz") as npz:
        # bucket 192x64 (ar 3) is wider than 240x100 (ar 2.4): height fits, width 64 * 2.4 = 153.6,
        # left = (192 - 153.6) // 2 = 19, right = 19 + 153.6
        np.testing.assert_allclose(npz["crop_ltrb"], [19, 0, 172.6, 64])

    meta = json.loads(out_json.read_text(encoding="utf-8"))
    assert meta["sq1"] == {"caption": "one", "train_resolution": [128, 128]}
    assert meta["sq2"] == {"caption": "two", "tags": "t", "train_resolution": [128, 128]}
    assert meta["wide"]["train_resolution"] == [192, 64]
    assert meta["tall"] == {"train_resolution": [64, 192]}  # kohya's rule for an image without an entry
    assert meta["other"] == IN_METADATA["other"]  # entries of other folders pass through
    assert not [p for p in out_json.parent.rglob("*.tmp")]


def test_skip_existing_batches_and_workers(dataset, tiny_vae_loaded):
    folder, in_json, out_json = dataset
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options())
    first = {name: np.load(folder / f"{name}.npz")["latents"] for name in IMAGES}
    stamps = {name: (folder / f"{name}.npz").stat().st_mtime_ns for name in IMAGES}

    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(skip_existing=True))
    assert (result.encoded, result.skipped_existing) == (0, 4)
    assert stamps == {name: (folder / f"{name}.npz").stat().st_mtime_ns for name in IMAGES}

    (folder / "wide.npz").write_bytes(b"damaged")
    np.savez(folder / "sq1.npz", latents=np.zeros((4, 8, 8), np.float32))  # a latent of the wrong bucket
    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(skip_existing=True, workers=2))
    assert (result.encoded, result.skipped_existing) == (2, 2)

    # Another batch size and loader threads give the same latents (each image has its own noise generator).
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(batch_size=3, workers=2))
    for name in IMAGES:
        np.testing.assert_allclose(np.load(folder / f"{name}.npz")["latents"], first[name], atol=1e-5)

    # --flip_aug needs flipped latents: nothing is skipped; without it, stale _flip.npz files go (as kohya v0.6)
    options = _options(skip_existing=True, flip_aug=True, legacy_arr0=True)
    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, options)
    assert result.encoded == 4 and (folder / "sq1_flip.npz").is_file()
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options())
    assert not (folder / "sq1_flip.npz").exists()


def test_nan_latents_name_the_image_and_keep_metadata(dataset, tiny_vae_loaded):
    folder, in_json, out_json = dataset
    out_json.write_text('{"earlier": {"train_resolution": [512, 512]}}')
    broken = copy.deepcopy(tiny_vae_loaded)
    with torch.no_grad():
        broken.encoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(DatasetError, match=r"NaN.*sq1\.png"):
        cache_latents(folder, in_json, out_json, broken, _options())
    assert out_json.read_text() == '{"earlier": {"train_resolution": [512, 512]}}'
    assert not list(folder.glob("*.npz")) and not list(folder.glob("*.tmp"))


def test_cancel_keeps_finished_latents(dataset, tiny_vae_loaded):
    folder, in_json, out_json = dataset
    out_json.write_text("{}")

    def on_event(event, payload):
        if event == "advance" and payload["done"] == 2:
            progress.cancel()

    progress = CallbackProgress(on_event)
    with pytest.raises(Cancelled, match="skip_existing"):
        cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(), progress)
    assert out_json.read_text() == "{}"
    assert sorted(p.name for p in folder.glob("*.npz")) == ["sq1.npz", "sq2.npz"]  # batch size 1: written at once


def test_buckets_cli(dataset, tiny_sd_dir, capsys):
    folder, in_json, _out_json = dataset
    out_json = folder / "meta_lat.json"  # the tutorial keeps the metadata in the image folder
    args = ["buckets", str(folder), str(in_json), str(out_json), str(tiny_sd_dir), "--max_resolution", "128,128"]
    args += ["--min_bucket_reso", "64", "--max_bucket_reso", "256", "--batch_size", "2", "--flip_aug"]
    args += ["--mixed_precision", "bf16", "--max_data_loader_n_workers", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "latents: 4 written, 0 already cached" in printed
    assert "images: 4 found, 4 usable, 0 unreadable" in printed
    assert "counted in CLIP tokens" in printed  # the model folder's tokenizer was used
    assert (folder / "meta_lat.report.txt").is_file()
    assert Image.open(folder / ".sdtrain" / "meta_lat.buckets.png").size[0] > 300
    assert json.loads(out_json.read_text())["tall"]["train_resolution"] == [64, 192]
    with np.load(folder / "tall.npz") as npz:
        assert npz["latents"].dtype == np.float32 and npz["latents_flipped"].shape == (4, 24, 8)
        assert "arr_0" not in npz.files

    # Run again: the histogram PNG in the folder is not taken for a training image; the cache is reused.
    assert main([*args, "--skip_existing"]) == 0
    printed = capsys.readouterr().out
    assert "images: 4 found" in printed and "latents: 0 written, 4 already cached" in printed
    assert "meta_lat.buckets" not in json.loads(out_json.read_text())

    # --npz_legacy_arr0 asks for kohya v0.6.x's copy: the existing files lack it, so they are written again
    assert main([*args, "--skip_existing", "--npz_legacy_arr0"]) == 0
    assert "latents: 4 written, 0 already cached" in capsys.readouterr().out
    with np.load(folder / "tall.npz") as npz:
        assert np.array_equal(npz["arr_0"], npz["latents"]) and (folder / "tall_flip.npz").is_file()

    assert main([*args[:1], str(folder / "missing"), *args[2:]]) == 1
    assert "Image folder not found" in capsys.readouterr().err
    missing_json = [*args[:2], str(folder / "none.json"), *args[3:]]
    assert main(missing_json) == 1
    assert "Run `merge` first" in capsys.readouterr().err


def test_full_path_keys_and_subfolders(dataset, tiny_vae_loaded):
    folder, _in_json, out_json = dataset
    (folder / "sub").mkdir()
    (folder / "tall.png").rename(folder / "sub" / "tall.png")
    in_json = folder.parent / "full.json"
    in_json.write_text(json.dumps({str(folder / "sq1.png"): {"caption": "one"}}))
    options = _options(full_path=True, recursive=True)
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, options)
    meta = json.loads(out_json.read_text())
    assert meta[str(folder / "sq1.png")] == {"caption": "one", "train_resolution": [128, 128]}
    assert meta[str(folder / "sub" / "tall.png")] == {"train_resolution": [64, 192]}
    assert (folder / "sub" / "tall.npz").is_file()  # beside the image, as kohya with --recursive --full_path

    with pytest.raises(ConfigError, match="--full_path"):
        cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(recursive=True))
    with pytest.raises(DatasetError, match=r"keys images by path .*Use --full_path here too"):
        cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options())


def test_job_with_a_loaded_vae_and_fp16_on_cpu(dataset, tiny_vae_loaded):
    from lib_sdtrain.prepare.job import prepare_buckets_latents

    folder, in_json, out_json = dataset
    progress = CallbackProgress()
    vae = copy.deepcopy(tiny_vae_loaded)
    done = prepare_buckets_latents(
        folder, in_json, out_json, vae, _options(), mixed_precision="fp16", device="cpu", progress=progress
    )
    assert "float32 on the CPU" in progress.messages[0]
    assert done.result.encoded == 4 and done.histogram_path == folder.parent / ".sdtrain" / "meta_lat.buckets.png"
    assert done.report_path.read_text(encoding="utf-8").startswith(f"Dataset report for {folder}")


def test_npz_files_carry_kohyas_current_keys_only(dataset, tiny_vae_loaded):
    """No arr_0 copy unless asked for: a file is the latents' size, not twice it (kohya v0.7+ reads `latents`)."""
    folder, in_json, out_json = dataset
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options())
    sizes = {}
    for name in IMAGES:
        with np.load(folder / f"{name}.npz") as npz:
            assert set(npz.files) == {"latents", "original_size", "crop_ltrb"}
            latent_bytes = npz["latents"].nbytes
        sizes[name] = (folder / f"{name}.npz").stat().st_size
        assert latent_bytes < sizes[name] < latent_bytes + 1200, name  # the latents plus three small headers
        assert not (folder / f"{name}_flip.npz").exists()

    # --npz_legacy_arr0: kohya v0.6.x's arr_0 copy and <stem>_flip.npz, and the file twice the size
    options = _options(flip_aug=True, legacy_arr0=True)
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, options)
    for name in IMAGES:
        with np.load(folder / f"{name}.npz") as npz:
            assert set(npz.files) == {"latents", "original_size", "crop_ltrb", "latents_flipped", "arr_0"}
            assert np.array_equal(npz["arr_0"], npz["latents"])
            flipped = npz["latents_flipped"]
        with np.load(folder / f"{name}_flip.npz") as flip_npz:
            assert np.array_equal(flip_npz["arr_0"], flipped)
        assert (folder / f"{name}.npz").stat().st_size > 2.9 * (sizes[name] - 1200)


def test_cache_check_accepts_files_with_or_without_arr0(dataset, tiny_vae_loaded):
    folder, in_json, out_json = dataset
    cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(legacy_arr0=True))
    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(skip_existing=True))
    assert (result.encoded, result.skipped_existing) == (0, 4)  # legacy files serve the current format

    cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options())
    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(skip_existing=True))
    assert (result.encoded, result.skipped_existing) == (0, 4)  # files without arr_0 are complete
    # asking for the legacy copy re-encodes files that lack it
    result = cache_latents(folder, in_json, out_json, tiny_vae_loaded, _options(skip_existing=True, legacy_arr0=True))
    assert (result.encoded, result.skipped_existing) == (4, 0)
