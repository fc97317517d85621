"""kohya's dataset_config TOML and regularisation images (reg_data_dir, is_reg subsets, prior_loss_weight)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.network.kohya_file import load_lora
from lib_sdtrain.train import data
from lib_sdtrain.train.config import TrainConfig
from lib_sdtrain.train.dataset_config import Augment
from lib_sdtrain.train.loop import Trainer
from lib_sdtrain.train.settings import load_config


def _images(folder: Path, count: int, size: tuple[int, int], captions: dict[int, str] | None = None) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i, 90, 200)).save(folder / f"img{i}.png")
    for i, caption in (captions or {}).items():
        (folder / f"img{i}.txt").write_text(caption + "\nsecond line is not read\n", encoding="utf-8")
    return folder


def _two_subsets(tmp_path: Path, extra: str = "") -> Path:
    """3 square training images (two with .txt captions) x 3 repeats; 4 landscape reg images with class tokens."""
    _images(tmp_path / "sks", 3, (64, 64), {0: "sks, red hat", 1: "sks, smiling"})
    _images(tmp_path / "reg", 4, (96, 32))
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        f"""
[general]
shuffle_caption = true
caption_extension = ".txt"
{extra}
[[datasets]]
resolution = 64
batch_size = 2
min_bucket_reso = 32
bucket_reso_steps = 32

  [[datasets.subsets]]
  image_dir = "{(tmp_path / "sks").as_posix()}"
  num_repeats = 3
  class_tokens = "sks"
  keep_tokens = 1

  [[datasets.subsets]]
  image_dir = "{(tmp_path / "reg").as_posix()}"
  is_reg = true
  class_tokens = "a person"
  shuffle_caption = false
""",
        encoding="utf-8",
    )
    return toml


def _settings(tiny_sd_dir, toml: Path, out: Path, **overrides) -> dict:
    return {
        "pretrained_model_name_or_path": str(tiny_sd_dir),
        "dataset_config": str(toml),
        "network_module": "networks.lora",
        "network_dim": 4,
        "learning_rate": 1e-3,
        "max_train_epochs": 1,
        "output_dir": str(out),
        "output_name": "dc",
        "seed": 3,
        **overrides,
    }


def test_balance_reg_repeats_is_kohyas_rule():
    assert data.balance_reg_repeats(9, [1, 1, 1, 1]) == [3, 2, 2, 2]  # one pass, then one more each in turn
    assert data.balance_reg_repeats(2, [1, 1, 1, 1, 1]) == [1, 1, 0, 0, 0]  # more reg images than needed: cut
    assert data.balance_reg_repeats(5, [2, 2, 2]) == [2, 2, 2]  # whole repeats in the first pass: may overshoot
    assert data.balance_reg_repeats(10, [2, 1]) == [6, 4]  # 2+1, then 1 each: 3+2, 4+3, 5+4, 6
    assert data.balance_reg_repeats(4, []) == []


def test_dataset_config_with_a_reg_subset_trains_with_kohyas_items_and_steps(tiny_sd_dir, tmp_path):
    config = load_config(None, _settings(tiny_sd_dir, _two_subsets(tmp_path), tmp_path / "out"))
    # the [[datasets]] block's values win over the training config's, as in kohya
    assert (config.resolution, config.train_batch_size, config.min_bucket_reso) == ("64", 2, 32)
    items = data.collect_items(config)
    counts = Counter((item.key, item.is_reg) for item in items)
    assert counts == {
        ("sks/img0.png", False): 3, ("sks/img1.png", False): 3, ("sks/img2.png", False): 3,
        # 4 reg images cover the 9 training items: 1 each, then one more each in turn (kohya's DreamBoothDataset)
        ("reg/img0.png", True): 3, ("reg/img1.png", True): 2, ("reg/img2.png", True): 2, ("reg/img3.png", True): 2,
    }  # fmt: skip
    captions = {item.key: item.caption for item in items}
    assert captions["sks/img0.png"] == "sks, red hat"  # the caption file's first line
    assert captions["sks/img2.png"] == "sks"  # no caption file: the subset's class tokens
    assert captions["reg/img0.png"] == "a person"
    augment = {item.is_reg: item.augment for item in items}
    assert augment[False] == Augment(shuffle_caption=True, keep_tokens=1)  # [general] + the subset's own
    assert augment[True] == Augment(shuffle_caption=False)  # the subset overrides [general]
    # kohya's epoch: per bucket ceil(items / batch size): square 9 -> 5, landscape 9 -> 5 batches
    assert len({item.bucket for item in items}) == 2
    assert len(data.epoch_batches(items, 2, seed=3, epoch=0)) == 10

    trainer = Trainer(config, None, None)
    result = trainer.run()
    assert result.steps == 10 and trainer.batches_per_epoch == 10
    metadata = load_lora(result.output)[1]
    assert metadata["ss_num_train_images"] == "9" and metadata["ss_num_reg_images"] == "4"
    # kohya's dataset_config metadata: ss_datasets per block, the flat per-dataset keys left out
    (dataset,) = json.loads(metadata["ss_datasets"])
    assert {k: dataset[k] for k in ("is_dreambooth", "batch_size_per_device", "num_train_images", "num_reg_images",
                                    "resolution", "enable_bucket", "min_bucket_reso")} == {
        "is_dreambooth": True, "batch_size_per_device": 2, "num_train_images": 9, "num_reg_images": 4,
        "resolution": [64, 64], "enable_bucket": True, "min_bucket_reso": 32,
    }  # fmt: skip
    assert dataset["tag_frequency"] == {"sks": {"sks": 3, "red hat": 1, "smiling": 1}, "reg": {"a person": 4}}
    assert sum(b["count"] for b in dataset["bucket_info"]["buckets"].values()) == 18
    train_subset, reg_subset = dataset["subsets"]
    assert train_subset | {"image_dir": "sks", "img_count": 3, "num_repeats": 3, "keep_tokens": 1} == train_subset
    assert (train_subset["shuffle_caption"], train_subset["is_reg"], train_subset["class_tokens"]) == (
        True,
        False,
        "sks",
    )
    assert (reg_subset["image_dir"], reg_subset["img_count"], reg_subset["is_reg"]) == ("reg", 4, True)
    assert json.loads(metadata["ss_dataset_dirs"]) == {"sks": {"n_repeats": 3, "img_count": 3}}  # no reg folder
    assert "ss_batch_size_per_device" not in metadata and "ss_bucket_info" not in metadata


def test_flat_reg_data_dir_uses_kohyas_n_name_folders(tmp_path):
    _images(tmp_path / "train" / "3_sks", 2, (64, 64))
    _images(tmp_path / "reg" / "1_person", 5, (64, 64), {0: "a person, smiling"})
    (tmp_path / "reg" / "notes").mkdir()  # no repeat count: skipped, as kohya does
    config = TrainConfig(
        train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"), resolution="64",
        min_bucket_reso=32, bucket_reso_steps=32, caption_extension=".txt",
    )  # fmt: skip
    items = data.collect_items(config)
    reg = Counter(item.key for item in items if item.is_reg)
    assert sum(not item.is_reg for item in items) == 6
    assert reg == {"reg/1_person/img0.png": 2, **{f"reg/1_person/img{i}.png": 1 for i in range(1, 5)}}
    captions = {item.key: item.caption for item in items if item.is_reg}
    assert captions["reg/1_person/img0.png"] == "a person, smiling" and captions["reg/1_person/img1.png"] == "person"
    assert data.reg_image_count(config) == 5


def test_prior_loss_weight_scales_the_loss_of_reg_items(tiny_sd_dir, tmp_path):
    items = [
        data.TrainItem("a", "x", (64, 64)),
        data.TrainItem("b", "x", (64, 64), is_reg=True),
    ]
    assert data.loss_weights(items, 0.25).tolist() == [1.0, 0.25]

    toml = _two_subsets(tmp_path)
    losses = {}
    for weight in (1.0, 0.5):
        config = load_config(None, _settings(tiny_sd_dir, toml, tmp_path / f"out{weight}", prior_loss_weight=weight))
        trainer = Trainer(config, None, None)
        trainer.setup()
        reg_batch = [i for i, item in enumerate(trainer.items) if item.is_reg][:2]
        train_batch = [i for i, item in enumerate(trainer.items) if not item.is_reg][:2]
        batches = [reg_batch, train_batch]
        losses[weight] = tuple(trainer._loss(trainer._prepare_batch(batches, 0, i)).item() for i in range(2))
        trainer.network.detach()
    assert losses[0.5][0] == pytest.approx(losses[1.0][0] * 0.5, rel=1e-5)
    assert losses[0.5][1] == pytest.approx(losses[1.0][1], rel=1e-5)  # training images keep their weight


@pytest.mark.parametrize(
    ("extra_subset_line", "message"),
    [
        ("num_repeat = 3", "unknown key 'num_repeat'. Did you mean 'num_repeats'"),
        ("face_crop_aug_range = [2.0, 4.0]", "face_crop_aug_range = \\[2.0, 4.0\\] is not implemented"),
        ("alpha_mask = true", "alpha_mask = True is not implemented"),
        ("caption_tag_dropout_rate = 1.5", "caption_tag_dropout_rate = 1.5: expected a number from 0 to 1"),
        ("num_repeats = 'many'", "num_repeats = 'many': expected a whole number"),
    ],
)
def test_subset_keys_sd_train_would_ignore_are_refused_by_name(tmp_path, extra_subset_line, message):
    _images(tmp_path / "sks", 1, (64, 64))
    toml = tmp_path / "d.toml"
    toml.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "sks"}"\n{extra_subset_line}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"pretrained_model_name_or_path": "m", "dataset_config": str(toml)})


def test_unimplemented_keys_at_kohyas_default(tmp_path):
    _images(tmp_path / "sks", 1, (64, 64))
    subset = f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "sks"}"\n'
    toml = tmp_path / "d.toml"
    toml.write_text(f"[general]\nalpha_mask = false\nenable_bucket = true\n[[datasets]]\n{subset}")
    config = load_config(None, {"pretrained_model_name_or_path": "m", "dataset_config": str(toml)})
    assert len(data.collect_items(config)) == 1


KOHYA_SS_GUI_TOML = """
# as the kohya_ss GUI writes its defaults next to the settings it trains with
pretrained_model_name_or_path = "model.safetensors"
train_data_dir = "img"
network_module = "networks.lora"
no_half_vae = false
dynamo_backend = "no"
epoch = 1
loss_type = "l2"
huber_c = 0.1
huber_schedule = "snr"
min_timestep = 0
max_timestep = 1000
multires_noise_iterations = 0
multires_noise_discount = 0.3
noise_offset_type = "Original"
adaptive_noise_scale = 0
ip_noise_gamma = 0
lr_scheduler_args = []
log_with = ""
zero_terminal_snr = false
debiased_estimation_loss = false
scale_weight_norms = 0
prior_loss_weight = 1.0
"""


def test_kohya_ss_gui_defaults_load_and_are_reported(tmp_path):
    path = tmp_path / "gui.toml"
    path.write_text(KOHYA_SS_GUI_TOML)
    config = load_config(path)
    assert {"no_half_vae", "noise_offset_type", "lr_scheduler_args", "log_with"} <= config.ignored.keys()
    assert config.loss_type == "l2" and config.min_timestep == 0 and config.max_timestep == 1000
    assert config.prior_loss_weight == 1.0 and config.is_lora


@pytest.mark.parametrize(
    "line",
    [
        'noise_offset_type = "Perlin"',
        'lr_scheduler_args = ["T_max=100"]',
        'log_with = "wandb"',
    ],
)
def test_kohya_ss_gui_keys_set_to_what_sd_train_lacks_are_refused(tmp_path, line):
    path = tmp_path / "gui.toml"
    key = line.split(" = ")[0]
    path.write_text("\n".join(x for x in KOHYA_SS_GUI_TOML.splitlines() if not x.startswith(key + " ")) + f"\n{line}\n")
    with pytest.raises(ConfigError, match=f"{key} = .* is not implemented"):
        load_config(path)
