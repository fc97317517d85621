"""train/data.py: dataset layouts, captions as kohya processes them, buckets, crops, pixels, cached latents."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib_sdtrain.dataset.images import load_image_rgb
from lib_sdtrain.errors import ConfigError, DatasetError
from lib_sdtrain.train import data
from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.train.dataset_config import Augment
from lib_sdtrain.train.loop import train
from lib_sdtrain.train.settings import load_config
from tests.train.conftest import SCALING, target_latent

T0 = data.CaptionTime(epoch=1, step=0, max_steps=100)


def _draws(caption: str, augment: Augment, time: data.CaptionTime = T0, n: int = 40) -> list[str]:
    return [data.process_caption(caption, augment, torch.Generator().manual_seed(s), time) for s in range(n)]


def _gradient_image(path: Path, size: tuple[int, int]) -> Path:
    """Red = column, green = row: every crop of it is told apart by its first pixel."""
    x = np.arange(size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
    y = np.arange(size[1], dtype=np.uint8)[:, None].repeat(size[0], 1)
    Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=2)).save(path)
    return path


def _pixels_uint8(tensor: torch.Tensor) -> np.ndarray:
    return ((tensor.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.int64)


def _folder(tmp_path: Path, sizes: list[tuple[int, int]], caption: str | None = None) -> Path:
    root = tmp_path / "train"
    (root / "1_sks").mkdir(parents=True)
    for i, size in enumerate(sizes):
        _gradient_image(root / "1_sks" / f"img{i}.png", size)
        if caption is not None:
            (root / "1_sks" / f"img{i}.caption").write_text(caption, encoding="utf-8")
    return root


# --- layouts -------------------------------------------------------------------------------------------------------


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


# --- captions ------------------------------------------------------------------------------------------------------


def test_caption_shuffle_keep_tokens_and_dropout():
    config = TrainConfig(shuffle_caption=True, keep_tokens=1)
    seen = {data.process_caption("sks, red, hat, smile", config, torch.Generator().manual_seed(s)) for s in range(20)}
    assert len(seen) > 1 and all(
        c.startswith("sks, ") and sorted(c.split(", ")) == ["hat", "red", "sks", "smile"] for c in seen
    )
    dropped = TrainConfig(caption_dropout_rate=1.0)
    assert data.process_caption("sks", dropped, torch.Generator()) == ""


def test_prefix_and_suffix_wrap_the_caption_and_go_with_caption_dropout():
    augment = Augment(caption_prefix="photo of", caption_suffix="best quality")
    assert data.process_caption("sks, red hat", augment, torch.Generator(), T0) == "photo of sks, red hat best quality"
    dropped = Augment(caption_prefix="photo of", caption_dropout_rate=1.0)
    assert data.process_caption("sks", dropped, torch.Generator(), T0) == ""  # kohya drops the prefix too


def test_keep_tokens_separator_keeps_the_head_and_the_tail():
    caption = "sks, 1girl ||| red, blue, green, yellow ||| masterpiece"
    seen = set(_draws(caption, Augment(shuffle_caption=True, keep_tokens_separator="|||")))
    assert len(seen) > 3
    for result in seen:
        tags = result.split(", ")
        assert tags[:2] == ["sks", "1girl"] and tags[-1] == "masterpiece"
        assert sorted(tags[2:-1]) == ["blue", "green", "red", "yellow"]
    # kohya uses the separator only when tags are processed: without shuffling it stays in the caption
    assert data.process_caption(caption, Augment(keep_tokens_separator="|||"), torch.Generator(), T0) == caption


def test_caption_tag_dropout_drops_tags_after_the_kept_ones():
    caption = "sks, a, b, c, d, e"
    assert set(_draws(caption, Augment(keep_tokens=1, caption_tag_dropout_rate=1.0))) == {"sks"}
    seen = _draws(caption, Augment(keep_tokens=1, caption_tag_dropout_rate=0.5))
    assert len(set(seen)) > 5 and all(s.startswith("sks") for s in seen)
    assert all(s.split(", ")[1:] == sorted(s.split(", ")[1:]) for s in seen)  # dropped, not shuffled


def test_caption_dropout_every_n_epochs_empties_every_nth_epoch():
    augment = Augment(caption_dropout_every_n_epochs=2)
    times = [data.CaptionTime(epoch, 0, 9) for epoch in (1, 2, 3, 4)]
    by_epoch = [data.process_caption("sks", augment, torch.Generator(), time) for time in times]
    assert by_epoch == ["sks", "", "sks", ""]


@pytest.mark.parametrize("warmup_step", [10, 0.1])  # 0.1: a tenth of max_train_steps (100), as kohya reads < 1
def test_token_warmup_grows_the_caption_with_the_step(warmup_step):
    augment = Augment(keep_tokens=1, token_warmup_min=1, token_warmup_step=warmup_step)
    caption = "sks, a, b, c, d"

    def at(step: int) -> str:
        return data.process_caption(caption, augment, torch.Generator(), data.CaptionTime(1, step, 100))

    # kohya: floor(step * (flex tags - min) / warmup_step) + min tags after the kept ones
    assert [at(0), at(4), at(7), at(10), at(50)] == ["sks, a", "sks, a, b", "sks, a, b, c", caption, caption]


def test_wildcards_pick_a_line_and_a_choice():
    augment = Augment(enable_wildcard=True)
    seen = set(_draws("a {red|blue} hat {{literal}}\nsecond line", augment, n=60))
    assert seen == {"a red hat {literal}", "a blue hat {literal}", "second line"}
    assert data.process_caption("first\nsecond", Augment(), torch.Generator(), T0) == "first"


def test_secondary_separator_groups_tags_and_becomes_the_separator():
    seen = set(_draws("sks, red hair;;;long hair, hat", Augment(shuffle_caption=True, secondary_separator=";;;")))
    assert len(seen) > 1
    assert all("red hair,long hair" in s for s in seen)  # shuffled as one tag, then joined with caption_separator


def test_wildcard_caption_files_keep_every_line(tmp_path):
    root = _folder(tmp_path, [(64, 64)], caption="{red|blue} hat\n\nsecond line\n")
    plain = data.collect_items(TrainConfig(train_data_dir=str(root), resolution="64,64"))
    wild = data.collect_items(TrainConfig(train_data_dir=str(root), resolution="64,64", enable_wildcard=True))
    assert plain[0].caption == "{red|blue} hat" and wild[0].caption == "{red|blue} hat\nsecond line"


def test_training_with_caption_and_pixel_options_runs(tiny_sd_dir, tmp_path):
    root = _folder(tmp_path, [(80, 64), (64, 96)], caption="sks ||| red, hat, smile")
    settings = {
        "pretrained_model_name_or_path": str(tiny_sd_dir), "train_data_dir": str(root), "resolution": "64,64",
        "network_module": "networks.lora", "network_dim": 4, "max_train_steps": 3, "output_dir": str(tmp_path / "o"),
        "output_name": "opts", "shuffle_caption": True, "keep_tokens_separator": "|||", "token_warmup_step": 0.5,
        "caption_tag_dropout_rate": 0.3, "caption_prefix": "photo", "random_crop": True, "color_aug": True,
        "enable_bucket": False,
    }  # fmt: skip
    result = train(load_config(None, settings))
    assert result.steps == 3 and result.output.is_file()


# --- buckets, crops and pixels -------------------------------------------------------------------------------------


def test_exif_rotated_image_gets_the_upright_bucket(tmp_path):
    root = tmp_path / "train" / "2_sks"
    root.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    Image.new("RGB", (128, 64), (200, 10, 10)).save(root / "phone.jpg", exif=exif)
    config = TrainConfig(train_data_dir=str(tmp_path / "train"), resolution="96,96", min_bucket_reso=64,
                         bucket_reso_steps=32)  # fmt: skip
    item = data.collect_items(config)[0]
    upright = load_image_rgb(root / "phone.jpg").size
    assert upright == (64, 128)
    assert item.bucket[1] > item.bucket[0], f"portrait photo put in landscape bucket {item.bucket}"
    assert data.load_pixels(item).shape == (3, item.bucket[1], item.bucket[0])


def test_enable_bucket_off_crops_every_image_to_the_resolution(tmp_path):
    root = _folder(tmp_path, [(128, 64), (40, 80)])
    settings = {"train_data_dir": str(root), "resolution": "64,64", "min_bucket_reso": 32, "bucket_reso_steps": 32}
    bucketed = data.collect_items(TrainConfig(**settings))
    assert {item.bucket for item in bucketed} != {(64, 64)}
    items = {i.key: i for i in data.collect_items(TrainConfig(**settings, enable_bucket=False))}
    assert {item.bucket for item in items.values()} == {(64, 64)}
    wide = _pixels_uint8(data.load_pixels(items["1_sks/img0.png"]))
    assert wide.shape == (64, 64, 3) and wide[0, 0, 0] == 32  # not resized (covers already), centre-cropped
    tall = _pixels_uint8(data.load_pixels(items["1_sks/img1.png"]))
    assert tall.shape == (64, 64, 3)  # 40x80 enlarged to cover 64x64 (64x128), then cropped, as kohya's cache


def test_bucket_no_upscale_keeps_the_image_scale(tmp_path):
    root = _folder(tmp_path, [(50, 40)])
    config = TrainConfig(train_data_dir=str(root), resolution="64,64", bucket_reso_steps=16, bucket_no_upscale=True)
    item = data.collect_items(config)[0]
    assert item.bucket == (48, 32) and item.resized == (50, 40)
    pixels = _pixels_uint8(data.load_pixels(item))
    assert pixels.shape == (32, 48, 3) and (pixels[0, 0, 0], pixels[0, 0, 1]) == (1, 4)  # centre crop, unscaled
    assert data.collect_items(dataclasses.replace(config, bucket_no_upscale=False))[0].bucket[0] > 48


def test_random_crop_draws_the_crop_place(tmp_path):
    root = _folder(tmp_path, [(100, 64)])
    item = data.collect_items(TrainConfig(train_data_dir=str(root), resolution="64,64", random_crop=True))[0]
    assert item.bucket == (64, 64) and item.resized == (100, 64)
    lefts = {int(_pixels_uint8(data.load_pixels(item, torch.Generator().manual_seed(s)))[0, 0, 0]) for s in range(12)}
    assert len(lefts) > 4 and all(0 <= left <= 36 for left in lefts)
    assert _pixels_uint8(data.load_pixels(item))[0, 0, 0] == 18  # no generator (latent caching): the centre


def test_random_crop_without_buckets_cuts_large_images_at_their_own_scale(tmp_path):
    root = _folder(tmp_path, [(120, 90)])
    config = TrainConfig(train_data_dir=str(root), resolution="64,64", random_crop=True, enable_bucket=False)
    item = data.collect_items(config)[0]
    assert item.resized == (120, 90)  # kohya's uncached path: no resize, a random 64x64 window
    pixels = _pixels_uint8(data.load_pixels(item, torch.Generator().manual_seed(0)))
    left, top = pixels[0, 0, 0], pixels[0, 0, 1]
    assert pixels[63, 63, 0] == left + 63 and pixels[63, 63, 1] == top + 63


def test_color_aug_changes_about_a_third_of_the_images(tmp_path):
    root = _folder(tmp_path, [(64, 64)])
    item = data.collect_items(TrainConfig(train_data_dir=str(root), resolution="64,64", color_aug=True))[0]
    plain = data.load_pixels(item)
    changed = [not torch.equal(data.load_pixels(item, torch.Generator().manual_seed(s)), plain) for s in range(60)]
    assert 8 <= sum(changed) <= 32  # kohya applies it with a chance of 0.33
    assert data.load_pixels(item, torch.Generator().manual_seed(1)).abs().max() <= 1.0


@pytest.mark.parametrize("key", ["random_crop", "color_aug"])
def test_pixel_augmentations_refuse_asked_for_latent_caching(tmp_path, key):
    root = _folder(tmp_path, [(64, 64)])
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": str(root), "resolution": "64,64", key: True}
    items = data.collect_items(load_config(None, base))  # SD-Train's default cache: these images are encoded per step
    assert not data.latents_cacheable(items, load_config(None, base))
    for asked in ({"cache_latents": True}, {"cache_latents_to_disk": True}):
        with pytest.raises(ConfigError, match="cannot be used with random_crop or color_aug"):
            data.collect_items(load_config(None, {**base, **asked}))


# --- cached latents (metadata datasets) ----------------------------------------------------------------------------


def _metadata_config(sks_dataset, **overrides) -> TrainConfig:
    return TrainConfig(
        train_data_dir=str(sks_dataset["dir"]), in_json=str(sks_dataset["meta"]), resolution="64,64", **overrides
    )


def test_flip_aug_reads_flipped_latents_from_the_npz_or_kohya_v06_flip_file(sks_dataset):
    folder = sks_dataset["dir"]
    flipped = torch.flip(target_latent(), dims=[2]) / SCALING
    # without flipped latents kohya does not use the cache under flip_aug: the images are encoded (and flipped)
    items = data.collect_items(_metadata_config(sks_dataset, flip_aug=True))
    assert all(item.latents_path is None for item in items)
    for i in range(4):  # kohya v0.6: arr_0 in <name>_flip.npz
        np.savez(folder / f"red{i}_flip.npz", arr_0=flipped.numpy())
    item = data.collect_items(_metadata_config(sks_dataset, flip_aug=True))[0]
    assert item.latents_path is not None
    assert torch.allclose(data.load_cached_latents(item, flip=True), flipped)
    assert torch.allclose(data.load_cached_latents(item, flip=False), target_latent() / SCALING)
    for i in range(4):  # kohya v0.7+: latents_flipped inside the .npz wins
        (folder / f"red{i}_flip.npz").unlink()
        np.savez(folder / f"red{i}.npz", latents=(target_latent() / SCALING).numpy(), latents_flipped=-flipped.numpy())
    item = data.collect_items(_metadata_config(sks_dataset, flip_aug=True))[0]
    assert torch.allclose(data.load_cached_latents(item, flip=True), -flipped)


def test_random_crop_uses_the_images_not_the_cached_latents(sks_dataset):
    items = data.collect_items(_metadata_config(sks_dataset, random_crop=True))
    assert all(item.latents_path is None and item.image_path is not None for item in items)
    for image in sks_dataset["dir"].glob("*.png"):
        image.unlink()
    with pytest.raises(DatasetError, match="random_crop and color_aug need the images"):
        data.collect_items(_metadata_config(sks_dataset, random_crop=True))


def test_enable_bucket_off_is_refused_with_metadata_buckets(sks_dataset):
    with pytest.raises(ConfigError, match=r"enable_bucket = false, but meta_lat\.json gives each image a bucket"):
        data.collect_items(_metadata_config(sks_dataset, enable_bucket=False))


def test_cached_latents_in_sub_folders_are_found(tmp_path):
    root = tmp_path / "data"
    metadata = {}
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        image = root / sub / f"img_{sub}.png"
        Image.new("RGB", (64, 64)).save(image)
        np.savez(image.with_suffix(".npz"), latents=(target_latent() / SCALING).numpy())
        metadata[str(image)] = {"caption": "sks", "train_resolution": [64, 64]}
    meta = root / "meta_lat.json"
    meta.write_text(json.dumps(metadata))
    config = TrainConfig(train_data_dir=str(root), in_json=str(meta), resolution="64,64", min_bucket_reso=64)
    items = data.collect_items(config)
    assert [i.latents_path for i in items] == [root / "a" / "img_a.npz", root / "b" / "img_b.npz"]


def test_dotted_names_find_their_latents(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (64, 64)).save(root / "photo.v2.png")
    np.savez(root / "photo.v2.npz", latents=(target_latent() / SCALING).numpy())
    (root / "meta_lat.json").write_text(json.dumps({"photo.v2": {"caption": "sks", "train_resolution": [64, 64]}}))
    config = TrainConfig(train_data_dir=str(root), in_json=str(root / "meta_lat.json"), resolution="64,64",
                         min_bucket_reso=64)  # fmt: skip
    (item,) = data.collect_items(config)
    assert item.image_path == root / "photo.v2.png" and item.latents_path == root / "photo.v2.npz"


def test_latents_prepared_at_another_resolution_are_refused(sks_dataset):
    config = TrainConfig(train_data_dir=str(sks_dataset["dir"]), in_json=str(sks_dataset["meta"]),
                         resolution="128,128", min_bucket_reso=64)  # fmt: skip
    with pytest.raises(DatasetError, match=r"red0\.npz.*64x64.*128x128.*Prepare"):
        data.collect_items(config)


def test_stale_latents_of_another_size_are_refused(sks_dataset):
    np.savez(sks_dataset["dir"] / "red2.npz", latents=np.zeros((4, 16, 8), np.float32))  # 64 wide, 128 high
    config = TrainConfig(train_data_dir=str(sks_dataset["dir"]), in_json=str(sks_dataset["meta"]),
                         resolution="64,64", min_bucket_reso=64)  # fmt: skip
    with pytest.raises(DatasetError, match=r"red2\.npz.*64x128.*64x64.*Prepare"):
        data.collect_items(config)


# --- several [[datasets]] ------------------------------------------------------------------------------------------


def _two_datasets(tmp_path: Path) -> Path:
    for name, count, size in (("a", 4, (64, 64)), ("b", 3, (96, 64)), ("reg", 8, (96, 64))):
        (tmp_path / name).mkdir()
        for i in range(count):
            _gradient_image(tmp_path / name / f"{name}{i}.png", size)
    toml = tmp_path / "d.toml"
    toml.write_text(
        f"""[general]
shuffle_caption = true
[[datasets]]
resolution = 64
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{tmp_path / "a"}"
  num_repeats = 2
  class_tokens = "sks a"
[[datasets]]
resolution = 64
batch_size = 3
enable_bucket = false
  [[datasets.subsets]]
  image_dir = "{tmp_path / "b"}"
  class_tokens = "sks b"
  caption_prefix = "photo of"
  [[datasets.subsets]]
  image_dir = "{tmp_path / "reg"}"
  is_reg = true
  class_tokens = "b"
"""
    )
    return toml


def test_several_datasets_train_apart(tiny_sd_dir, tmp_path):
    toml = _two_datasets(tmp_path)
    settings = {
        "pretrained_model_name_or_path": str(tiny_sd_dir), "dataset_config": str(toml), "min_bucket_reso": 32,
        "bucket_reso_steps": 32, "max_bucket_reso": 128, "network_module": "networks.lora", "network_dim": 4,
        "max_train_epochs": 1, "output_dir": str(tmp_path / "o"), "output_name": "two",
    }  # fmt: skip
    config = load_config(None, settings)
    assert config.resolution_size == (64, 64) and config.train_batch_size == 1  # shared resolution, not batch sizes
    items = data.collect_items(config)
    a = [i for i in items if i.dataset == 0]
    b = [i for i in items if i.dataset == 1]
    assert len(a) == 8 and {i.batch_size for i in a} == {2}
    assert len([i for i in b if not i.is_reg]) == 3 and len([i for i in b if i.is_reg]) == 3  # balanced per dataset
    assert {i.bucket for i in b} == {(64, 64)} and {i.bucket for i in a} == {(64, 64)}  # b: no buckets
    assert b[0].augment.caption_prefix == "photo of" and a[0].augment.caption_prefix is None
    batches = data.epoch_batches(items, config.train_batch_size, seed=1, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(items)))
    for batch in batches:
        datasets = {items[i].dataset for i in batch}
        assert len(datasets) == 1 and len(batch) <= (2 if datasets == {0} else 3)
    assert len(batches) == 4 + 2  # a: 8 items in 2s; b: 6 items in 3s
    result = train(config)
    assert result.steps == 6
