"""train/loop.py's start-of-training summary: what the run will do, defaults that differ from kohya, unused keys."""

from __future__ import annotations

from lib_sdtrain.train.loop import train
from lib_sdtrain.train.settings import load_config
from lib_sdtrain.utils.progress import CallbackProgress
from tests.train.conftest import config_for, train_settings


def test_summary_says_what_the_run_will_do(tiny_sd_dir, sks_dataset, tmp_path):
    settings = train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_steps=2)
    del settings["learning_rate"], settings["save_precision"]
    progress = CallbackProgress()
    train(load_config(None, settings), progress=progress)
    summary = "\n".join(progress.messages)
    for part in (
        "4 images",
        "repeats 10",
        "1 bucket",
        "10 batches per epoch",
        "1 epoch",
        "2 steps",
        "cpu",
        "trainable parameters",
        "dim 8",
        "alpha 8",
        str(tmp_path / "out" / "sks.safetensors"),
        "learning_rate 0.0001 (kohya's default: 2e-06)",
        "save_precision fp16 (kohya's default: fp32)",
    ):
        assert part in summary, f"{part!r} missing from:\n{summary}"


def test_summary_names_no_default_the_user_set(tiny_sd_dir, sks_dataset, tmp_path):
    progress = CallbackProgress()
    train(
        config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, enable_bucket=True, cache_latents=True),
        progress=progress,
    )
    assert "kohya's default" not in "\n".join(progress.messages)


def test_keys_training_reads_are_not_reported_as_unused(tiny_sd_dir, sks_dataset, tmp_path):
    settings = train_settings(tiny_sd_dir, sks_dataset, tmp_path / "out", max_train_steps=1, no_half_vae=True,
                              training_comment="first try", xformers=True)  # fmt: skip
    progress = CallbackProgress()
    train(load_config(None, settings), progress=progress)
    unused = [m for m in progress.messages if m.startswith("Accepted but not used")]
    assert unused == ["Accepted but not used by SD-Train: xformers"]
