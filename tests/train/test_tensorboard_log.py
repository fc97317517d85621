"""train/tensorboard_log.py: each run's TensorBoard folder, <log_prefix><timestamp> as kohya names it."""

from __future__ import annotations

from lib_sdtrain.train.loop import train
from tests.train.conftest import config_for


def test_log_prefix_names_the_tensorboard_folder(tiny_sd_dir, sks_dataset, tmp_path):
    logs = tmp_path / "logs"
    train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1, logging_dir=str(logs), log_prefix="lora"))
    (folder,) = logs.iterdir()
    assert folder.name.startswith("lora") and folder.name[4:].isdigit()  # kohya: <log_prefix><timestamp>
    assert list(folder.glob("events.out.tfevents.*"))
