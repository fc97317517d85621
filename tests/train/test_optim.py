"""train/optim.py: kohya's optimizer_args, Adafactor, and the learning-rate schedules and their settings."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.train.loop import Trainer, train
from lib_sdtrain.train.optim import make_lr_scheduler, make_optimizer, parse_optimizer_args
from tests.train.conftest import config_for, settings


def lrs_over(config, total: int = 100) -> list[float]:
    """The learning rate at each of `total` steps (of a base rate of 1) under the config's schedule."""
    built = make_optimizer(config.optimizer_type, [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}], 1.0,
                           config.optimizer_args)  # fmt: skip
    scheduler = make_lr_scheduler(config, built, total)
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        built.optimizer.step()
        scheduler.step()
    return rates


# --- optimizer_args ------------------------------------------------------------------------------------------------


def test_optimizer_args_reach_the_optimizer_and_ss_optimizer(tiny_sd_dir, sks_dataset, tmp_path):
    config = config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1,
                        optimizer_args=["weight_decay=0.01", "betas=0.9,0.99"])  # fmt: skip
    trainer = Trainer(config, None, None)
    trainer.setup()
    group = trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.01 and group["betas"] == (0.9, 0.99)
    assert trainer.optimizer_description == "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.99))"
    result = train(config_for(tiny_sd_dir, sks_dataset, tmp_path, max_train_steps=1))
    with safe_open(str(result.output), "pt") as f:
        assert f.metadata()["ss_optimizer"] == "torch.optim.adamw.AdamW"  # no args: the bare class path, as kohya


def test_optimizer_args_are_read_as_kohya_reads_them():
    assert parse_optimizer_args(["relative_step=False", "eps=1e-8", "d_coef=2", "name='x'"]) == {
        "relative_step": False, "eps": 1e-8, "d_coef": 2, "name": "x"}  # fmt: skip
    for bad in ("weight_decay", "relative_step=false", "a=b=c"):
        with pytest.raises(ConfigError, match="optimizer_args"):
            settings(optimizer_args=[bad])


def test_adafactor_uses_kohyas_relative_step_and_its_schedule():
    config = settings(optimizer_type="Adafactor", learning_rate=1e-3, lr_scheduler="cosine")
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = make_optimizer(config.optimizer_type, [{"params": params, "lr": 5e-4}], 1e-3, config.optimizer_args)
    assert built.optimizer.defaults["relative_step"] is True and built.optimizer.defaults["lr"] is None
    assert "lr" not in built.optimizer.param_groups[0] or built.optimizer.param_groups[0]["lr"] is None
    assert built.description == "transformers.optimization.Adafactor(relative_step=True)"
    assert type(make_lr_scheduler(config, built, 10)).__name__ == "AdafactorSchedule"
    with pytest.raises(ConfigError, match="takes no warm-up"):
        settings(optimizer_type="Adafactor", lr_warmup_steps=10)
    fixed = settings(optimizer_type="Adafactor", optimizer_args=["relative_step=False", "scale_parameter=False"])
    built = make_optimizer(fixed.optimizer_type, [{"params": params, "lr": 5e-4}], 1e-3, fixed.optimizer_args)
    assert built.optimizer.param_groups[0]["lr"] == 5e-4
    with pytest.raises(ConfigError, match="adafactor needs optimizer_type Adafactor"):
        settings(lr_scheduler="adafactor")


# --- schedules -----------------------------------------------------------------------------------------------------


def test_lr_warmup_steps_below_1_is_a_ratio_of_the_run():
    warm = {"lr_scheduler": "constant_with_warmup"}
    assert settings(**warm, lr_warmup_steps="10%").lr_warmup_steps == 0.1
    assert settings(**warm, lr_warmup_steps=10.0).lr_warmup_steps == 10
    assert isinstance(settings(**warm, lr_warmup_steps=10.0).lr_warmup_steps, int)
    rates = lrs_over(settings(lr_scheduler="constant_with_warmup", lr_warmup_steps=0.25), 100)
    assert rates[0] == 0 and rates[12] == pytest.approx(12 / 25) and rates[25] == 1.0
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        settings(lr_warmup_steps=1.5)


def test_constant_with_a_warmup_is_refused_as_kohya_does():
    with pytest.raises(ConfigError, match="lr_scheduler constant takes no warm-up"):
        settings(lr_scheduler="constant", lr_warmup_steps=5)
    with pytest.raises(ConfigError, match="piecewise_constant"):
        settings(lr_scheduler="piecewise_constant")


def test_num_cycles_power_and_min_lr_ratio_shape_the_schedule():
    restarts = lrs_over(settings(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2))
    assert restarts[49] < 0.01 and restarts[50] == 1.0  # the second wave starts half-way
    poly = lrs_over(settings(lr_scheduler="polynomial", lr_scheduler_power=2.0))
    assert poly[50] == pytest.approx(0.25, abs=1e-6)
    min_lr = lrs_over(settings(lr_scheduler="cosine_with_min_lr", lr_scheduler_min_lr_ratio=0.1))
    assert min_lr[50] == pytest.approx(0.55) and min(min_lr) >= 0.1 and min_lr[-1] == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ConfigError, match="lr_scheduler_min_lr_ratio"):
        settings(lr_scheduler="cosine_with_min_lr")
    wsd = lrs_over(settings(lr_scheduler="warmup_stable_decay", lr_warmup_steps=10, lr_decay_steps=0.5))
    assert wsd[5] == 0.5 and wsd[10] == wsd[49] == 1.0 and wsd[75] == pytest.approx(0.5) and wsd[99] < 0.01
    inverse = lrs_over(settings(lr_scheduler="inverse_sqrt", lr_warmup_steps=4))
    assert inverse[4] == 1.0 and inverse[16] == pytest.approx(0.5)
